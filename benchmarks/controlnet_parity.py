"""ControlNet parity with diffusers: tiny SD 1.x, SD 2.x and SDXL configs with random ControlNets, same noise.

Each row runs one generation through latentrt (a folder exported with `--controlnet`, tests/controlnet_models.py:
every ControlNet parameter random, the zero convolutions included) and through diffusers' own ControlNet pipeline
on the same source folders: StableDiffusion(XL)ControlNetPipeline, its Img2Img and Inpaint variants, diffusers'
MultiControlNetModel for two ControlNets. diffusers' randn_tensor draws from NumPy in latentrt's order (the VAE's
posterior samples, the starting noise, a stochastic scheduler's step noise), so the two runs share every random
number. Reported: the uint8 PSNR of latentrt's images against diffusers' (>= 40 dB is the bar), and, as a control
that the comparison is sensitive, the PSNR of latentrt's image made WITHOUT the ControlNet against diffusers'
ControlNet image (low: the ControlNet changes the image that much).

    python -m benchmarks.controlnet_parity --work <scratch dir> --out benchmarks/results/controlnet_parity.md

tests/test_controlnet_runtime.py runs a subset of these rows (`CASES`) with the same code.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

PROMPT, NEGATIVE = "a blue circle at the top left on a white background", "blurry"
SIZE = 64  # output side: the tiny models' native size (latents 16x16)
PIPELINES = {  # (family kind, task) -> diffusers pipeline class and its module
    ("sd", "txt2img"): ("StableDiffusionControlNetPipeline", "pipeline_controlnet"),
    ("sd", "img2img"): ("StableDiffusionControlNetImg2ImgPipeline", "pipeline_controlnet_img2img"),
    ("sd", "inpaint"): ("StableDiffusionControlNetInpaintPipeline", "pipeline_controlnet_inpaint"),
    ("sdxl", "txt2img"): ("StableDiffusionXLControlNetPipeline", "pipeline_controlnet_sd_xl"),
    ("sdxl", "img2img"): ("StableDiffusionXLControlNetImg2ImgPipeline", "pipeline_controlnet_sd_xl_img2img"),
    ("sdxl", "inpaint"): ("StableDiffusionXLControlNetInpaintPipeline", "pipeline_controlnet_inpaint_sd_xl"),
}


@dataclass(frozen=True)
class Case:
    """One parity row: a family's folder, a task, which ControlNets and how they are applied."""

    family: str  # "sd1", "sd2", "sdxl"
    task: str = "txt2img"  # "img2img", "inpaint" (the folder's 4-channel UNet), "inpaint9" (a 9-channel inpainting UNet)
    names: tuple[str, ...] = ("canny",)
    scale: float | tuple[float, ...] = 1.0
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False
    scheduler: str = "ddim"
    steps: int = 6
    guidance: float = 7.5
    provider: str = "cpu"  # latentrt's provider: "cpu" (ONNX Runtime) or "openvino" (fp32)
    control_size: tuple[int, int] = (SIZE, SIZE)  # (width, height) of the control images (resized to SIZE)
    strength: float = 0.6  # img2img and inpainting
    note: str = field(default="", compare=False)

    @property
    def inpaint_unet(self) -> bool:
        return self.task == "inpaint9"

    def label(self) -> str:
        scale = "/".join(f"{s:g}" for s in self.scale) if isinstance(self.scale, tuple) else f"{self.scale:g}"
        parts = [f"{'+'.join(self.names)} x{scale}"]
        if (self.start, self.end) != (0.0, 1.0):
            parts.append(f"start/end {self.start:g}/{self.end:g}")
        if self.guess_mode:
            parts.append("guess mode")
        if self.control_size != (SIZE, SIZE):
            parts.append(f"control image {self.control_size[0]}x{self.control_size[1]} resized")
        if self.guidance <= 1:
            parts.append(f"guidance {self.guidance:g}")
        return ", ".join(parts)


