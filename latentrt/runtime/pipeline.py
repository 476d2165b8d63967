"""The pipeline: a model folder's networks on one backend (ONNX Runtime or OpenVINO), pure NumPy between them.

A generation reads as numbered steps (`Pipeline.run`): check inputs (`request.py`), encode prompt (the family,
`families.py`), prepare latents (the task, `tasks.py`), denoise (one loop for every task), decode, package.
Randomness comes only from an explicit `np.random.Generator`; observers (`observers.py`) see every network call
and stage.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from latentrt.runtime.backend import Backend, resolve_backend
from latentrt.runtime.controlnet import (NETWORK_PREFIX, ControlStep, ResidualZeros, check_control, check_crop,
                                         check_residual_count, checked_names, residual_inputs, residual_shapes)
from latentrt.runtime.deepcache import CACHE_SCHEDULES, check_cache_interval, full_calls
from latentrt.runtime.families import family_for, guidance_embedding
from latentrt.runtime.folder import REEXPORT_HINT, TINY_DECODER, TINY_ENCODER, TINY_VAE_HINT, ComponentFiles, ModelFolder
from latentrt.runtime.image_inputs import as_pil, resize_fill, to_pixels
from latentrt.runtime.images import GenerationParameters, decoded_to_uint8, to_pil
from latentrt.runtime.lora import LORA_COMPONENTS, Lora, LoraError, build_patch, read_weight
from latentrt.runtime.memory import available_memory, estimate, gib
from latentrt.runtime.observers import OPEN, Event, Observer, Observers
from latentrt.runtime.previews import Previews
from latentrt.runtime.request import (Plan, Request, check_guidance, check_negatives, check_positive_int,
                                      check_preview_every, check_prompts, check_steps, check_vae)
from latentrt.runtime.schedulers import available_schedulers, create_scheduler
from latentrt.runtime.schedulers.timesteps import model_timestep
from latentrt.runtime.session import check_finite, constant_feeds, to_host
from latentrt.runtime.tasks import task_for
from latentrt.runtime.tiling import decode_tiled, default_tile

logger = logging.getLogger(__name__)

# (UNet calls done, UNet calls in all), and with preview_every a third argument: a PIL preview image or None
ProgressCallback = Callable[..., None]


@dataclass
class PipelineResult:
    images: list[Image.Image]
    parameters: list[GenerationParameters]  # one per image
    latents: NDArray[np.float32]  # final latents, (B, C, H/f, W/f)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    unet_calls: dict[str, int] = field(default_factory=dict)  # {"full": n, "shallow": m} (shallow: DeepCache)
    control_images: list[Image.Image] = field(default_factory=list)  # what conditioned the image, one per ControlNet

    @property
    def arrays(self) -> NDArray[np.uint8]:
        return np.stack([np.asarray(image) for image in self.images])  # (B, H, W, 3)


class ImageTooLargeError(ValueError):
    """A call asks for more memory than the machine has, or more pixels than `max_pixels`; the message gives the fix."""


class Pipeline:
    """A model folder's three networks on one backend.

    provider: "auto" (OpenVINO when the openvino extra is installed, else ONNX Runtime on CPU), "cpu",
    "openvino", "cuda", ...; precision: "auto" (bf16 under OpenVINO on a CPU with bf16, else fp32), "fp32"
    (parity with PyTorch), "bf16" (see `latentrt.runtime.backend`). `cache_dir` (else $LATENTRT_CACHE, else
    ~/.cache/latentrt) holds what makes the next load fast; `use_cache=False` neither reads nor writes it.

    vae: "full" (default: the model's VAE) or "tiny" (the folder's tiny autoencoder, TAESD: `latentrt add-tiny-vae`),
    what calls decode (and, for image to image, encode) with unless they say otherwise; with "tiny" the full VAE
    decoder is not loaded until a call asks for vae="full" (the tiny one is 5 MB: loads are faster).

    low_memory: one network resident at a time, loaded when a call needs it and released after (a load from the
    cache takes about a second on ONNX Runtime, 11 s for SD 1.5's UNet with use_cache=False; OpenVINO compiles
    again each time). vae_tiling: decode in overlapping tiles (True), never (False), or only when the untiled
    decode would not fit in the memory available (None: tiling is not exact, and a VAE trained on small images
    draws a frame in every tile); the tiny VAE always decodes whole. max_pixels: refuse images with more pixels
    (height x width) than this, for an app that bounds its requests; every call is also refused when its estimated
    memory exceeds what the machine has available (`latentrt.runtime.memory`). max_compiled_shapes (OpenVINO; default 8): the shapes each
    network keeps compiled from calls, the least recently used released past it; those `compile` made are kept.

    ONNX Runtime only (see `latentrt.runtime.backend`): io_binding runs the UNet on IO binding (conditioning bound
    once per generation, latents and outputs in buffers on the provider's device; the same images), cuda_graph
    captures it in a CUDA graph (cuda or tensorrt provider; implies io_binding; one image shape per pipeline), and
    provider_options ({key: value}) go to the first provider of the chain (TensorRT's engine cache, fp16, ...).

    Threads: one pipeline may be called from several threads at once (the images are those of serial calls; with
    io_binding their denoising loops take turns); `threads` sets the CPU threads each network uses. `close()` (or
    `with ... as pipe:`) frees the networks.

    A generation is `pipe(prompt, ...)`, or `pipe.run(Request(...))` for a request described ahead (`pipe.check`
    checks one without running it); `pipe.observe(observer)` watches every network call and stage.
    """

    def __init__(self, folder: ModelFolder, provider: str = "auto", threads: int | None = None, *,
                 precision: str = "auto", cache_dir: str | Path | None = None, use_cache: bool = True,
                 low_memory: bool = False, vae_tiling: bool | None = None, max_pixels: int | None = None,
                 loras: Sequence | None = None, io_binding: bool = False, cuda_graph: bool = False,
                 provider_options: dict | None = None, max_compiled_shapes: int | None = None, vae: str = "full"):
        self.backend: Backend = resolve_backend(provider, precision, threads, cache_dir, use_cache, io_binding=io_binding,
                                                cuda_graph=cuda_graph, provider_options=provider_options,
                                                max_compiled_shapes=max_compiled_shapes, folder=folder)
        if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1):
            raise ValueError(f"max_pixels must be a positive integer (height x width), got {max_pixels!r}")
        if vae_tiling not in (None, True, False):
            raise ValueError(f"vae_tiling must be True, False or None (automatic), got {vae_tiling!r}")
        self.folder = folder
        self.vae = self._check_vae(vae)
        self.provider = self.backend.provider
        self.precision = self.backend.label(folder)  # e.g. "bf16", "fp32", "int8+fp32"
        self.low_memory = bool(low_memory)
        self.vae_tiling = vae_tiling
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        self.vae_tile = default_tile(folder.components["vae_decoder"].config.get("sample_size", 512),
                                     folder.components["vae_decoder"].config.get("block_out_channels") or [0, 0, 0, 0])
        self.family = family_for(folder)  # how prompts become the UNet's conditioning (SD, SDXL)
        self.tokenizer = self.family.tokenizer
        # DeepCache's shallow UNet (a small graph) is resident with the rest where the folder has one
        self.networks = self.family.text_encoders + ("unet", decoder_name(self.vae)) + (("unet_shallow",) if folder.deepcache else ())
        self._models: dict[str, object] = {}
        # the three networks, vae_encoder where there is one, and the ControlNets ("controlnet/<name>", opened at first use)
        self._users = dict.fromkeys([*folder.components, *(NETWORK_PREFIX + name for name in folder.controlnets)], 0)
        self._lock = threading.Lock()  # guards _models and _users (networks opened and released across threads)
        self._closed = False
        self._warned_lcm = False  # the LCM-UNet-with-another-scheduler notice is logged once
        self._observers = Observers()
        self.loras: list[Lora] = []
        self.lora_report: dict | None = None  # layers adapted, keys that matched nothing
        self._lora_weights: dict[str, dict] = {}  # {network: {initializer: LoRA-merged array}}
        if loras:
            self.loras, self._lora_weights = self._merge_loras(loras)
        if not self.low_memory:
            for name in self.networks:
                self._models[name] = self._open(name)

    @classmethod
    def from_folder(cls, path: str | Path, provider: str = "auto", threads: int | None = None, **options) -> "Pipeline":
        """Options as `Pipeline(...)`: precision, cache_dir, use_cache, low_memory, vae_tiling, max_pixels, loras,
        io_binding, cuda_graph, provider_options, max_compiled_shapes, vae."""
        return cls(ModelFolder.open(path), provider=provider, threads=threads, **options)

    @classmethod
    def default(cls, provider: str = "auto", threads: int | None = None, **options) -> "Pipeline":
        """The model shipped inside the package."""
        from latentrt.models import default_model_path

        return cls.from_folder(default_model_path(), provider=provider, threads=threads, **options)

    # --- LoRAs: merged into the weights the sessions are created with -----------------------------------------
    def set_loras(self, loras: Sequence) -> None:
        """Apply these LoRAs (paths or (path, scale) pairs; [] removes them) in place of the current ones: the
        adapted networks are opened again with the merged weights; the folder's files are not reread or changed."""
        merged = self._merge_loras(loras) if loras else ([], {})
        if not loras:
            self.lora_report = None
        with self._lock:
            if self._closed:
                raise RuntimeError("this pipeline is closed: create a new one with Pipeline.from_folder(...)")
            changed = set(self._lora_weights) | set(merged[1])
            self.loras, self._lora_weights = merged
            for name in changed:
                if name in self._models:
                    self._models[name] = self._open(name)

    def _merge_loras(self, loras: Sequence) -> tuple[list[Lora], dict[str, dict]]:
        loras = [Lora.of(lora) for lora in loras]
        quantized = [name for name in LORA_COMPONENTS
                     if name in self.folder.components and self.folder.components[name].quantized]
        if quantized:
            raise LoraError(f"{self.folder.path} has int8 weights in {', '.join(quantized)} (`latentrt quantize`), and "
                            "LoRAs merge into float weights: load the LoRA on the fp32 folder it was quantized from")
        maps = {name: (self.folder.components[name].manifest or {}).get("weights") for name in LORA_COMPONENTS
                if name in self.folder.components}
        if not any(maps.values()):
            raise LoraError(f"{self.folder.path} has no weight map (manifest 'weights'), which LoRAs need to find the "
                            "layers they adapt: export the model with `latentrt export` (optimum's folders have none)")
        def weight(component: str, *where) -> NDArray:  # only the weights the LoRAs adapt are read
            return read_weight(self.folder.components[component].model.parent, *where)

        patch = build_patch(loras, {name: m for name, m in maps.items() if m}, weight)
        self.lora_report = {"layers": patch.matched, "unmatched": len(patch.unmatched), "examples": patch.unmatched[:5]}
        return loras, patch.weights

    def _files(self, name: str) -> ComponentFiles:
        """The files of network `name`: a folder with ControlNets opens the UNet graph that takes their residuals
        (the same weights; still named "unet"), and "controlnet/<name>" is a ControlNet."""
        if name.startswith(NETWORK_PREFIX):
            return self.folder.controlnets[name[len(NETWORK_PREFIX):]]
        if name == "unet" and self.folder.unet_controlnet is not None:
            return dataclasses.replace(self.folder.unet_controlnet, name="unet")
        return self.folder.components[name]

    def _open(self, name: str):
        start = time.perf_counter()
        network = self.backend.open(self._files(name), self._lora_weights.get(name))
        self._observers.emit(Event(OPEN, name, time.perf_counter() - start))
        return network

    # --- the networks: resident, or opened per use with low_memory -------------------------------------------
    @contextmanager
    def network(self, name: str):
        """The network, opened if it is not resident; with low_memory, released when its last user is done."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this pipeline is closed: create a new one with Pipeline.from_folder(...)")
            model = self._models.get(name)
            if model is None:
                model = self._models[name] = self._open(name)
            self._users[name] += 1
        try:
            yield model
        finally:
            with self._lock:
                self._users[name] -= 1
                if self.low_memory and self._users[name] == 0:
                    self._models.pop(name, None)

    def _get(self, name: str):
        with self.network(name) as model:  # with low_memory, opened for the question and released again
            return model

    text_encoder = property(lambda self: self._get("text_encoder"))
    unet = property(lambda self: self._get("unet"))
    vae_decoder = property(lambda self: self._get("vae_decoder"))

    @property
    def resident_networks(self) -> Mapping[str, object]:
        """The networks open now, by name (with low_memory: only those a running call holds). A snapshot."""
        with self._lock:
            return MappingProxyType(dict(self._models))

    def close(self) -> None:
        """Free the networks (their sessions and weights); later calls raise. Calls still running finish first."""
        with self._lock:
            self._closed = True
            self._models.clear()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def compile(self, height: int | None = None, width: int | None = None, batch: int = 1,
                guidance_scale: float | None = None, image: bool = False,
                controlnet: str | Sequence[str] | None = None) -> None:
        """Compile every network for one call's shapes now (OpenVINO compiles per shape; ONNX Runtime needs nothing).

        `batch` is the number of prompts of that call (with num_images=1). A server or benchmark calls it after
        loading, so that the first generation at this size does not pay for compilation. `image=True` also opens
        (ONNX Runtime) and compiles the VAE encoder that image to image and inpainting use, which a pipeline
        otherwise opens at its first such call (OpenVINO: about 5 s for SD 1.5 at 512x512). `controlnet` (a name or a
        list) opens those ControlNets and compiles them for the call's batch (guess mode with guidance runs them on
        half of it: that shape compiles at its first call).
        """
        encoder_name = encoder_name_for(self.vae)
        if image and encoder_name in self.folder.components and not self.low_memory:
            with self._lock:
                if encoder_name not in self._models:
                    self._models[encoder_name] = self._open(encoder_name)
        if self.low_memory or not hasattr(self._models["unet"], "compile"):
            return  # ONNX Runtime sessions take any shape as they are; low_memory keeps no network to compile
        height, width = self.check_size(height, width)
        guidance_scale = self.folder.defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
        texts = batch * (2 if self._uses_cfg(guidance_scale) else 1)
        factor = self.folder.vae.scale_factor
        latent = (self.folder.unet.in_channels, height // factor, width // factor)
        timestep = self.unet.inputs["timestep"]
        unet_shapes = self.family.unet_input_shapes(texts)
        if self.guidance_embedding_dim:
            unet_shapes["timestep_cond"] = (texts, self.guidance_embedding_dim)
        unet_shapes = {
            "sample": (texts, *latent),
            "timestep": () if timestep.rank == 0 else ((timestep.shape[0] if isinstance(timestep.shape[0], int) else texts),),
            **unet_shapes,
        }
        residuals = residual_inputs(self.unet.inputs)  # a folder with ControlNets: the UNet takes their residuals
        unet_shapes.update(zip(residuals, residual_shapes(self.folder.components["unet"].config, texts, *latent[1:])))
        decoder = self._get(decoder_name(self.vae))  # the default VAE's (the full one stays closed with vae="tiny")
        jobs = [
            (self.unet, unet_shapes),
            *[(self._models[name], {"input_ids": (texts, self.family.tokenizers[name].max_length)}) for name in self.family.text_encoders],
            (decoder, {next(iter(decoder.inputs)): (batch, self.folder.vae.latent_channels, *latent[1:])}),
        ]
        if "unet_shallow" in self._models:  # DeepCache: the UNet's shapes and the feature's
            shallow = self._models["unet_shallow"]
            feature = self._feature_shape(texts, *latent[1:])
            jobs.append((shallow, {name: shape for name, shape in {**unet_shapes, **feature}.items() if name in shallow.inputs}))
        if image and encoder_name in self._models:  # one image at a time, as the call encodes it
            encoder = self._models[encoder_name]
            jobs.append((encoder, {next(iter(encoder.inputs)): (1, 3, height, width)}))
        for name in checked_names(controlnet, self.folder.controlnets):
            network = self._get(NETWORK_PREFIX + name)  # opened, and resident from now on
            shapes = {"controlnet_cond": (texts, 3, height, width), **{k: v for k, v in unet_shapes.items() if k in network.inputs}}
            jobs.append((network, shapes))
        with ThreadPoolExecutor(len(jobs)) as pool:  # OpenVINO compiles in native code: the three overlap
            list(pool.map(lambda job: job[0].compile(job[1]), jobs))

    def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None, *,
                 rng: np.random.Generator | None = None, progress: ProgressCallback | None = None,
                 **options) -> PipelineResult:
        """Text to image, or image to image when `image` is given (a PIL image, a uint8 (H, W, 3) array or a path).

        `options` are the fields of `latentrt.runtime.request.Request`: height, width, steps, guidance_scale,
        scheduler, seed, num_images, latents, image, strength, mask_image, padding_mask_crop, clip_skip,
        original_size, crops_coords_top_left, target_size, aesthetic_score, negative_aesthetic_score,
        cache_interval, cache_schedule, vae, preview_every, control_image, controlnet, controlnet_conditioning_scale,
        control_guidance_start, control_guidance_end, guess_mode, control_preprocess, canny_low_threshold,
        canny_high_threshold. Randomness comes from `rng`, else from `seed` (a random one,
        written in the images' parameters, when neither is given); `progress(done, total)` is called after every UNet
        call.

        vae: "full" (the model's VAE) or "tiny" (the folder's tiny autoencoder, TAESD/TAESDXL, added with `latentrt
        add-tiny-vae` or `export --tiny-vae`); None: the pipeline's default (`Pipeline(..., vae=...)`). It decodes the
        final latents and, for image to image and inpainting, encodes the image (its latents are the encoder's output
        as they are: no sampling, as diffusers' retrieve_latents with an AutoencoderTiny). The latents are divided by
        the tiny VAE's own scaling_factor (1.0 for TAESD) before its decoder, as diffusers' pipelines do.

        preview_every=N (an integer >= 1): `progress(done, total, preview)` is called instead, with three arguments:
        `preview` is a PIL image of the current latents of the first image after every N-th UNet call, None
        after the others. It is decoded by the tiny VAE when the folder has one (the output's size), else by a
        cheap linear latent-to-RGB projection (AUTOMATIC1111's "Approx cheap", upscaled to the output's size with
        nearest-neighbour); see runtime/previews.py for what each costs.

        img2img as diffusers' StableDiffusionImg2ImgPipeline: height/width default to the image's size rounded
        down to a multiple of the VAE factor, and an image of another size is resized to them (Lanczos, as
        diffusers' VaeImageProcessor); `strength` (in (0, 1]; default 0.8, an SDXL refiner's 0.3) is the fraction of
        the steps that run, starting from the image's latents noised to that point (at 1, little of the image survives).

        Inpainting when `mask_image` is given too (same kinds as `image`, the image's size; white = repaint), as
        diffusers' StableDiffusionInpaintPipeline: the mask is made grayscale, resized with the image and binarised
        at 0.5; strength defaults to 1 (pure noise). A 9-channel inpainting UNet sees the latents, the mask and the
        masked image's latents concatenated; any other UNet denoises everything and, after every step, the
        unmasked region is replaced by the image's latents noised to the next timestep. Unlike diffusers' inpainting
        pipeline (which defaults to the model's native size), height/width default to the image's size, as for img2img.

        padding_mask_crop=P (pixels) inpaints only a crop: the box around the mask's non-black pixels, padded by P
        and grown to height/width's aspect ratio, is cut from the image and the mask, resized to height x width
        (diffusers' "fill" mode), inpainted, and pasted back into the image at its own size, the image's pixels kept
        wherever the mask is black (diffusers' apply_overlay): detail for a small mask on a large image.

        clip_skip (diffusers' definition): condition on the text encoder's layer that many below the last (SD:
        through the final layer norm; SDXL: below the penultimate it reads anyway); like diffusers, the negative
        prompt's conditioning is not skipped. SDXL only: original_size, crops_coords_top_left and target_size
        (default: the image's size, (0, 0), the image's size) and, for a refiner, aesthetic_score and
        negative_aesthetic_score, as diffusers' StableDiffusionXL pipelines. A UNet that takes `timestep_cond`
        (LCM) gets the guidance scale as an embedding and runs without classifier-free guidance, as diffusers.

        cache_interval=N (DeepCache; a folder exported with `--deepcache`): one UNet call in N runs the full UNet
        and caches its deep feature, the others run only the shallow UNet on it (`cache_schedule`: "uniform", or
        "nonuniform" as the paper's 1:N strategy; see runtime/deepcache.py). 1 (the default) is no caching.

        ControlNet (a folder exported with `--controlnet`), as diffusers' StableDiffusion(XL)ControlNet pipelines and
        their img2img and inpaint variants: control_image (an image, or a list of one per ControlNet; `image=` stays
        img2img's source) conditions the ControlNet `controlnet` names (a name or a list; None: the folder's only one).
        Each control image is preprocessed (control_preprocess: "canny" with canny_low/high_threshold, or "none") and
        resized to the output size (Lanczos); without height/width and without `image`, the output takes the first
        control image's size (rounded down to the model's multiple), as diffusers. controlnet_conditioning_scale
        multiplies each ControlNet's residuals, which are summed; control_guidance_start/end (fractions of the UNet
        calls, one value or one per ControlNet) bound the calls a ControlNet runs at; guess_mode runs the ControlNets on
        the conditional half of the guidance batch only, their residuals ramped from 0.1x (shallowest) to 1x (deepest).
        DeepCache's shallow calls run no ControlNet. `result.control_images` are the images the ControlNets saw.
        """
        return self.run(Request(prompt, negative_prompt, **options), rng=rng, progress=progress)

    def run(self, request: Request, *, rng: np.random.Generator | None = None,
            progress: ProgressCallback | None = None) -> PipelineResult:
        """One generation: the numbered steps of every task (see `__call__` for what the request's fields mean)."""
        # 1. check inputs (nothing is allocated before they pass)
        plan = self.check(request)
        task = copy.copy(plan.task)  # holds this run's state (inpainting's noise): plans may be run concurrently
        sampler = self._sampler(plan.scheduler)
        seed = request.seed
        if seed is None and rng is None and request.latents is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        rng = rng if rng is not None else np.random.default_rng(seed)
        timings: dict[str, float] = {}

        # 2. encode prompt: the family's UNet conditioning; rows (2B, ...) with CFG, else (B, ...)
        with self._observers.stage("text_encoder", timings):
            conditioning = self.encode_prompt(plan)

        # 3. prepare latents: noise, or the task's image latents noised to its first timestep
        with self._observers.stage("vae_encode", timings) if task.encodes else nullcontext():
            x, timesteps = task.start(self, plan, sampler, rng)  # (B, C, H/f, W/f)

        # 4. denoise (control images: preprocessed and resized to the output size, the inpainted crop cut like the image)
        control_images = plan.control.images(plan.height, plan.width, task.crop)
        with self._observers.stage("denoise", timings):
            x, unet_calls = self._denoise(plan, task, sampler, x, timesteps, conditioning, rng, progress, control_images)
        timings["unet_step"] = timings["denoise"] / max(len(timesteps), 1)

        # 5. decode (and the task's last touch: an inpainted crop pasted back into its image)
        with self._observers.stage("vae_decode", timings):
            images = task.finish(to_pil(decoded_to_uint8(self.decode(x, plan.tiled, plan.vae))))  # (B, H, W, 3)

        # 6. package
        return PipelineResult(images=images, parameters=self._parameters(plan, task, seed), latents=x,
                              timings=timings, unet_calls=unet_calls, control_images=control_images)

    def check(self, request: Request) -> Plan:
        """The request checked against this folder and pipeline, its defaults resolved: ValueError (or
        ImageTooLargeError, FileNotFoundError for an image path) with a message that says the fix, before anything
        is allocated. `run` calls it; a server calls it before queueing a request."""
        r, defaults = request, self.folder.defaults
        prompts = check_prompts(r.prompt)
        negatives = check_negatives(r.negative_prompt, len(prompts))
        self.family.check_clip_skip(r.clip_skip)
        guidance_scale = defaults.guidance_scale if r.guidance_scale is None else check_guidance(r.guidance_scale)
        vae = self._check_vae(self.vae if r.vae is None else r.vae)
        preview_every = check_preview_every(r.preview_every)
        task, height, width = task_for(self, r)
        control = check_control(self.folder, r)
        if control.units and task.crop is not None:
            check_crop(control, task.source.size)
        height, width = self.check_size(*control.size(height, width, self.folder.size_multiple))
        steps = check_steps(defaults.steps if r.steps is None else r.steps,
                            int(self.folder.scheduler_config.get("num_train_timesteps", 1000)))
        check_positive_int("num_images", r.num_images)
        cache_interval = self._check_cache(r.cache_interval, r.cache_schedule)
        if task.strength is not None and int(steps * task.strength) < 1:  # diffusers' get_timesteps would leave no step
            raise ValueError(
                f"strength {task.strength:g} with {steps} steps leaves no step to run (int(steps x strength) = 0): "
                f"raise strength to at least {1 / steps:.3g} or use more steps"
            )
        do_cfg = self._uses_cfg(guidance_scale)  # the unconditional half is skipped otherwise, like diffusers
        tiled = self._check_memory(height, width, len(prompts) * r.num_images, do_cfg, task.encodes, vae, control.names)
        task.check_inputs(height, width)  # after the memory guard: nothing is resized for a request too large
        scheduler = self._sampler(r.scheduler if r.scheduler is not None else defaults.scheduler).name
        return Plan(request=r, prompts=tuple(prompts), negatives=tuple(negatives), height=height, width=width, steps=steps,
                    guidance_scale=guidance_scale, do_cfg=do_cfg, scheduler=scheduler, task=task,
                    cache_interval=cache_interval, tiled=tiled, vae=vae, preview_every=preview_every, control=control)

    # --- the stages, public for tools that run them one at a time (the bench's warm-up, calibration, tests) ---
    def encode_prompt(self, plan: Plan) -> dict[str, NDArray[np.float32]]:
        """The UNet's conditioning for a checked request: the family's inputs besides sample and timestep."""
        conditioning = self.family.conditioning(self.run_network, plan.text, plan.size)
        if self.guidance_embedding_dim:  # LCM: the guidance scale enters the UNet as an embedding
            conditioning["timestep_cond"] = guidance_embedding(plan.guidance_scale, self.guidance_embedding_dim, plan.batch)
        return conditioning

    @contextmanager
    def denoiser(self, conditioning: dict[str, NDArray], shallow: bool = False) -> Iterator["UNetCalls"]:
        """One generation's UNet calls with this conditioning: the UNet (and DeepCache's shallow UNet when `shallow`)
        resident for the whole block (also with low_memory), the conditioning fed to each call or bound once on the
        device (io_binding). Yields a `UNetCalls`: `unet(sample, t, residuals=None)` (a folder with ControlNets: zeros
        for residuals left out) and `unet.shallow(sample, t, feature)`."""
        with ExitStack() as stack:
            full = stack.enter_context(self._conditioned("unet", conditioning))
            small = stack.enter_context(self._conditioned("unet_shallow", conditioning)) if shallow else None
            zeros = ResidualZeros(full[0].inputs, self.folder.components["unet"].config)
            yield UNetCalls(full, small, (self.folder.deepcache or {}).get("feature"), self._observers, zeros)

    @contextmanager
    def control_step(self, plan: Plan, images: list[Image.Image], conditioning: dict[str, NDArray],
                     calls: int) -> Iterator[ControlStep]:
        """One generation's ControlNets (the plan's, with their prepared `images`): each resident for the block, its
        image and conditioning bound once. Yields a `ControlStep`: `residuals(i, sample, t)` per UNet call (always None
        for a plan without ControlNet)."""
        with ExitStack() as stack:
            names = residual_inputs(self._get("unet").inputs) if plan.control.units else []
            step = ControlStep(plan.control, images, plan.batch, plan.do_cfg, calls, names, self._observers, unet_timestep)
            for index, unit in enumerate(plan.control.units):
                network = stack.enter_context(self._conditioned(unit.network, step.constants(index, conditioning)))
                check_residual_count(names, network[0], unit.name)
                step.attach(network)
            yield step

    def decode(self, latents: NDArray[np.float32], tiled: bool = False, vae: str = "full") -> NDArray[np.float32]:
        """The VAE decoder's images for UNet latents: (B, 3, H, W) in about [-1, 1]; `tiled` in overlapping tiles (the
        full VAE only); vae="tiny": the tiny autoencoder's decoder, on the latents divided by its scaling_factor."""
        if self._check_vae(vae) == "tiny":
            z = self.folder.tiny_vae.from_unet(latents)
            with self.network(TINY_DECODER) as decoder:
                out = self._observers.network(TINY_DECODER, decoder, {next(iter(decoder.inputs)): np.ascontiguousarray(z)})
            return next(iter(out.values()))  # (B, 3, H, W) in [-1, 1]
        vae = self.folder.vae
        z = vae.from_unet(latents)
        with self.network("vae_decoder") as decoder:
            name = next(iter(decoder.inputs))  # "latent_sample"

            def decode(tile: NDArray[np.float32]) -> NDArray[np.float32]:
                out = self._observers.network("vae_decoder", decoder, {name: np.ascontiguousarray(tile)})
                return next(iter(out.values()))  # (B, 3, h*f, w*f)

            if tiled:  # one image at a time: the decode's memory is one tile's (memory.estimate counts it so)
                return np.concatenate([decode_tiled(decode, z[i:i + 1], vae.scale_factor, self.vae_tile) for i in range(len(z))])
            return decode(z)

    def encode_image(self, pixels: NDArray[np.float32], rng: np.random.Generator, vae: str = "full") -> NDArray[np.float32]:
        """A sample of the VAE's posterior for the image, scaled as the UNet sees latents (diffusers' retrieve_latents);
        vae="tiny": the tiny encoder's latents as they are (no sampling: `rng` is not drawn from), times its
        scaling_factor."""
        if self._check_vae(vae) == "tiny":
            if TINY_ENCODER not in self.folder.components:
                raise ValueError(f"{self.folder.path} has no tiny VAE encoder (vae_encoder_tiny/): {TINY_VAE_HINT}")
            with self.network(TINY_ENCODER) as encoder:
                out = self._observers.network(TINY_ENCODER, encoder, {next(iter(encoder.inputs)): np.ascontiguousarray(pixels)})
            return self.folder.tiny_vae.to_unet(next(iter(out.values())).astype(np.float32, copy=False))
        vae = self.folder.vae
        with self.network("vae_encoder") as encoder:
            out = self._observers.network("vae_encoder", encoder, {next(iter(encoder.inputs)): np.ascontiguousarray(pixels)})
        params = out.get("latent_parameters", next(iter(out.values()))).astype(np.float32, copy=False)
        if params.shape[1] != 2 * vae.latent_channels:
            raise ValueError(
                f"the vae_encoder gives {params.shape[1]} channels, not the mean and log-variance "
                f"({2 * vae.latent_channels}) image to image needs: {REEXPORT_HINT}"
            )
        mean, logvar = np.split(params, 2, axis=1)
        std = np.exp(np.float32(0.5) * np.clip(logvar, -30.0, 20.0))  # diffusers' DiagonalGaussianDistribution
        z = mean + std * rng.standard_normal(mean.shape, dtype=np.float32)
        return vae.to_unet(z)

    def prepare_image(self, image, height: int | None = None, width: int | None = None,
                      crop: tuple[int, int, int, int] | None = None) -> NDArray[np.float32]:
        """The VAE encoder's input as diffusers' VaeImageProcessor.preprocess makes it: (1, 3, H, W) float32 in
        [-1, 1], resized to height x width (default: the image's size rounded down to the model's multiple; a `crop`
        box cut out and resized in "fill" mode)."""
        image = as_pil(image, "image")  # a PIL image passes through as it is
        height, width = self.image_size(image, height, width)
        if crop is not None:
            image = resize_fill(image.crop(crop), width, height)
        elif image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        return to_pixels(image)

    def image_size(self, image: Image.Image, height: int | None, width: int | None) -> tuple[int, int]:
        """height/width as given, else the image's size rounded down to the VAE's multiple (as diffusers), checked."""
        multiple = self.folder.size_multiple
        height = image.height // multiple * multiple if height is None else height
        width = image.width // multiple * multiple if width is None else width
        if height == 0 or width == 0:
            raise ValueError(f"the image is {image.width}x{image.height}: both sides must be at least {multiple} pixels for this model")
        return self.check_size(height, width)

    def run_network(self, name: str, feeds: dict[str, NDArray]) -> dict[str, NDArray]:
        """One call of a network (opened for it with low_memory); integer inputs cast to the graph's dtype
        (input_ids are int32 in diffusers' legacy exports, int64 in optimum's and ours)."""
        with self.network(name) as network:
            feeds = {k: v.astype(network.inputs[k].dtype) if v.dtype.kind in "iu" else v for k, v in feeds.items()}
            return self._observers.network(name, network, feeds)

    # --- observers ------------------------------------------------------------------------------------------
    @contextmanager
    def observe(self, observer: Observer) -> Iterator[None]:
        """Attach `observer` (a callable taking an `observers.Event`: every network call and stage) for the block."""
        self._observers.add(observer)
        try:
            yield
        finally:
            self._observers.remove(observer)

    def add_observer(self, observer: Observer) -> None:
        self._observers.add(observer)

    def remove_observer(self, observer: Observer) -> None:
        self._observers.remove(observer)

    # --- the loop ---------------------------------------------------------------------------------------------
    def _denoise(self, plan: Plan, task, sampler, x: NDArray[np.float32], timesteps: NDArray,
                 conditioning: dict[str, NDArray], rng: np.random.Generator, progress: ProgressCallback | None,
                 control_images: list[Image.Image]) -> tuple[NDArray[np.float32], dict[str, int]]:
        """The one denoise loop: the UNet (DeepCache: or the shallow UNet on the cached feature, where the plan says
        so) with the ControlNets' residuals on its full calls, classifier-free guidance, the sampler's step, the task's
        hooks around them."""
        full = full_calls(len(timesteps), plan.cache_interval, plan.request.cache_schedule)
        if plan.cache_interval > len(timesteps):
            logger.warning("cache_interval %d is more than the %d UNet calls of this generation: only the first runs the "
                           "full UNet, every other call reuses its deep feature", plan.cache_interval, len(timesteps))
        feature, guidance = None, np.float32(plan.guidance_scale)
        previews = Previews(self, plan) if plan.preview_every and progress is not None else None
        with (self.denoiser(conditioning, shallow=not all(full)) as unet,
              self.control_step(plan, control_images, conditioning, len(timesteps)) as control):
            for i, t in enumerate(timesteps):
                x_in = np.concatenate([x, x]) if plan.do_cfg else x  # (2B, C, h, w) with CFG
                scaled = sampler.scale_model_input(x_in, t).astype(np.float32, copy=False)
                x_in = task.model_input(scaled)  # (2B, C', h, w): 9-channel inpainting adds the mask's channels
                if full[i]:
                    residuals = control.residuals(i, scaled, t)  # the ControlNets' (None: none runs at this call)
                    noise, feature = unet(x_in, t, keep_feature=plan.cache_interval > 1, residuals=residuals)
                else:
                    noise = unet.shallow(x_in, t, feature)
                check_finite("unet" if full[i] else "unet_shallow", noise, f" at UNet call {i + 1} of {len(timesteps)}")
                if plan.do_cfg:
                    uncond, cond = np.split(noise, 2)
                    noise = uncond + guidance * (cond - uncond)
                x = task.after_step(i, sampler.step(noise, t, x, rng))
                if previews is not None:
                    progress(i + 1, len(timesteps), previews.after_call(i + 1, len(timesteps), x))
                elif progress is not None:
                    progress(i + 1, len(timesteps))
        return x, {"full": sum(full), "shallow": len(full) - sum(full)}

    def _sampler(self, name: str):
        sampler = create_scheduler(name, self.folder.scheduler_config)
        if self.guidance_embedding_dim and sampler.name != "lcm" and not self._warned_lcm:
            self._warned_lcm = True
            logger.warning(
                "this UNet takes the guidance scale as an embedding (an LCM UNet, time_cond_proj_dim): guidance_scale "
                "sets that embedding and no classifier-free guidance runs; it was distilled for the lcm scheduler, "
                "%s may give poor images", sampler.name)
        return sampler

    def _parameters(self, plan: Plan, task, seed: int | None) -> list[GenerationParameters]:
        """Each image's parameters (PNG metadata, A1111's infotext)."""
        r = plan.request
        return [
            GenerationParameters(
                prompt=plan.prompts[i // r.num_images], negative_prompt=plan.negatives[i // r.num_images],
                steps=plan.steps, sampler=plan.scheduler, guidance_scale=plan.guidance_scale, seed=seed,
                width=plan.width, height=plan.height, model=self.folder.name, backend=self.provider,
                precision=self.precision, strength=task.strength, task=task.name, mask_padding=task.mask_padding,
                cache_interval=plan.cache_interval, cache_schedule=r.cache_schedule, vae=plan.vae,
                controlnet=plan.control.infotext(),
            )
            for i in range(plan.batch)
        ]

    # --- checks -------------------------------------------------------------------------------------------
    def check_fits(self, height: int | None = None, width: int | None = None, num_images: int = 1,
                   guidance_scale: float | None = None, vae: str | None = None,
                   controlnet: str | Sequence[str] | None = None) -> None:
        """Raise what a text-to-image call of this size would raise before allocating anything: ValueError for a
        size that is not a multiple of the model's, ImageTooLargeError past max_pixels or the memory available
        (`controlnet`: with these ControlNets)."""
        height, width = self.check_size(height, width)
        guidance = self.folder.defaults.guidance_scale if guidance_scale is None else check_guidance(guidance_scale)
        self._check_memory(height, width, num_images, self._uses_cfg(guidance), vae=self._check_vae(vae or self.vae),
                           controlnets=checked_names(controlnet, self.folder.controlnets))

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(channels, height / f, width / f) of one image's initial latents (default: the native size), the shape
        a text-to-image call draws from its seed: `np.random.default_rng(seed).standard_normal((n, *shape))`."""
        height, width = self.check_size(height, width)
        f = self.folder.vae.scale_factor
        channels = self.folder.vae.latent_channels if self.folder.inpaint_unet else self.folder.unet.in_channels
        return (channels, height // f, width // f)

    def check_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """height and width (default: the native size), checked to be positive multiples of the model's step."""
        native = self.folder.unet.sample_size * self.folder.vae.scale_factor
        multiple = self.folder.size_multiple
        sides = []
        for name, value in (("height", height), ("width", width)):
            value = native if value is None else value
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            if value % multiple:
                raise ValueError(f"{name} must be a multiple of {multiple} for this model, got {value}")
            sides.append(int(value))
        return sides[0], sides[1]

    def _check_memory(self, height: int, width: int, images: int, do_cfg: bool, encodes: bool = False,
                      vae: str = "full", controlnets: Sequence[str] = ()) -> bool:
        """Refuse a call that cannot fit (before anything is allocated); returns whether to decode in tiles (the full
        VAE only: the tiny one's memory is counted whole)."""
        if self.max_pixels is not None and height * width > self.max_pixels:
            side = largest_side(height, width, self.folder.size_multiple, lambda h, w: h * w <= self.max_pixels)
            raise ImageTooLargeError(
                f"{width}x{height} is {height * width:,} pixels, over this pipeline's max_pixels={self.max_pixels:,}: "
                f"the largest size that fits at this aspect ratio is {side}"
            )
        texts = images * (2 if do_cfg else 1)
        tiny = vae == "tiny"
        tiled = bool(self.vae_tiling) and not tiny

        # OpenVINO: a new size compiles a copy of each network (counted once: conservative), unless the UNet has it
        unet, f = self._models.get("unet"), self.folder.vae.scale_factor
        sample = (texts, self.folder.unet.in_channels, height // f, width // f)
        compiles = self.provider == "openvino" and not (unet is not None and unet.compiled_for("sample", sample))

        resident = set(self._models)  # ControlNets already open add no weights

        def need(h: int, w: int, tile: bool) -> int:
            return estimate(self.folder, h, w, texts, images, low_memory=self.low_memory,
                            vae_tile=self.vae_tile if tile else None, compiles=compiles, encodes=encodes, vae=vae,
                            controlnets=controlnets, resident=resident).peak

        available = available_memory()
        peak = need(height, width, tiled)
        if peak > available and self.vae_tiling is None and not tiny:  # automatic tiling: when the untiled decode does not fit
            tiled, peak = True, need(height, width, True)
        if peak > available:
            side = largest_side(height, width, self.folder.size_multiple, lambda h, w: need(h, w, tiled) <= available)
            remedies = ([] if tiled or tiny else ["vae_tiling=True (--vae-tiling) decodes in tiles"]) + (
                [] if self.low_memory else ["low_memory=True (--low-memory) keeps one network in memory at a time"])
            raise ImageTooLargeError(
                f"{width}x{height} with {images} image(s){' and guidance' if do_cfg else ''} needs about "
                f"{gib(peak)} of memory and {gib(available)} is available: the largest size "
                f"that fits at this aspect ratio is {side}" + (f"; {' and '.join(remedies)}, for larger sizes" if remedies else "")
            )
        return tiled

    @property
    def guidance_embedding_dim(self) -> int | None:
        """LCM UNets' `time_cond_proj_dim`: the width of the guidance embedding they take as `timestep_cond`."""
        dim = self.folder.components["unet"].config.get("time_cond_proj_dim")
        return int(dim) if dim else None

    def _uses_cfg(self, guidance_scale: float) -> bool:
        """Classifier-free guidance (two UNet rows per image): guidance > 1, unless the UNet embeds it (LCM)."""
        return guidance_scale > 1.0 and not self.guidance_embedding_dim

    def _check_vae(self, vae) -> str:
        """"full" or "tiny", the tiny one only where the folder has its decoder (ValueError naming how to add it)."""
        vae = check_vae(vae)
        if vae == "tiny" and TINY_DECODER not in self.folder.components:
            raise ValueError(f"{self.folder.path} has no tiny VAE (vae_decoder_tiny/), which vae='tiny' needs: {TINY_VAE_HINT}")
        return vae

    def _check_cache(self, interval, schedule: str) -> int:
        interval = check_cache_interval(interval)
        if schedule not in CACHE_SCHEDULES:
            raise ValueError(f"unknown cache_schedule {schedule!r}: choose {' or '.join(CACHE_SCHEDULES)}")
        if interval > 1 and self.folder.deepcache is None:
            raise ValueError(
                f"{self.folder.path} has no DeepCache shallow UNet (unet_shallow/), which cache_interval > 1 needs: "
                "export the model again with `latentrt export --deepcache`"
            )
        return interval

    def _feature_shape(self, texts: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """The cached feature's shape for latents of height x width: each downsampler halves a side, rounding up."""
        entry = self.folder.deepcache
        for _ in range(entry["feature_downsamples"]):
            height, width = -(-height // 2), -(-width // 2)
        return {entry["feature"]: (texts, entry["feature_channels"], height, width)}

    @contextmanager
    def _conditioned(self, name: str, conditioning: dict[str, NDArray]):
        """(network, run(**feeds), constants) for network `name` with the conditioning it takes (the shallow UNet takes
        only those its layers use)."""
        with self.network(name) as network:
            constants = conditioning if name == "unet" else {k: v for k, v in conditioning.items() if k in network.inputs}
            with constant_feeds(network, constants) as run:
                yield network, run, constants


class UNetCalls:
    """One generation's UNet calls (from `Pipeline.denoiser`): the conditioning is bound; each call is observed."""

    def __init__(self, full, shallow, feature: str | None, observers: Observers, zeros: ResidualZeros):
        self._full, self._shallow, self._feature, self._observers = full, shallow, feature, observers
        self._zeros = zeros
        self._bound_zeros = None  # with IO binding: the zero residuals the device buffers hold now (not fed again)

    def __call__(self, sample: NDArray[np.float32], t, keep_feature: bool = False,
                 residuals: dict[str, NDArray[np.float32]] | None = None):
        """The UNet's noise prediction (a NumPy array) and, with keep_feature (DeepCache), the deep feature the
        shallow UNet reuses (on the device with io_binding), else None. `residuals`: the ControlNets' (ControlStep);
        a UNet graph that takes residuals gets zeros without them, a plain one nothing."""
        unet, run, constants = self._full
        feeds = {"sample": sample, "timestep": unet_timestep(unet, t, sample)}
        extra = residuals if residuals is not None else self._zeros(sample.shape)
        bound = getattr(unet, "binding", None) is not None
        if not (bound and extra is self._bound_zeros):  # IO binding keeps the zeros it was given last call
            feeds.update(extra)
        self._bound_zeros = extra if bound and residuals is None else None
        out = self._observers.network("unet", run, feeds, constants)
        return to_host(next(iter(out.values()))), (out[self._feature] if keep_feature else None)

    def shallow(self, sample: NDArray[np.float32], t, feature) -> NDArray[np.float32]:
        """DeepCache's shallow UNet on the cached feature (a NumPy array, or the full UNet's device buffer)."""
        if self._shallow is None:
            raise RuntimeError("this denoiser has no shallow UNet: open it with Pipeline.denoiser(..., shallow=True)")
        shallow, run, constants = self._shallow
        feeds = {"sample": sample, "timestep": unet_timestep(shallow, t, sample), self._feature: feature}
        return to_host(next(iter(self._observers.network("unet_shallow", run, feeds, constants).values())))


def decoder_name(vae: str) -> str:
    """The network that decodes with this VAE ("full" or "tiny")."""
    return TINY_DECODER if vae == "tiny" else "vae_decoder"


def encoder_name_for(vae: str) -> str:
    """The network that encodes an image with this VAE ("full" or "tiny")."""
    return TINY_ENCODER if vae == "tiny" else "vae_encoder"


def unet_timestep(unet, t, sample: NDArray) -> NDArray:
    """The timestep as this UNet graph takes it."""
    info = unet.inputs["timestep"]  # float (B,) in ours, int64 in optimum's, (1,) in legacy ones
    shape = () if info.rank == 0 else ((info.shape[0] if isinstance(info.shape[0], int) else sample.shape[0]),)
    return model_timestep(t, info.dtype, shape)


def largest_side(height: int, width: int, multiple: int, fits: Callable[[int, int], bool]) -> str:
    """The largest "WxH" at this aspect ratio (sides multiples of `multiple`) that `fits`, or a sentence when none does."""
    def size(k: int) -> tuple[int, int]:  # k steps of `multiple` along the longer side
        longer = max(height, width)
        return (max(multiple, height * k * multiple // longer // multiple * multiple),
                max(multiple, width * k * multiple // longer // multiple * multiple))

    low, high = 0, max(height, width) // multiple
    while low < high:  # the largest k whose size fits
        mid = (low + high + 1) // 2
        if fits(*size(mid)):
            low = mid
        else:
            high = mid - 1
    if low == 0:
        return "none: even the smallest image does not fit; close other programs or use a machine with more memory"
    h, w = size(low)
    return f"{w}x{h}"


__all__ = ["ImageTooLargeError", "Pipeline", "PipelineResult", "Request", "available_schedulers"]
