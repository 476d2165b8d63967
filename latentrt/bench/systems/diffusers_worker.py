"""The PyTorch reference: diffusers' StableDiffusionPipeline (or the folder's SDXL pipeline) on CPU, fp32
(`diffusers`) or under bf16 autocast; or, as the config asks, fp16 on a CUDA GPU (the GPU benchmark's reference).

`diffusers-bf16` is what a PyTorch user on a CPU with bf16 instructions picks instead: the same pipeline, fp32
weights, with every stage (text encoder, UNet, VAE decode, the whole generation) run under
`torch.autocast("cpu", dtype=torch.bfloat16)`.

The config's `device` and `dtype` (benchmarks/gpu/bench.py: "cuda", "float16") replace the CPU and fp32: what a
PyTorch user on an NVIDIA GPU runs, the pipeline loaded with torch_dtype=float16 and moved to the GPU, diffusers'
default attention processor (AttnProcessor2_0: torch's scaled_dot_product_attention). On CUDA its stages and
generations are timed between torch.cuda.synchronize() calls (`synchronize`).

SDXL (cfg["family"] "sdxl", the harness reads it from the folder: protocol.model_family): StableDiffusionXLPipeline,
or StableDiffusionXLImg2ImgPipeline / StableDiffusionXLInpaintPipeline for the image tasks, loaded with
add_watermarker=False (the invisible watermark would change the image); `text_encoder` times its encode_prompt (both
text encoders, pooled embeddings), the UNet calls carry added_cond_kwargs (text_embeds, time_ids), `vae_decode` the
VAE decode (its force_upcast only acts in fp16: these weights are fp32). Guidance <= 1 (SDXL-Turbo's 0) runs no CFG
(UNet batch 1), for both families.

The image tasks (cfg["task"]): `img2img` loads StableDiffusionImg2ImgPipeline, `inpaint` StableDiffusionInpaintPipeline
(4-channel UNet path: after every step the known region is the image's latents noised to the next timestep) from
the same folder, called with the harness's init image (and mask), strength, prompt, steps, guidance and scheduler.
diffusers' randn_tensor (in the VAE's posterior sample and in the pipeline module's noise) is replaced by draws from
`numpy.random.default_rng(seed)` in call order, the draws latentrt's pipeline makes with the same seed: the images
are comparable (tests/test_img2img.py and test_inpaint.py check that parity). `vae_encode` times `vae.encode`
(diffusers' inpainting encodes the image and the masked image: two calls, the median quoted).

    diffusers_worker.py CONFIG.json OUT.json               one benchmark run (protocol.run)
    diffusers_worker.py --first-image CONFIG.json OUT.png  what a user's script does for one image: import,
        the folder's pipeline class' from_pretrained, one generation with the config's settings and latents, the PNG
        saved; the harness times this process from its start to its exit (time to first image)
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # holds the latentrt package: importable where not installed (a peer's venv)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latentrt.bench.systems.protocol import System, diffusers_scheduler, run, to_uint8, versions  # noqa: E402


# family -> task -> (diffusers pipeline class, the module under diffusers.pipelines whose randn_tensor draws its noise)
PIPELINES = {
    "sd": {
        "txt2img": ("StableDiffusionPipeline", "stable_diffusion.pipeline_stable_diffusion"),
        "img2img": ("StableDiffusionImg2ImgPipeline", "stable_diffusion.pipeline_stable_diffusion_img2img"),
        "inpaint": ("StableDiffusionInpaintPipeline", "stable_diffusion.pipeline_stable_diffusion_inpaint"),
        "controlnet": ("StableDiffusionControlNetPipeline", "controlnet.pipeline_controlnet"),
    },
    "sdxl": {
        "txt2img": ("StableDiffusionXLPipeline", "stable_diffusion_xl.pipeline_stable_diffusion_xl"),
        "img2img": ("StableDiffusionXLImg2ImgPipeline", "stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img"),
        "inpaint": ("StableDiffusionXLInpaintPipeline", "stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint"),
    },
}
# from_pretrained's extra arguments per family: SD's safety checker off, SDXL's invisible watermark off
LOAD_OPTIONS = {"sd": {"safety_checker": None, "requires_safety_checker": False}, "sdxl": {"add_watermarker": False}}


class DiffusersSystem(System):
    name = "diffusers"
    autocast = None  # a torch dtype name: every stage runs under torch.autocast("cpu", dtype=...)
    device = "cpu"  # where the pipeline runs (cfg["device"] replaces it)
    dtype = "float32"  # the weights' dtype, torch_dtype (cfg["dtype"] replaces it)

    def __init__(self, cfg):
        super().__init__(cfg)
        import importlib

        import diffusers
        import numpy as np
        import torch

        torch.set_num_threads(cfg["threads"])
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set
            pass
        self.task = cfg.get("task", "txt2img")
        self.family = cfg.get("family", "sd")
        self.device, self.dtype = cfg.get("device", self.device), cfg.get("dtype", self.dtype)
        cls_name, module = PIPELINES[self.family][self.task]
        self.np, self.torch, self.cls = np, torch, getattr(diffusers, cls_name)
        self.modules = [importlib.import_module("diffusers.models.autoencoders.vae"),
                        importlib.import_module(f"diffusers.pipelines.{module}")]

    def load(self) -> None:
        options = dict(LOAD_OPTIONS[self.family])
        if self.task == "controlnet":  # --task controlnet: the ControlNet beside the folder's networks
            from diffusers import ControlNetModel

            options["controlnet"] = ControlNetModel.from_pretrained(self.cfg["controlnet_dir"],
                                                                    torch_dtype=getattr(self.torch, self.dtype))
        self.pipe = self.cls.from_pretrained(self.cfg["source"], torch_dtype=getattr(self.torch, self.dtype),
                                             **options).to(self.device)
        if self.cfg.get("vae", "full") == "tiny":  # the tiny autoencoder, as diffusers' docs swap it in
            from diffusers import AutoencoderTiny

            self.pipe.vae = AutoencoderTiny.from_pretrained(self.cfg["tiny_vae"], torch_dtype=getattr(self.torch, self.dtype)).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)

    def synchronize(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def prepare(self) -> None:
        torch, cfg = self.torch, self.cfg
        self.pipe.scheduler = diffusers_scheduler(cfg["scheduler"], self.pipe.scheduler.config)
        # (B, 4, h, w) in the weights' dtype: diffusers moves given latents to the device but keeps their dtype
        self.latents = torch.from_numpy(self.np.load(cfg["latents"])).to(self.device, getattr(torch, self.dtype))
        self.cfg_on = cfg["guidance"] > 1.0
        scheduler = self.pipe.scheduler
        scheduler.set_timesteps(cfg["steps"])
        self.t = scheduler.timesteps[0]
        x = self.latents * scheduler.init_noise_sigma
        x = torch.cat([x, x]) if self.cfg_on else x  # (2B, 4, h, w)
        self.x_in = scheduler.scale_model_input(x, self.t)
        self.embeddings, self.added_cond = self._encode()
        if self.task == "controlnet":  # the control map as the pipeline's prepare_image makes it: [0, 1], both halves
            from PIL import Image

            self.control = Image.open(cfg["control_image"]).convert("RGB")
            pixels = torch.from_numpy(self.np.asarray(self.control, dtype=self.np.float32) / 255.0).permute(2, 0, 1)[None]
            self.control_cond = pixels.repeat(self.x_in.shape[0], 1, 1, 1).to(self.device, getattr(torch, self.dtype))
        elif self.task != "txt2img":
            from PIL import Image

            self.image = Image.open(cfg["image"]).convert("RGB")
            self.mask = Image.open(cfg["mask"]).convert("L") if self.task == "inpaint" else None
            self.pixels = self.pipe.image_processor.preprocess(self.image, height=cfg["height"], width=cfg["width"]).to(
                self.device, getattr(torch, self.dtype))
            self.rng = self.np.random.default_rng(cfg["seed"])
            for module in self.modules:  # diffusers' noise drawn from NumPy, as latentrt draws it
                module.randn_tensor = self._numpy_randn

    def _numpy_randn(self, shape, generator=None, device=None, dtype=None, layout=None):
        torch = self.torch
        noise = torch.from_numpy(self.rng.standard_normal(tuple(shape), dtype=self.np.float32))
        return noise.to(device or self.device, dtype or torch.float32)

    def _mode(self) -> contextlib.ExitStack:
        """The context of every stage: inference mode, and the variant's autocast."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.torch.inference_mode())
        if self.autocast:
            stack.enter_context(self.torch.autocast("cpu", dtype=getattr(self.torch, self.autocast)))
        return stack

    def _encode(self):
        """(encoder_hidden_states, added_cond_kwargs or None) of the UNet's batch, as the pipeline builds them."""
        torch, cfg, batch = self.torch, self.cfg, self.latents.shape[0]
        with self._mode():
            if self.family == "sd":
                cond, uncond = self.pipe.encode_prompt(cfg["prompt"], self.device, batch, self.cfg_on, cfg["negative"])
                return (torch.cat([uncond, cond]) if self.cfg_on else cond), None
            cond, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
                cfg["prompt"], device=self.device, num_images_per_prompt=batch, do_classifier_free_guidance=self.cfg_on,
                negative_prompt=cfg["negative"])
        h, w = cfg["height"], cfg["width"]
        # the base model's time ids (original size, crop, target size); the refiner's: an aesthetic score last
        ids = [h, w, 0, 0, 6.0] if self.pipe.config.get("requires_aesthetics_score") else [h, w, 0, 0, h, w]
        time_ids = torch.tensor([ids] * cond.shape[0], dtype=cond.dtype, device=cond.device)
        if self.cfg_on:
            cond, pooled, time_ids = torch.cat([uncond, cond]), torch.cat([uncond_pooled, pooled]), torch.cat([time_ids, time_ids])
        return cond, {"text_embeds": pooled, "time_ids": time_ids}

    def text_encoder(self) -> None:
        self._encode()  # tokenize + text encoder(s) (once per half with CFG, as the pipeline does)

    def unet_step(self) -> None:
        with self._mode():
            self.pipe.unet(self.x_in, self.t, encoder_hidden_states=self.embeddings, return_dict=False,
                           **({"added_cond_kwargs": self.added_cond} if self.added_cond is not None else {}))

    def vae_decode(self) -> None:
        with self._mode():
            self.pipe.vae.decode(self.latents / self.pipe.vae.config.scaling_factor, return_dict=False)

    def vae_encode(self) -> None:
        with self._mode():
            self.pipe.vae.encode(self.pixels, return_dict=False)  # no posterior sample drawn: the NumPy draws stay in order

    def controlnet_step(self) -> None:
        with self._mode():
            self.pipe.controlnet(self.x_in, self.t, encoder_hidden_states=self.embeddings, controlnet_cond=self.control_cond,
                                 conditioning_scale=1.0, return_dict=False)

    def end_to_end(self):
        cfg = self.cfg
        if self.task in ("txt2img", "controlnet"):
            _, _, h, w = self.latents.shape
            inputs = {"latents": self.latents.clone(), "height": h * self.pipe.vae_scale_factor,
                      "width": w * self.pipe.vae_scale_factor}
            if self.task == "controlnet":
                inputs.update(image=self.control, controlnet_conditioning_scale=1.0)
        else:
            self.rng = self.np.random.default_rng(cfg["seed"])  # the draws start afresh, as latentrt's seed does
            inputs = {"image": self.image, "strength": cfg["strength"],
                      **({"mask_image": self.mask, "height": cfg["height"], "width": cfg["width"]} if self.mask is not None else {})}
        with self._mode():
            out = self.pipe(
                cfg["prompt"], negative_prompt=cfg["negative"], num_inference_steps=cfg["steps"],
                guidance_scale=cfg["guidance"], output_type="np", **inputs,
            )
        return to_uint8(out.images)

    def stages(self):
        p = self.pipe
        return [(p, "encode_prompt", "text_encoder"), (p.unet, "forward", "unet_step"), (p.vae, "decode", "vae_decode"),
                *([(p.vae, "encode", "vae_encode")] if self.task in ("img2img", "inpaint") else []),
                *([(p.controlnet, "forward", "controlnet_step")] if self.task == "controlnet" else [])]

    def info(self):
        torch = self.torch
        return {
            "versions": versions("torch", "diffusers", "transformers", "numpy"),
            "precision": f"{self.autocast} autocast (fp32 weights)" if self.autocast else PRECISIONS[self.dtype],
            "device": self.device,
            "attention": type(next(iter(self.pipe.unet.attn_processors.values()))).__name__,
            **(self._cuda_info() if self.device == "cuda" else {}),
            "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "torch_threads": self.torch.get_num_threads(),
            "torch_interop_threads": self.torch.get_num_interop_threads(),
            "mkldnn": self.torch.backends.mkldnn.is_available(),
            "scheduler": type(self.pipe.scheduler).__name__,
            "vae": type(self.pipe.vae).__name__,
            "task": self.task,
            "family": self.family,
            "pipeline": type(self.pipe).__name__,
            "noise": "NumPy (randn_tensor replaced, seeded)" if self.task in ("img2img", "inpaint") else "the harness's latents",
        }

    def _cuda_info(self) -> dict:
        torch = self.torch
        return {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                "torch_max_memory_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
                "torch_max_memory_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}


PRECISIONS = {"float32": "fp32", "float16": "fp16"}


class DiffusersBf16System(DiffusersSystem):
    name = "diffusers-bf16"
    autocast = "bfloat16"


VARIANTS = {cls.name: cls for cls in (DiffusersSystem, DiffusersBf16System)}


def first_image(cfg: dict, png: Path, variants: dict | None = None) -> None:
    """One image, as a script would make it: load the pipeline, generate with the config's settings, save the PNG.
    `variants`: system name -> class (the diffusers variants; optimum-intel's worker gives its own)."""
    system = (variants or VARIANTS)[cfg.get("system", "diffusers")](cfg)  # imports torch and diffusers, sets the threads
    system.load()
    pipe, torch = system.pipe, system.torch
    pipe.scheduler = diffusers_scheduler(cfg["scheduler"], pipe.scheduler.config)
    # the seed's latents, as every system gets them
    latents = torch.from_numpy(system.np.load(cfg["latents"])).to(system.device, getattr(torch, system.dtype))
    with system._mode():
        image = pipe(
            cfg["prompt"], negative_prompt=cfg["negative"], num_inference_steps=cfg["steps"],
            guidance_scale=cfg["guidance"], latents=latents, height=cfg["height"], width=cfg["width"],
        ).images[0]
    image.save(png)


def first_image_main(script: str, variants: dict | None = None) -> None:
    """`script --first-image CONFIG.json OUT.png`: first_image with the config and PNG the command line names."""
    import json

    if len(sys.argv) != 4:
        raise SystemExit(f"usage: {Path(script).name} --first-image CONFIG.json OUT.png")
    first_image(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]), variants)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--first-image"]:
        first_image_main(sys.argv[0])
    else:
        run(lambda cfg: VARIANTS[cfg.get("system", "diffusers")](cfg))