# The committed table (every scheduler appears in it); tests/test_controlnet_runtime.py runs four rows like these.
CASES = [
    Case("sd1", scale=1.0, scheduler="ddim"),
    Case("sd1", scale=0.5, scheduler="euler"),
    Case("sd1", names=("canny", "depth"), scale=(0.8, 0.5), scheduler="dpm++2m"),
    Case("sd1", start=0.2, end=0.8, scheduler="euler-a"),
    Case("sd1", names=("canny", "depth"), scale=(1.0, 0.7), start=0.2, end=0.8, scheduler="heun", steps=4),
    Case("sd1", guess_mode=True, scheduler="ddim"),
    Case("sd1", names=("canny", "depth"), scale=(1.0, 0.5), guess_mode=True, scheduler="unipc"),
    Case("sd1", scale=1.0, scheduler="pndm", control_size=(96, 80)),
    Case("sd1", scale=1.0, scheduler="euler", guidance=1.0),
    Case("sd1", scale=0.8, scheduler="ddpm"),
    Case("sd1", scale=0.8, scheduler="lms"),
    Case("sd1", scale=0.8, scheduler="dpm++2m-karras"),
    Case("sd1", scale=0.8, scheduler="lcm", steps=4),
    Case("sd1", task="img2img", scale=1.0, scheduler="ddim"),
    Case("sd1", task="img2img", names=("canny", "depth"), scale=(0.8, 0.5), start=0.2, end=0.8, scheduler="euler-a"),
    Case("sd1", task="inpaint", scale=1.0, scheduler="ddim", strength=1.0),
    Case("sd1", task="inpaint", scale=0.5, scheduler="dpm++2m-sde-karras", strength=0.75),
    Case("sd1", task="inpaint9", scale=1.0, scheduler="ddim", strength=1.0),
    Case("sd1", task="inpaint9", names=("canny",), scale=0.5, start=0.2, end=0.8, scheduler="euler", strength=0.75),
    Case("sd2", scale=1.0, scheduler="ddim"),
    Case("sd2", scale=0.5, scheduler="dpm++2m"),
    Case("sd2", names=("canny", "depth"), scale=(0.8, 0.5), scheduler="euler"),
    Case("sd2", start=0.2, end=0.8, scheduler="ddim"),
    Case("sd2", guess_mode=True, scheduler="euler"),
    Case("sd2", task="img2img", scale=1.0, scheduler="dpm++2m"),
    Case("sd2", task="inpaint", scale=1.0, scheduler="ddim", strength=1.0),
    Case("sdxl", scale=1.0, scheduler="euler"),
    Case("sdxl", scale=0.5, scheduler="ddim"),
    Case("sdxl", names=("canny", "depth"), scale=(0.8, 0.5), scheduler="euler"),
    Case("sdxl", start=0.2, end=0.8, scheduler="dpm++2m"),
    Case("sdxl", guess_mode=True, scheduler="euler"),
    Case("sdxl", task="img2img", scale=1.0, scheduler="euler", strength=0.6),
    Case("sdxl", task="inpaint", scale=1.0, scheduler="ddim", strength=0.75),
    Case("sd1", scale=1.0, scheduler="ddim", provider="openvino"),
    Case("sd1", names=("canny", "depth"), scale=(0.8, 0.5), start=0.2, end=0.8, scheduler="euler", provider="openvino"),
    Case("sdxl", scale=0.5, scheduler="euler", provider="openvino"),
]


# --- inputs ------------------------------------------------------------------------------------------------------
def control_images(names: tuple[str, ...], size: tuple[int, int]) -> list[Image.Image]:
    """Control images of `size` (width, height): a ring's edges (white on black) and a left-to-right ramp with a disc
    (a depth-like map), alternating over the ControlNets."""
    width, height = size
    y, x = np.mgrid[:height, :width]
    radius = np.hypot(x - width / 2.5, y - height / 2.2)
    ring = np.where(np.abs(radius - min(width, height) / 4) < 1.5, 255, 0).astype(np.uint8)
    depth = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    depth[radius < min(width, height) / 5] = 230
    maps = [np.stack([ring] * 3, -1), np.stack([depth] * 3, -1)]
    return [Image.fromarray(maps[i % 2]) for i in range(len(names))]


def init_image(size: int = SIZE) -> Image.Image:
    """A red disc on white (img2img's and inpainting's source)."""
    y, x = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 255, np.uint8)
    image[(y - size / 3) ** 2 + (x - size / 3) ** 2 < (size / 4) ** 2] = (220, 30, 30)
    return Image.fromarray(image)


