"""Text-to-image and image-to-image: ONNX Runtime or OpenVINO for the networks, pure NumPy between them.

A call reads as numbered steps: check inputs, encode prompt, prepare latents (from noise, or from an encoded
image for img2img), denoise, decode, package. Randomness comes only from an explicit `np.random.Generator`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from latentrt.runtime.backend import Backend, resolve_backend
from latentrt.runtime.deepcache import CACHE_SCHEDULES, check_cache_interval, full_calls
from latentrt.runtime.families import Prompts, SizeConditioning, family_for, guidance_embedding
from latentrt.runtime.folder import REEXPORT_HINT, ModelFolder
from latentrt.runtime.image_inputs import as_pil, crop_region, mask_array, paste_back, resize_fill, to_pixels
from latentrt.runtime.images import GenerationParameters, decoded_to_uint8, to_pil
from latentrt.runtime.lora import LORA_COMPONENTS, Lora, LoraError, build_patch, read_weight
from latentrt.runtime.memory import available_memory, estimate, gib
from latentrt.runtime.schedulers import available_schedulers, create_scheduler
from latentrt.runtime.schedulers.timesteps import model_timestep
from latentrt.runtime.session import check_finite, constant_feeds, to_host
from latentrt.runtime.tiling import decode_tiled, default_tile

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (UNet calls done, UNet calls in all)


@dataclass
class PipelineResult:
    images: list[Image.Image]
    parameters: list[GenerationParameters]  # one per image
    latents: NDArray[np.float32]  # final latents, (B, C, H/f, W/f)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    unet_calls: dict[str, int] = field(default_factory=dict)  # {"full": n, "shallow": m} (shallow: DeepCache)

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

    low_memory: one network resident at a time, loaded when a call needs it and released after (a load from the
    cache takes about a second on ONNX Runtime, 11 s for SD 1.5's UNet with use_cache=False; OpenVINO compiles
    again each time). vae_tiling: decode in overlapping tiles (True), never (False), or only when the untiled
    decode would not fit in the memory available (None: tiling is not exact, and a VAE trained on small images
    draws a frame in every tile). max_pixels: refuse images with more pixels (height x width) than this, for an
    app that bounds its requests; every call is also refused when its estimated memory exceeds what the
    machine has available (`latentrt.runtime.memory`).

    ONNX Runtime only (see `latentrt.runtime.backend`): io_binding runs the UNet on IO binding (conditioning bound
    once per generation, latents and outputs in buffers on the provider's device; the same images), cuda_graph
    captures it in a CUDA graph (cuda or tensorrt provider; implies io_binding; one image shape per pipeline), and
    provider_options ({key: value}) go to the first provider of the chain (TensorRT's engine cache, fp16, ...).

    Threads: one pipeline may be called from several threads at once (the images are those of serial calls; with
    io_binding their denoising loops take turns); `threads` sets the CPU threads each network uses. `close()` (or
    `with ... as pipe:`) frees the networks.
    """

    def __init__(self, folder: ModelFolder, provider: str = "auto", threads: int | None = None, *,
                 precision: str = "auto", cache_dir: str | Path | None = None, use_cache: bool = True,
                 low_memory: bool = False, vae_tiling: bool | None = None, max_pixels: int | None = None,
                 loras: Sequence | None = None, io_binding: bool = False, cuda_graph: bool = False,
                 provider_options: dict | None = None):
        self.backend: Backend = resolve_backend(provider, precision, threads, cache_dir, use_cache, io_binding=io_binding,
                                                cuda_graph=cuda_graph, provider_options=provider_options)
        if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1):
            raise ValueError(f"max_pixels must be a positive integer (height x width), got {max_pixels!r}")
        if vae_tiling not in (None, True, False):
            raise ValueError(f"vae_tiling must be True, False or None (automatic), got {vae_tiling!r}")
        self.folder = folder
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
        self.networks = self.family.text_encoders + ("unet", "vae_decoder") + (("unet_shallow",) if folder.deepcache else ())
        self._models: dict[str, object] = {}
        self._users = dict.fromkeys(folder.components, 0)  # the three networks, and vae_encoder where there is one
        self._lock = threading.Lock()  # guards _models and _users (networks opened and released across threads)
        self._closed = False
        self._warned_lcm = False  # the LCM-UNet-with-another-scheduler notice is logged once
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
        io_binding, cuda_graph, provider_options."""
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

    def _open(self, name: str):
        return self.backend.open(self.folder.components[name], self._lora_weights.get(name))

    # --- the networks: resident, or opened per use with low_memory -------------------------------------------
    @contextmanager
    def _network(self, name: str):
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
        with self._network(name) as model:  # with low_memory, opened for the question and released again
            return model

    text_encoder = property(lambda self: self._get("text_encoder"), lambda self, m: self._models.__setitem__("text_encoder", m))
    unet = property(lambda self: self._get("unet"), lambda self, m: self._models.__setitem__("unet", m))
    vae_decoder = property(lambda self: self._get("vae_decoder"), lambda self, m: self._models.__setitem__("vae_decoder", m))

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
                guidance_scale: float | None = None, image: bool = False) -> None:
        """Compile every network for one call's shapes now (OpenVINO compiles per shape; ONNX Runtime needs nothing).

        `batch` is the number of prompts of that call (with num_images=1). A server or benchmark calls it after
        loading, so that the first generation at this size does not pay for compilation. `image=True` also opens
        (ONNX Runtime) and compiles the VAE encoder that image to image and inpainting use, which a pipeline
        otherwise opens at its first such call (OpenVINO: about 5 s for SD 1.5 at 512x512).
        """
        if image and "vae_encoder" in self.folder.components and not self.low_memory:
            with self._lock:
                if "vae_encoder" not in self._models:
                    self._models["vae_encoder"] = self._open("vae_encoder")
        if self.low_memory or not hasattr(self._models["unet"], "compile"):
            return  # ONNX Runtime sessions take any shape as they are; low_memory keeps no network to compile
        height, width = self._check_size(height, width)
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
        jobs = [
            (self.unet, unet_shapes),
            *[(self._models[name], {"input_ids": (texts, self.family.tokenizers[name].max_length)}) for name in self.family.text_encoders],
            (self.vae_decoder, {next(iter(self.vae_decoder.inputs)): (batch, self.folder.vae.latent_channels, *latent[1:])}),
        ]
        if "unet_shallow" in self._models:  # DeepCache: the UNet's shapes and the feature's
            shallow = self._models["unet_shallow"]
            feature = self._feature_shape(texts, *latent[1:])
            jobs.append((shallow, {name: shape for name, shape in {**unet_shapes, **feature}.items() if name in shallow.inputs}))
        if image and "vae_encoder" in self._models:  # one image at a time, as the call encodes it
            encoder = self._models["vae_encoder"]
            jobs.append((encoder, {next(iter(encoder.inputs)): (1, 3, height, width)}))
        with ThreadPoolExecutor(len(jobs)) as pool:  # OpenVINO compiles in native code: the three overlap
            list(pool.map(lambda job: job[0].compile(job[1]), jobs))

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        seed: int | None = None,
        num_images: int = 1,
        latents: NDArray[np.float32] | None = None,
        rng: np.random.Generator | None = None,
        progress: ProgressCallback | None = None,
        image: Image.Image | NDArray[np.uint8] | str | Path | None = None,
        strength: float | None = None,
        mask_image: Image.Image | NDArray[np.uint8] | str | Path | None = None,
        padding_mask_crop: int | None = None,
        clip_skip: int | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        cache_interval: int = 1,
        cache_schedule: str = "uniform",
    ) -> PipelineResult:
        """Text to image, or image to image when `image` is given (a PIL image, a uint8 (H, W, 3) array or a path).

        img2img as diffusers' StableDiffusionImg2ImgPipeline: height/width default to the image's size rounded
        down to a multiple of the VAE factor, and an image of another size is resized to them (Lanczos, as
        diffusers' VaeImageProcessor); `strength` (default 0.8, in (0, 1]) is the fraction of the steps that run,
        starting from the image's latents noised to that point (at 1, little of the image survives).

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
        """
        timings: dict[str, float] = {}
        # 1. check inputs
        defaults = self.folder.defaults
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r:.80}")
        negatives = self._negatives(negative_prompt, len(prompts))
        self.family.check_clip_skip(clip_skip)
        steps = defaults.steps if steps is None else steps
        guidance_scale = defaults.guidance_scale if guidance_scale is None else _check_guidance(guidance_scale)
        pixels = mask = crop = None
        vae = self.folder.vae
        inpaint_unet = self.folder.inpaint_unet  # latents, mask, masked latents
        if padding_mask_crop is not None and (isinstance(padding_mask_crop, bool) or not isinstance(padding_mask_crop, (int, np.integer)) or padding_mask_crop < 0):
            raise ValueError(f"padding_mask_crop must be a whole number of pixels >= 0, got {padding_mask_crop!r}")
        if padding_mask_crop is not None and mask_image is None:
            raise ValueError("padding_mask_crop crops around the mask: give mask_image (--mask) too")
        if mask_image is not None and image is None:
            raise ValueError("mask_image needs the image to inpaint: give image= too (--image with --mask in the CLI)")
        if image is None and self.family.is_refiner:
            raise ValueError(
                f"{self.folder.path} is an SDXL refiner, an image to image model: give it an image (image=..., --image), "
                "for example the base model's output, and a strength (diffusers' default for it: 0.3)"
            )
        if inpaint_unet and mask_image is None:
            raise ValueError(
                f"{self.folder.path} has a {self.folder.unet.in_channels}-channel inpainting UNet: it needs an image "
                "and a mask_image (--image and --mask in the CLI)"
            )
        if image is not None:
            if latents is not None:
                raise ValueError("give either image (image to image) or latents (text to image), not both")
            default_strength = 0.3 if self.family.is_refiner else 0.8 if mask_image is None else 1.0
            strength = _check_strength(default_strength if strength is None else strength)
            if "vae_encoder" not in self.folder.components:
                raise ValueError(
                    f"{self.folder.path} has no vae_encoder/model.onnx, which image to image needs: {REEXPORT_HINT} "
                    "(it writes the VAE encoder)"
                )
            source = as_pil(image, "image")
            height, width = self._image_size(source, height, width)
            if mask_image is not None:
                mask_source = as_pil(mask_image, "mask_image")
                if mask_source.size != source.size:
                    raise ValueError(
                        f"the mask is {mask_source.size[0]}x{mask_source.size[1]} but the image is {source.size[0]}x"
                        f"{source.size[1]}: give a mask of the image's size (white = repaint, black = keep)"
                    )
                crop = None if padding_mask_crop is None else crop_region(mask_source, width, height, int(padding_mask_crop))
                mask = mask_array(mask_source, height, width, crop)  # (1, 1, H, W) of 0 and 1
            pixels, _, _ = self._load_image(source, height, width, crop)
        elif strength is not None:
            raise ValueError("strength applies to image to image only: give an image too (--image in the CLI)")
        height, width = self._check_size(height, width)
        _check_positive_int("steps", steps)
        _check_positive_int("num_images", num_images)
        cache_interval = self._check_cache(cache_interval, cache_schedule)
        if pixels is not None and int(steps * strength) < 1:  # diffusers' get_timesteps would leave no step to run
            raise ValueError(
                f"strength {strength:g} with {steps} steps leaves no step to run (int(steps x strength) = 0): "
                f"raise strength to at least {1 / steps:.3g} or use more steps"
            )
        do_cfg = self._uses_cfg(guidance_scale)  # the unconditional half is skipped otherwise, like diffusers
        tiled = self._check_memory(height, width, len(prompts) * num_images, do_cfg, pixels is not None)
        sampler = create_scheduler(scheduler if scheduler is not None else defaults.scheduler, self.folder.scheduler_config)
        if self.guidance_embedding_dim and sampler.name != "lcm" and not self._warned_lcm:
            self._warned_lcm = True
            logger.warning(
                "this UNet takes the guidance scale as an embedding (an LCM UNet, time_cond_proj_dim): guidance_scale "
                "sets that embedding and no classifier-free guidance runs; it was distilled for the lcm scheduler, "
                "%s may give poor images", sampler.name)
        if seed is None and rng is None and latents is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        rng = rng if rng is not None else np.random.default_rng(seed)
        batch = len(prompts) * num_images

        # 2. encode prompt: the family's UNet conditioning, one text-encoder call per encoder for both halves;
        # rows (2B, ...) with CFG, else (B, ...)
        t0 = time.perf_counter()
        text = Prompts(prompts, negatives, negative_prompt is not None, do_cfg, num_images, clip_skip)
        conditioning = self.family.conditioning(
            self._run, text, SizeConditioning(height, width, original_size, tuple(crops_coords_top_left), target_size,
                                              float(aesthetic_score), float(negative_aesthetic_score)))
        if self.guidance_embedding_dim:  # LCM: the guidance scale enters the UNet as an embedding
            conditioning["timestep_cond"] = guidance_embedding(guidance_scale, self.guidance_embedding_dim, batch)
        timings["text_encoder"] = time.perf_counter() - t0

        # 3. prepare latents
        sampler.set_timesteps(steps)
        timesteps = sampler.timesteps
        f = vae.scale_factor
        shape = (batch, *self.latent_shape(height, width))
        if mask is not None:  # diffusers' inpainting prepare_latents and prepare_mask_latents, draws in its order
            t0 = time.perf_counter()
            timesteps = _img2img_timesteps(sampler, steps, strength)
            full = strength == 1.0  # diffusers' is_strength_max: pure noise, the image only through the mask
            init = np.repeat(self._encode_image(pixels, rng), batch, axis=0) if not (inpaint_unet and full) else None
            inpaint_noise = rng.standard_normal(shape, dtype=np.float32)
            if full:
                x = inpaint_noise * np.float32(sampler.init_noise_sigma)
            else:
                x = sampler.add_noise(init, inpaint_noise, np.repeat(timesteps[:1], batch)).astype(np.float32, copy=False)
            if inpaint_unet:
                masked = pixels * (mask < 0.5).astype(np.float32)  # the image with the region to repaint blacked out
                masked_latents = np.repeat(self._encode_image(masked, rng), batch, axis=0)
                mask_latents = np.repeat(mask[:, :, ::f, ::f], batch, axis=0)  # torch's 'nearest' at an integer factor
                if do_cfg:
                    masked_latents, mask_latents = np.concatenate([masked_latents] * 2), np.concatenate([mask_latents] * 2)
                extra = np.concatenate([mask_latents, masked_latents], axis=1).astype(np.float32)
            else:  # diffusers encodes the masked image here too (unused by a 4-channel UNet): draw its sample alike
                rng.standard_normal((1, vae.latent_channels, height // f, width // f), dtype=np.float32)
                blend = mask[:, :, ::f, ::f]  # (1, 1, h, w): 1 where the model paints
            timings["vae_encode"] = time.perf_counter() - t0
        elif pixels is not None:
            t0 = time.perf_counter()
            timesteps = _img2img_timesteps(sampler, steps, strength)
            init = np.repeat(self._encode_image(pixels, rng), batch, axis=0)  # one encoding, repeated like diffusers
            noise = rng.standard_normal(shape, dtype=np.float32)
            x = sampler.add_noise(init, noise, np.repeat(timesteps[:1], batch)).astype(np.float32, copy=False)
            timings["vae_encode"] = time.perf_counter() - t0
        elif latents is None:
            latents = rng.standard_normal(shape, dtype=np.float32)
        else:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.shape != shape:
                raise ValueError(f"latents must have shape {shape} for this size and batch, got {latents.shape}")
        if pixels is None:
            x = latents * np.float32(sampler.init_noise_sigma)  # (B, C, H/f, W/f)

        # 4. denoise (DeepCache: the full UNet where the plan says so, else the shallow one on its cached feature)
        t0 = time.perf_counter()
        plan = full_calls(len(timesteps), cache_interval, cache_schedule)
        if cache_interval > len(timesteps):
            logger.warning("cache_interval %d is more than the %d UNet calls of this generation: only the first runs the "
                           "full UNet, every other call reuses its deep feature", cache_interval, len(timesteps))
        feature = None
        with self._unet_calls(conditioning, shallow=not all(plan)) as (full, shallow):
            for i, t in enumerate(timesteps):
                x_in = np.concatenate([x, x]) if do_cfg else x  # (2B, C, h, w) with CFG
                x_in = sampler.scale_model_input(x_in, t)
                if mask is not None and inpaint_unet:
                    x_in = np.concatenate([x_in.astype(np.float32, copy=False), extra], axis=1)
                if plan[i]:
                    noise, feature = self._unet(x_in.astype(np.float32, copy=False), t, conditioning,
                                                keep_feature=cache_interval > 1, calls=full)
                else:
                    noise = self._unet_shallow(x_in.astype(np.float32, copy=False), t, conditioning, feature, shallow)
                check_finite("unet" if plan[i] else "unet_shallow", noise, f" at UNet call {i + 1} of {len(timesteps)}")
                if do_cfg:
                    uncond, cond = np.split(noise, 2)
                    noise = uncond + np.float32(guidance_scale) * (cond - uncond)
                x = sampler.step(noise, t, x, rng)
                if mask is not None and not inpaint_unet:  # keep the known region: the image noised to the next step
                    known = init
                    if i < len(timesteps) - 1:
                        known = sampler.add_noise(init, inpaint_noise, np.repeat(timesteps[i + 1:i + 2], batch))
                    x = ((1 - blend) * known + blend * x).astype(np.float32, copy=False)
                if progress is not None:
                    progress(i + 1, len(timesteps))
        timings["denoise"] = time.perf_counter() - t0
        timings["unet_step"] = timings["denoise"] / max(len(timesteps), 1)
        unet_calls = {"full": sum(plan), "shallow": len(plan) - sum(plan)}

        # 5. decode
        t0 = time.perf_counter()
        images = to_pil(decoded_to_uint8(self._decode(x, tiled)))  # (B, H, W, 3)
        if crop is not None:  # the inpainted crop back into the image, at the image's size
            images = [paste_back(generated, source, mask_source, crop) for generated in images]
        timings["vae_decode"] = time.perf_counter() - t0

        # 6. package
        parameters = [
            GenerationParameters(
                prompt=prompts[i // num_images],
                negative_prompt=negatives[i // num_images],
                steps=steps,
                sampler=sampler.name,
                guidance_scale=guidance_scale,
                seed=seed,
                width=width,
                height=height,
                model=self.folder.name,
                backend=self.provider,
                precision=self.precision,
                strength=strength,
                task="txt2img" if pixels is None else "img2img" if mask is None else "inpaint",
                mask_padding=None if crop is None else int(padding_mask_crop),
                cache_interval=cache_interval,
                cache_schedule=cache_schedule,
            )
            for i in range(batch)
        ]
        return PipelineResult(images=images, parameters=parameters, latents=x, timings=timings, unet_calls=unet_calls)

    # --- steps -------------------------------------------------------------------------------------------
    def _image_size(self, image: Image.Image, height: int | None, width: int | None) -> tuple[int, int]:
        """height/width as given, else the image's size rounded down to the VAE's multiple (as diffusers)."""
        multiple = self.folder.size_multiple
        height = image.height // multiple * multiple if height is None else height
        width = image.width // multiple * multiple if width is None else width
        if height == 0 or width == 0:
            raise ValueError(f"the image is {image.width}x{image.height}: both sides must be at least {multiple} pixels for this model")
        return self._check_size(height, width)

    def _load_image(self, image, height: int | None, width: int | None,
                    crop: tuple[int, int, int, int] | None = None) -> tuple[NDArray[np.float32], int, int]:
        """The init image as diffusers' VaeImageProcessor.preprocess makes it: (1, 3, H, W) float32 in [-1, 1]
        (a `crop` box cut out and resized in "fill" mode), and its height and width."""
        image = as_pil(image, "image")  # a PIL image passes through as it is
        height, width = self._image_size(image, height, width)
        if crop is not None:
            image = resize_fill(image.crop(crop), width, height)
        elif image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        return to_pixels(image), height, width

    def _encode_image(self, pixels: NDArray[np.float32], rng: np.random.Generator) -> NDArray[np.float32]:
        """A sample of the VAE's posterior for the image, scaled as the UNet sees latents (diffusers' retrieve_latents)."""
        vae = self.folder.vae
        with self._network("vae_encoder") as encoder:
            out = encoder(**{next(iter(encoder.inputs)): np.ascontiguousarray(pixels)})
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

    def _negatives(self, negative_prompt, count: int) -> list[str]:
        if negative_prompt is None:
            return [""] * count
        negatives = [negative_prompt] * count if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != count:
            raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {count}: give one per prompt")
        return negatives

    def check_fits(self, height: int | None = None, width: int | None = None, num_images: int = 1,
                   guidance_scale: float | None = None) -> None:
        """Raise what a text-to-image call of this size would raise before allocating anything: ValueError for a
        size that is not a multiple of the model's, ImageTooLargeError past max_pixels or the memory available."""
        height, width = self._check_size(height, width)
        guidance = self.folder.defaults.guidance_scale if guidance_scale is None else _check_guidance(guidance_scale)
        self._check_memory(height, width, num_images, self._uses_cfg(guidance))

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(channels, height / f, width / f) of one image's initial latents (default: the native size), the shape
        a text-to-image call draws from its seed: `np.random.default_rng(seed).standard_normal((n, *shape))`."""
        height, width = self._check_size(height, width)
        f = self.folder.vae.scale_factor
        channels = self.folder.vae.latent_channels if self.folder.inpaint_unet else self.folder.unet.in_channels
        return (channels, height // f, width // f)

    def _check_size(self, height: int | None, width: int | None) -> tuple[int, int]:
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

    def _check_memory(self, height: int, width: int, images: int, do_cfg: bool, encodes: bool = False) -> bool:
        """Refuse a call that cannot fit (before anything is allocated); returns whether to decode in tiles."""
        if self.max_pixels is not None and height * width > self.max_pixels:
            side = _largest_side(height, width, self.folder.size_multiple, lambda h, w: h * w <= self.max_pixels)
            raise ImageTooLargeError(
                f"{width}x{height} is {height * width:,} pixels, over this pipeline's max_pixels={self.max_pixels:,}: "
                f"the largest size that fits at this aspect ratio is {side}"
            )
        texts = images * (2 if do_cfg else 1)
        tiled = bool(self.vae_tiling)

        # OpenVINO: a new size compiles a copy of each network (counted once: conservative), unless the UNet has it
        unet, f = self._models.get("unet"), self.folder.vae.scale_factor
        sample = (texts, self.folder.unet.in_channels, height // f, width // f)
        compiles = self.provider == "openvino" and not (unet is not None and unet.compiled_for("sample", sample))

        def need(h: int, w: int, tile: bool) -> int:
            return estimate(self.folder, h, w, texts, images, low_memory=self.low_memory,
                            vae_tile=self.vae_tile if tile else None, compiles=compiles, encodes=encodes).peak

        available = available_memory()
        peak = need(height, width, tiled)
        if peak > available and self.vae_tiling is None:  # automatic tiling: when the untiled decode does not fit
            tiled, peak = True, need(height, width, True)
        if peak > available:
            side = _largest_side(height, width, self.folder.size_multiple, lambda h, w: need(h, w, tiled) <= available)
            remedies = ([] if tiled else ["vae_tiling=True (--vae-tiling) decodes in tiles"]) + (
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

    def _run(self, name: str, feeds: dict[str, NDArray]) -> dict[str, NDArray]:
        """One call of a network (opened for it with low_memory); integer inputs cast to the graph's dtype
        (input_ids are int32 in diffusers' legacy exports, int64 in optimum's and ours)."""
        with self._network(name) as network:
            feeds = {k: v.astype(network.inputs[k].dtype) if v.dtype.kind in "iu" else v for k, v in feeds.items()}
            return network(**feeds)

    @contextmanager
    def _unet_calls(self, conditioning: dict[str, NDArray], shallow: bool = False):
        """One generation's calls of the UNet (and DeepCache's shallow UNet when `shallow`), resident for the whole
        loop (also with low_memory), the conditioning fed to each call, or bound once on the device (io_binding):
        yields the UNet's (network, run) and the shallow UNet's (or None), for `_unet` and `_unet_shallow`."""
        with ExitStack() as stack:
            runs = [stack.enter_context(self._conditioned(name, conditioning)) if use else None
                    for name, use in (("unet", True), ("unet_shallow", shallow))]
            yield tuple(runs)

    @contextmanager
    def _conditioned(self, name: str, conditioning: dict[str, NDArray]):
        """(network, run(**feeds)) for network `name` with the conditioning it takes (the shallow UNet takes only
        those its layers use)."""
        with self._network(name) as network:
            constants = conditioning if name == "unet" else {k: v for k, v in conditioning.items() if k in network.inputs}
            with constant_feeds(network, constants) as run:
                yield network, run

    def _unet(self, sample: NDArray[np.float32], t, conditioning: dict[str, NDArray], keep_feature: bool = False,
              calls=None):
        """One UNet call; `conditioning` is the family's dict of inputs besides sample and timestep (`calls`: the
        generation's, from `_unet_calls`). With keep_feature (DeepCache), returns (output, the deep feature the
        shallow UNet reuses: on the device with io_binding)."""
        with (nullcontext(calls) if calls else self._conditioned("unet", conditioning)) as (unet, run):
            out = run(sample=sample, timestep=self._timestep(unet, t, sample))
            return to_host(next(iter(out.values()))), (out[self.folder.deepcache["feature"]] if keep_feature else None)

    def _unet_shallow(self, sample: NDArray[np.float32], t, conditioning: dict[str, NDArray], feature,
                      calls=None) -> NDArray[np.float32]:
        """DeepCache's shallow UNet on the cached feature (a NumPy array, or the full UNet's device buffer)."""
        with (nullcontext(calls) if calls else self._conditioned("unet_shallow", conditioning)) as (shallow, run):
            out = run(sample=sample, timestep=self._timestep(shallow, t, sample), **{self.folder.deepcache["feature"]: feature})
            return to_host(next(iter(out.values())))

    @staticmethod
    def _timestep(unet, t, sample: NDArray) -> NDArray:
        info = unet.inputs["timestep"]  # float (B,) in ours, int64 in optimum's, (1,) in legacy ones
        shape = () if info.rank == 0 else ((info.shape[0] if isinstance(info.shape[0], int) else sample.shape[0]),)
        return model_timestep(t, info.dtype, shape)

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

    def _decode(self, latents: NDArray[np.float32], tiled: bool = False) -> NDArray[np.float32]:
        vae = self.folder.vae
        z = vae.from_unet(latents)
        with self._network("vae_decoder") as decoder:
            name = next(iter(decoder.inputs))  # "latent_sample"

            def decode(tile: NDArray[np.float32]) -> NDArray[np.float32]:
                return next(iter(decoder(**{name: np.ascontiguousarray(tile)}).values()))  # (B, 3, h*f, w*f)

            if tiled:  # one image at a time: the decode's memory is one tile's (memory.estimate counts it so)
                return np.concatenate([decode_tiled(decode, z[i:i + 1], vae.scale_factor, self.vae_tile) for i in range(len(z))])
            return decode(z)


def _check_guidance(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (values <= 1 turn guidance off), got {value!r}")
    return float(value)


def _check_strength(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0 < value <= 1:
        raise ValueError(f"strength must be a number in (0, 1] (the fraction of the steps that run on the image), got {value!r}")
    return float(value)


def _img2img_timesteps(sampler, steps: int, strength: float) -> NDArray:
    """diffusers' img2img get_timesteps: the last `int(steps * strength)` steps, and the scheduler told where they start."""
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    begin = t_start * sampler.order
    if hasattr(sampler, "set_begin_index"):
        sampler.set_begin_index(begin)
    return sampler.timesteps[begin:]


def _largest_side(height: int, width: int, multiple: int, fits: Callable[[int, int], bool]) -> str:
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


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")


__all__ = ["ImageTooLargeError", "Pipeline", "PipelineResult", "available_schedulers"]
