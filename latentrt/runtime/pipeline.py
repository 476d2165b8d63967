"""Text-to-image: ONNX Runtime or OpenVINO for the three networks, pure NumPy between them.

A call reads as numbered steps: check inputs, encode prompt, prepare latents, denoise, decode,
package. Randomness comes only from an explicit `np.random.Generator`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from latentrt.runtime.backend import Backend, resolve_backend
from latentrt.runtime.folder import ModelFolder
from latentrt.runtime.images import GenerationParameters, decoded_to_uint8, to_pil
from latentrt.runtime.schedulers import available_schedulers, create_scheduler
from latentrt.runtime.schedulers.timesteps import model_timestep
from latentrt.runtime.tokenizer import ClipTokenizer

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (UNet calls done, UNet calls in all)


@dataclass
class PipelineResult:
    images: list[Image.Image]
    parameters: list[GenerationParameters]  # one per image
    latents: NDArray[np.float32]  # final latents, (B, C, H/f, W/f)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def arrays(self) -> NDArray[np.uint8]:
        return np.stack([np.asarray(image) for image in self.images])  # (B, H, W, 3)


class Pipeline:
    """A model folder's three networks on one backend.

    provider: "auto" (OpenVINO when the openvino extra is installed, else ONNX Runtime on CPU), "cpu",
    "openvino", "cuda", ...; precision: "auto" (bf16 under OpenVINO on a CPU with bf16, else fp32), "fp32"
    (parity with PyTorch), "bf16" (see `latentrt.runtime.backend`). With `cache_dir` (or $LATENTRT_CACHE)
    OpenVINO's compiled models are cached on disk there (opt-in: see `backend.compiled_model_cache`).
    """

    def __init__(self, folder: ModelFolder, provider: str = "auto", threads: int | None = None, *,
                 precision: str = "auto", cache_dir: str | Path | None = None, use_cache: bool = True):
        self.backend: Backend = resolve_backend(provider, precision, threads, cache_dir, use_cache)
        self.folder = folder
        self.provider = self.backend.provider
        self.precision = self.backend.label(folder)  # e.g. "bf16", "fp32", "int8+fp32"
        self.tokenizer = ClipTokenizer.from_folder(folder.path / "tokenizer")
        self.text_encoder = self.backend.open(folder.components["text_encoder"])
        self.unet = self.backend.open(folder.components["unet"])
        self.vae_decoder = self.backend.open(folder.components["vae_decoder"])

    @classmethod
    def from_folder(cls, path: str | Path, provider: str = "auto", threads: int | None = None, *,
                    precision: str = "auto", cache_dir: str | Path | None = None, use_cache: bool = True) -> "Pipeline":
        return cls(ModelFolder.open(path), provider=provider, threads=threads, precision=precision,
                   cache_dir=cache_dir, use_cache=use_cache)

    @classmethod
    def default(cls, provider: str = "auto", threads: int | None = None, **options) -> "Pipeline":
        """The model shipped inside the package."""
        from latentrt.models import default_model_path

        return cls.from_folder(default_model_path(), provider=provider, threads=threads, **options)

    def compile(self, height: int | None = None, width: int | None = None, batch: int = 1,
                guidance_scale: float | None = None) -> None:
        """Compile every network for one call's shapes now (OpenVINO compiles per shape; ONNX Runtime needs nothing).

        `batch` is the number of prompts of that call (with num_images=1). A server or benchmark calls it after
        loading, so that the first generation at this size does not pay for compilation.
        """
        if not hasattr(self.unet, "compile"):  # ONNX Runtime sessions take any shape as they are
            return
        height, width = self._check_size(height, width)
        guidance_scale = self.folder.defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
        texts = batch * (2 if guidance_scale > 1.0 else 1)
        length = self.tokenizer.max_length
        factor = self.folder.vae.scale_factor
        latent = (self.folder.unet.in_channels, height // factor, width // factor)
        self.text_encoder.compile({"input_ids": (texts, length)})
        timestep = self.unet.inputs["timestep"]
        self.unet.compile({
            "sample": (texts, *latent),
            "timestep": () if timestep.rank == 0 else ((timestep.shape[0] if isinstance(timestep.shape[0], int) else texts),),
            "encoder_hidden_states": (texts, length, self.folder.unet.cross_attention_dim),
        })
        name = next(iter(self.vae_decoder.inputs))
        self.vae_decoder.compile({name: (batch, self.folder.vae.latent_channels, height // factor, width // factor)})

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
    ) -> PipelineResult:
        timings: dict[str, float] = {}
        # 1. check inputs
        defaults = self.folder.defaults
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r:.80}")
        negatives = self._negatives(negative_prompt, len(prompts))
        steps = defaults.steps if steps is None else steps
        guidance_scale = defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
        height, width = self._check_size(height, width)
        _check_positive_int("steps", steps)
        _check_positive_int("num_images", num_images)
        sampler = create_scheduler(scheduler if scheduler is not None else defaults.scheduler, self.folder.scheduler_config)
        if seed is None and rng is None and latents is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        rng = rng if rng is not None else np.random.default_rng(seed)
        batch = len(prompts) * num_images
        do_cfg = guidance_scale > 1.0  # the unconditional half is skipped otherwise, like diffusers

        # 2. encode prompt: one text-encoder call for both halves; (2B, L, D) with CFG, else (B, L, D)
        t0 = time.perf_counter()
        texts = (negatives + prompts) if do_cfg else prompts
        embeddings = self._encode(texts)
        embeddings = np.repeat(embeddings, num_images, axis=0)  # prompt i's images stay together
        timings["text_encoder"] = time.perf_counter() - t0

        # 3. prepare latents
        sampler.set_timesteps(steps)
        shape = (batch, self.folder.unet.in_channels, height // self.folder.vae.scale_factor, width // self.folder.vae.scale_factor)
        if latents is None:
            latents = rng.standard_normal(shape, dtype=np.float32)
        else:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.shape != shape:
                raise ValueError(f"latents must have shape {shape} for this size and batch, got {latents.shape}")
        x = latents * np.float32(sampler.init_noise_sigma)  # (B, C, H/f, W/f)

        # 4. denoise
        t0 = time.perf_counter()
        timesteps = sampler.timesteps
        for i, t in enumerate(timesteps):
            x_in = np.concatenate([x, x]) if do_cfg else x  # (2B, C, h, w) with CFG
            x_in = sampler.scale_model_input(x_in, t)
            noise = self._unet(x_in.astype(np.float32, copy=False), t, embeddings)
            if do_cfg:
                uncond, cond = np.split(noise, 2)
                noise = uncond + np.float32(guidance_scale) * (cond - uncond)
            x = sampler.step(noise, t, x, rng)
            if progress is not None:
                progress(i + 1, len(timesteps))
        timings["denoise"] = time.perf_counter() - t0
        timings["unet_step"] = timings["denoise"] / max(len(timesteps), 1)

        # 5. decode
        t0 = time.perf_counter()
        images = decoded_to_uint8(self._decode(x))  # (B, H, W, 3)
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
            )
            for i in range(batch)
        ]
        return PipelineResult(images=to_pil(images), parameters=parameters, latents=x, timings=timings)

    # --- steps -------------------------------------------------------------------------------------------
    def _negatives(self, negative_prompt, count: int) -> list[str]:
        if negative_prompt is None:
            return [""] * count
        negatives = [negative_prompt] * count if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != count:
            raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {count}: give one per prompt")
        return negatives

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

    def _encode(self, texts: list[str]) -> NDArray[np.float32]:
        ids = self.tokenizer.encode(texts)  # (N, L) int64
        name = "input_ids"
        dtype = self.text_encoder.inputs[name].dtype  # int32 in diffusers' legacy exports, int64 in optimum's
        out = self.text_encoder(**{name: ids.astype(dtype)})
        hidden = out.get("last_hidden_state", next(iter(out.values())))
        return hidden.astype(np.float32, copy=False)  # (N, L, D)

    def _unet(self, sample: NDArray[np.float32], t, embeddings: NDArray[np.float32]) -> NDArray[np.float32]:
        info = self.unet.inputs["timestep"]  # float (B,) in ours, int64 in optimum's, (1,) in legacy ones
        shape = () if info.rank == 0 else ((info.shape[0] if isinstance(info.shape[0], int) else sample.shape[0]),)
        timestep = model_timestep(t, info.dtype, shape)
        out = self.unet(sample=sample, timestep=timestep, encoder_hidden_states=embeddings)
        return next(iter(out.values()))

    def _decode(self, latents: NDArray[np.float32]) -> NDArray[np.float32]:
        vae = self.folder.vae
        z = latents / np.float32(vae.scaling_factor)
        if vae.shift_factor is not None:
            z = z + np.float32(vae.shift_factor)
        name = next(iter(self.vae_decoder.inputs))  # "latent_sample"
        out = self.vae_decoder(**{name: z.astype(np.float32, copy=False)})
        return next(iter(out.values()))  # (B, 3, H, W)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")


__all__ = ["Pipeline", "PipelineResult", "available_schedulers"]