def mask_image(size: int = SIZE) -> Image.Image:
    """White (repaint) in a square off the latent grid's cell edges."""
    mask = np.zeros((size, size), np.uint8)
    mask[24:56, 27:51] = 255
    return Image.fromarray(mask)


# --- the two runs ------------------------------------------------------------------------------------------------
def latentrt_images(pipe, case: Case, control: bool = True, seed: int = 7) -> np.ndarray:
    """latentrt's uint8 images for `case` (control=False: the same call without the ControlNets)."""
    options = {"negative_prompt": NEGATIVE, "steps": case.steps, "guidance_scale": case.guidance, "scheduler": case.scheduler,
                   "seed": seed, "height": SIZE, "width": SIZE}
    if case.task != "txt2img":
        options.update(image=init_image(), strength=case.strength)
    if case.task.startswith("inpaint"):
        options["mask_image"] = mask_image()
    if control:
        images = control_images(case.names, case.control_size)
        options.update(control_image=images if len(case.names) > 1 else images[0], controlnet=list(case.names),
                       controlnet_conditioning_scale=list(case.scale) if isinstance(case.scale, tuple) else case.scale,
                       control_guidance_start=case.start, control_guidance_end=case.end, guess_mode=case.guess_mode)
    return pipe(PROMPT, **options).arrays


def diffusers_images(source, case: Case, monkeypatch, seed: int = 7) -> np.ndarray:
    """diffusers' uint8 images for `case` from the source folders, its randn_tensor drawing from NumPy."""
    import diffusers
    import torch
    from diffusers import ControlNetModel
    from test_schedulers import NOISE_MODULES, REFERENCE

    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)).to(dtype or torch.float32)

    kind = "sdxl" if case.family.startswith("sdxl") else "sd"
    cls_name, module = PIPELINES[(kind, "inpaint" if case.task.startswith("inpaint") else case.task)]
    scheduler_name, overrides = REFERENCE[case.scheduler]
    for target in [f"diffusers.pipelines.controlnet.{module}", "diffusers.models.autoencoders.vae"] + (
            [NOISE_MODULES[scheduler_name]] if scheduler_name in NOISE_MODULES else []):
        monkeypatch.setattr(f"{target}.randn_tensor", randn_tensor)
    nets = [ControlNetModel.from_pretrained(source.controlnets[name], torch_dtype=torch.float32) for name in case.names]
    pipe = getattr(diffusers, cls_name).from_pretrained(source.src, controlnet=nets if len(nets) > 1 else nets[0],
                                                        torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, scheduler_name).from_config(pipe.scheduler.config, **overrides)
    images = control_images(case.names, case.control_size)
    scale = [float(s) for s in case.scale] if isinstance(case.scale, tuple) else float(case.scale)
    options = {"negative_prompt": NEGATIVE, "num_inference_steps": case.steps, "guidance_scale": case.guidance,
                   "height": SIZE, "width": SIZE, "controlnet_conditioning_scale": scale, "control_guidance_start": case.start,
                   "control_guidance_end": case.end, "guess_mode": case.guess_mode, "output_type": "np"}
    control = images if len(images) > 1 else images[0]
    if case.task == "txt2img":
        options["image"] = control
    else:
        options.update(image=init_image(), control_image=control, strength=case.strength)
    if case.task.startswith("inpaint"):
        options["mask_image"] = mask_image()
    with torch.no_grad():
        out = pipe(PROMPT, **options).images
    return (out * 255).round().astype(np.uint8)


def compare(pipe, source, case: Case, monkeypatch) -> tuple[float, float, float]:
    """(PSNR of latentrt against diffusers, PSNR of latentrt without ControlNet against diffusers, image spread)."""
    from latentrt.export.validate import image_psnr

    reference = diffusers_images(source, case, monkeypatch)
    ours = latentrt_images(pipe, case)
    plain = latentrt_images(pipe, case, control=False)
    return image_psnr(ours, reference), image_psnr(plain, reference), float(ours.std())


# --- the table ---------------------------------------------------------------------------------------------------
def folders(work: Path) -> dict[tuple[str, bool], tuple[object, Path]]:
    """(family, 9-channel inpainting) -> (ControlNetSource, exported folder), built once under `work`."""
    from controlnet_models import ControlNetSource, export_controlnet_folder

    built = {}
    for family, inpaint in (("sd1", False), ("sd2", False), ("sdxl", False), ("sd1", True)):
        root = work / f"{family}{'-inpaint' if inpaint else ''}"
        names = ("canny",) if inpaint else ("canny", "depth")
        out = root / f"{family}{'-inpaint' if inpaint else ''}-onnx"
        if (out / "manifest.json").is_file():
            src = root / f"{family}{'-inpaint' if inpaint else ''}-diffusers"
            built[(family, inpaint)] = (ControlNetSource(src, {n: root / "controlnets" / n for n in names}), out)
        else:
            built[(family, inpaint)] = export_controlnet_folder(root, family, names, inpaint=inpaint)
    return built


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "CPU unknown"


def main() -> None:
    import pytest

    from latentrt import Pipeline
    from latentrt.runtime.backends.openvino import version as openvino_version

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the tiny models")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "controlnet_parity.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    built = folders(args.work)
    pipes: dict[tuple, object] = {}
    rows, start = [], time.perf_counter()
    for case in CASES:
        source, folder = built[(case.family, case.inpaint_unet)]
        key = (folder, case.provider)
        if key not in pipes:
            pipes[key] = Pipeline.from_folder(folder, provider=case.provider, precision="fp32", use_cache=False)
        with pytest.MonkeyPatch.context() as monkeypatch:
            psnr, plain, spread = compare(pipes[key], source, case, monkeypatch)
        rows.append((case, psnr, plain, spread))
        print(f"{case.family} {case.task} {case.label()} {case.scheduler} {case.provider}: {psnr:.1f} dB "
              f"(without ControlNet {plain:.1f} dB)", flush=True)
    import diffusers
    import onnxruntime

    lines = [
        "# ControlNet parity with diffusers",
        "",
        "latentrt's images against diffusers' own ControlNet pipelines (StableDiffusion(XL)ControlNetPipeline and its",
        "Img2Img and Inpaint variants; MultiControlNetModel for two ControlNets) on tiny SD 1.x, SD 2.x and SDXL configs",
        "with random ControlNets (every parameter random, the zero convolutions included: tests/controlnet_models.py),",
        "the same noise (diffusers' randn_tensor drawing from NumPy in latentrt's order), 64x64 images, fp32. PSNR of",
        "uint8 images; the bar is 40 dB. \"Without ControlNet\" is latentrt's image from the same call without its",
        "ControlNets against diffusers' ControlNet image: how much the ControlNet changes the image (so a pass is not",
        "the ControlNet doing nothing). inpaint: the folder's 4-channel UNet; inpaint9: a 9-channel inpainting UNet with",
        "a 4-channel ControlNet. img2img/inpaint strength as listed; guidance 7.5 unless said.",
        "",
        "```",
        "python -m benchmarks.controlnet_parity --work <scratch dir> --out benchmarks/results/controlnet_parity.md",
        "```",
        "",
        (f"diffusers {diffusers.__version__}, onnxruntime {onnxruntime.__version__}, OpenVINO {openvino_version()}, "
         f"{_cpu()}; {len(rows)} rows in {time.perf_counter() - start:.0f} s."),
        "",
        "| family | task | ControlNets | scheduler, steps | backend | PSNR vs diffusers | without ControlNet |",
        "| --- | --- | --- | --- | --- | ---: | ---: |",
    ]
    for case, psnr, plain, _ in rows:
        task = case.task + (f" (strength {case.strength:g})" if case.task != "txt2img" else "")
        backend = "OpenVINO fp32" if case.provider == "openvino" else "ONNX Runtime"
        value = "identical" if psnr == float("inf") else f"{psnr:.1f} dB"
        lines.append(f"| {case.family} | {task} | {case.label()} | {case.scheduler}, {case.steps} | {backend} | {value} | "
                     f"{plain:.1f} dB |")
    worst = min(psnr for _, psnr, _, _ in rows)
    lines += ["", f"Lowest: {worst:.1f} dB; {sum(p >= 40 for _, p, _, _ in rows)} of {len(rows)} rows at or above 40 dB."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
