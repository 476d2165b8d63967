"""The `latentrt` command: generate, export, add-tiny-vae, quantize, info, cache, demo-model, bench, serve."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from latentrt.bench.cli import bench
from latentrt.runtime.defaults import strength_help

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Stable Diffusion on ONNX Runtime, torch-free.")
logger = logging.getLogger("latentrt")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("latentrt").setLevel(logging.INFO if verbose else logging.WARNING)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What to draw."),
    model: Optional[Path] = typer.Option(None, "-m", "--model", help="ONNX model folder (default: the shipped model)."),
    output: Path = typer.Option(Path("image.png"), "-o", "--output", help="PNG path; with -n > 1, _1, _2... are added."),
    negative: Optional[str] = typer.Option(None, "--negative", help="Negative prompt (SDXL without one: zero conditioning, as diffusers)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (default: the model's)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale; <= 1 disables it."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Sampler name (see `latentrt info`); default: the model's."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default: a random one, written in the PNG)."),
    height: Optional[int] = typer.Option(None, "--height"),
    width: Optional[int] = typer.Option(None, "--width"),
    num_images: int = typer.Option(1, "-n", "--num-images"),
    image: Optional[Path] = typer.Option(
        None, "--image", help="Image to image: start from this picture (size: the image's, rounded down to the model's multiple, unless --height/--width resize it)."
    ),
    strength: Optional[float] = typer.Option(
        None, "--strength", help=f"With --image: how much of it is redrawn, in (0, 1] ({strength_help()}; at 1 little of the image survives)."
    ),
    mask: Optional[Path] = typer.Option(
        None, "--mask", help="With --image: inpaint; a mask of the image's size, white = repaint, black = keep (binarised at 50%)."
    ),
    mask_padding: Optional[int] = typer.Option(
        None, "--mask-padding", help="With --mask: inpaint only the box around the mask padded by this many pixels, at full size, pasted back (diffusers' padding_mask_crop)."
    ),
    clip_skip: Optional[int] = typer.Option(
        None, "--clip-skip", help="Condition on the text encoder's layer N below the one the model uses (diffusers' clip_skip; 1 = penultimate for SD)."
    ),
    provider: str = typer.Option(
        "auto", "--provider", help="auto (the fastest measured for this model on this CPU: `latentrt info` says which and why), cpu, openvino, cuda, tensorrt, rocm, directml, coreml."
    ),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (the fastest the backend runs natively here: bf16 under OpenVINO on a bf16 CPU), fp32 (parity with PyTorch), bf16."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads (default: all cores)."),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir",
        help="Cache of optimized and compiled models, which makes the next load fast (default: $LATENTRT_CACHE, else "
        "~/.cache/latentrt).",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the cache."),
    low_memory: bool = typer.Option(False, "--low-memory", help="Keep one network in memory at a time (slower: each is loaded when needed)."),
    vae_tiling: Optional[bool] = typer.Option(
        None, "--vae-tiling/--no-vae-tiling", help="Decode in overlapping tiles (default: automatic, for images over 4x the VAE's native area or that would not fit)."
    ),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Refuse images with more pixels (height x width) than this."),
    lora: Optional[list[str]] = typer.Option(
        None, "--lora", help="FILE[:SCALE]: a LoRA (.safetensors, diffusers/PEFT or kohya keys) merged at load, scale 1 "
        "by default; repeat for several (the lora extra)."),
    cache_interval: int = typer.Option(
        1, "--cache-interval", help="DeepCache: run the full UNet on one call in N and only its shallow end on the "
        "others (a folder exported with --deepcache); 1 = off."),
    cache_schedule: str = typer.Option(
        "uniform", "--cache-schedule", help="With --cache-interval: uniform (calls 0, N, 2N...) or nonuniform (the "
        "paper's: denser full calls early on)."),
    io_binding: bool = typer.Option(
        False, "--io-binding", help="ONNX Runtime: run the UNet on IO binding (conditioning bound once, latents and "
        "outputs in buffers on the provider's device; the same images). Not with --provider openvino."),
    cuda_graph: bool = typer.Option(
        False, "--cuda-graph", help="Capture the UNet in a CUDA graph (--provider cuda or tensorrt; implies --io-binding)."),
    provider_option: Optional[list[str]] = typer.Option(
        None, "--provider-option", help="KEY=VALUE for the ONNX Runtime provider (the first of its chain), e.g. "
        "trt_engine_cache_enable=True, trt_engine_cache_path=DIR, trt_fp16_enable=True, device_id=1; repeat for several."),
    vae: Optional[str] = typer.Option(
        None, "--vae", help="full (the model's VAE, default) or tiny (its tiny autoencoder, TAESD: `latentrt "
        "add-tiny-vae`; much faster to decode, a little softer); --vae-tiling applies to the full VAE only."),
    control: Optional[list[str]] = typer.Option(
        None, "--control", help="NAME=IMAGE[:SCALE]: condition on IMAGE with the folder's ControlNet NAME (exported "
        "with `latentrt export --controlnet`), scale 1 by default; IMAGE[:SCALE] alone when the folder has one; "
        "repeat for several."),
    preprocess: Optional[list[str]] = typer.Option(
        None, "--preprocess", help="With --control: turn the image into the control map first: canny (edges) or none; "
        "one for every --control, or one per --control in their order. The map is saved as <output>.control-NAME.png."),
    canny_low: int = typer.Option(100, "--canny-low", help="With --preprocess canny: the low threshold (cv2.Canny's)."),
    canny_high: int = typer.Option(200, "--canny-high", help="With --preprocess canny: the high threshold."),
    control_start: float = typer.Option(
        0.0, "--control-start", help="With --control: the fraction of the steps at which the ControlNets start acting."),
    control_end: float = typer.Option(
        1.0, "--control-end", help="With --control: the fraction of the steps after which they stop acting."),
    guess_mode: bool = typer.Option(
        False, "--guess-mode", help="With --control: diffusers' guess mode (the ControlNets see the conditional half "
        "only, their residuals ramped from 0.1 to 1 by depth): the control image alone can carry the picture."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Generate images from a prompt (and, with --image, from a starting picture; with --mask too, inpaint it;
    with --control, conditioned by ControlNets)."""
    from latentrt.runtime.backend import parse_provider_options
    from latentrt.runtime.images import save_png
    from latentrt.runtime.pipeline import Pipeline
    from latentrt.runtime.request import Request

    _setup_logging(verbose)
    outputs = [output] if num_images == 1 else [output.with_name(f"{output.stem}_{i + 1}{output.suffix}") for i in range(num_images)]
    try:
        controls = parse_controls(control or [], preprocess or [])
    except ValueError as exc:
        _fail(str(exc))
    if not controls and (preprocess or guess_mode or control_start != 0.0 or control_end != 1.0):
        _fail("--preprocess, --guess-mode, --control-start and --control-end apply to --control NAME=IMAGE: add one")
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not force:
        _fail(f"{', '.join(existing)} already exists: choose another --output or pass --force to overwrite")
    try:
        from latentrt.runtime.lora import Lora

        options = dict(provider=provider, threads=threads, precision=precision, cache_dir=cache_dir, use_cache=not no_cache,
                       low_memory=low_memory, vae_tiling=vae_tiling, max_pixels=max_pixels,
                       loras=[Lora.parse(text) for text in lora or []], io_binding=io_binding, cuda_graph=cuda_graph,
                       provider_options=parse_provider_options(provider_option), vae=vae or "full")
        pipe = Pipeline.from_folder(model, **options) if model else Pipeline.default(**options)
        taken = [str(path) for path in control_map_paths(controls, output, pipe) if path.exists()]
        if taken and not force:
            _fail(f"{', '.join(taken)} already exists: choose another --output or pass --force to overwrite")
        if pipe.lora_report is not None:
            report = pipe.lora_report
            typer.echo(f"LoRA: {report['layers']} layers adapted" + (
                f", {report['unmatched']} keys matched no layer (e.g. {', '.join(report['examples'][:2])})"
                if report["unmatched"] else ""), err=True)
        request = Request(
            prompt, negative, steps=steps, guidance_scale=guidance, scheduler=scheduler, seed=seed,
            height=height, width=width, num_images=num_images, image=image, strength=strength, mask_image=mask,
            padding_mask_crop=mask_padding, clip_skip=clip_skip, cache_interval=cache_interval,
            cache_schedule=cache_schedule,
            **control_fields(controls, canny_low, canny_high, control_start, control_end, guess_mode),
        )
        if pipe.provider == "openvino" and image is None and num_images == 1:  # checked, then the networks compiled
            plan = pipe.check(request)  # in parallel, not one by one as the call reaches them (benchmarks/results/load_time.md)
            # the plan's size: with --control and no --height/--width, the control image's; its ControlNets with the rest
            pipe.compile(plan.height, plan.width, guidance_scale=guidance, controlnet=list(getattr(plan.control, "names", ())))
        with typer.progressbar(length=1, label="denoising", file=sys.stderr) as bar:

            def progress(done: int, total: int) -> None:
                bar.length = total
                bar.update(1)

            result = pipe.run(request, progress=progress)
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as exc:
        _fail(str(exc))
    for image, params, path in zip(result.images, result.parameters, outputs):
        save_png(image, path, params, force=force)
        typer.echo(f"{path}  (seed {params.seed}, {params.sampler}, {params.steps} steps, CFG {params.guidance_scale:g}, {params.backend} {params.precision})")
    for path, control_map in zip(control_map_paths(controls, output, pipe), control_maps(controls, result)):
        control_map.save(path)
        typer.echo(f"{path}  (the control map that conditioned the image)")
    t = result.timings
    calls = result.unet_calls
    shallow = f"; DeepCache: {calls['full']} full UNet calls, {calls['shallow']} shallow" if calls.get("shallow") else ""
    typer.echo(f"text encoder {t['text_encoder']:.2f} s, denoise {t['denoise']:.2f} s ({t['unet_step'] * 1000:.0f} ms/step{shallow}), VAE decode {t['vae_decode']:.2f} s")


@dataclass
class ControlArgument:
    """One --control: the ControlNet's name (None: the folder's only one), the image, the scale, the preprocessor."""

    name: str | None
    image: Path
    scale: float
    preprocess: str | None = None


_CONTROL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a ControlNet's name in a model folder


def parse_control(text: str) -> ControlArgument:
    """NAME=IMAGE[:SCALE] or IMAGE[:SCALE]; an IMAGE that exists as given is taken whole (its name may hold = or :)."""
    if Path(text).is_file():
        return ControlArgument(None, Path(text), 1.0)
    name, sep, rest = text.partition("=")
    if not sep or not _CONTROL_NAME.match(name):
        name, rest = None, text
    image, colon, scale = rest.rpartition(":")
    if colon and not Path(rest).is_file():
        try:
            value = float(scale)
        except ValueError:
            value = None
        if value is not None:
            if not math.isfinite(value):
                raise ValueError(f"--control {text}: the scale must be a finite number, got {scale!r}")
            return ControlArgument(name, Path(image), value)
    if not rest:
        raise ValueError(f"--control {text}: give NAME=IMAGE[:SCALE] (or IMAGE[:SCALE] with one ControlNet in the folder)")
    return ControlArgument(name, Path(rest), 1.0)


def parse_controls(controls: list[str], preprocess: list[str]) -> list[ControlArgument]:
    """Every --control with its --preprocess (one for all, or one each in order)."""
    parsed = [parse_control(text) for text in controls]
    if preprocess and len(preprocess) not in (1, len(parsed)):
        raise ValueError(f"--preprocess is given {len(preprocess)} times for {len(parsed)} --control: give one for all "
                         "of them or one per --control, in their order")
    for argument, name in zip(parsed, preprocess * len(parsed) if len(preprocess) == 1 else preprocess):
        argument.preprocess = name
    if len(parsed) > 1 and any(a.name is None for a in parsed):
        raise ValueError("with several --control, name the ControlNet of each: --control NAME=IMAGE[:SCALE] "
                         "(`latentrt info MODEL` lists the folder's)")
    return parsed


def control_fields(controls: list[ControlArgument], canny_low: int, canny_high: int, start: float, end: float,
                   guess_mode: bool) -> dict:
    """The Request's ControlNet fields for the parsed --control options (none without them)."""
    if not controls:
        return {}
    one = len(controls) == 1
    names = [c.name for c in controls]
    fields = {
        "controlnet": names[0] if one else names,
        "control_image": controls[0].image if one else [c.image for c in controls],
        "controlnet_conditioning_scale": controls[0].scale if one else [c.scale for c in controls],
        "control_guidance_start": start, "control_guidance_end": end, "guess_mode": guess_mode,
    }
    if any(c.preprocess for c in controls):
        fields.update(control_preprocess=controls[0].preprocess if one else [c.preprocess for c in controls],
                      canny_low_threshold=canny_low, canny_high_threshold=canny_high)
    return fields


def _preprocessed(argument: ControlArgument) -> bool:
    return bool(argument.preprocess) and argument.preprocess.strip().lower() != "none"


def control_map_paths(controls: list[ControlArgument], output: Path, pipe) -> list[Path]:
    """Where the control map of each --control whose preprocessor runs (not "none") is saved:
    <output stem>.control-<ControlNet name>.png beside the output."""
    folder_names = sorted(getattr(pipe.folder, "controlnets", None) or {})
    names = [c.name or (folder_names[0] if len(folder_names) == 1 else "controlnet") for c in controls if _preprocessed(c)]
    return [output.with_name(f"{output.stem}.control-{name}.png") for name in names]


def control_maps(controls: list[ControlArgument], result) -> list:
    """The control maps (result.control_images: preprocessed and resized to the output) of those --control."""
    maps = getattr(result, "control_images", None) or []
    return [image for argument, image in zip(controls, maps) if _preprocessed(argument)]


@app.command()
def export(
    src: Path = typer.Argument(..., help="Local diffusers StableDiffusionPipeline folder."),
    out: Path = typer.Argument(..., help="ONNX model folder to write."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    compact_weights: bool = typer.Option(
        False, "--compact-weights", help="Store weights that are exact in fp16 (an fp16 checkpoint) as fp16: half the size, same results."
    ),
    fused_attention: bool = typer.Option(
        True, "--fused-attention/--plain-attention",
        help="Use ONNX Runtime's MultiHeadAttention (less memory, ORT only) or standard ONNX ops (any runtime).",
    ),
    default_steps: Optional[int] = typer.Option(None, "--default-steps", help="Steps `generate` uses when none are given."),
    default_guidance: Optional[float] = typer.Option(None, "--default-guidance", help="Guidance scale `generate` uses by default."),
    default_scheduler: Optional[str] = typer.Option(None, "--default-scheduler", help="Sampler `generate` uses by default."),
    deepcache: bool = typer.Option(
        False, "--deepcache", help="Also export DeepCache's shallow UNet (and the full UNet's cached feature), for "
        "`--cache-interval`: fewer full UNet calls per image."),
    cache_branch: int = typer.Option(
        0, "--cache-branch", help="With --deepcache: the skip branch the UNet is split at, 0 (the shallowest: fastest) "
        "up; DeepCache's cache_branch_id."),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32, or fp16 (for GPUs): text encoders and UNet in fp16 with fp32 islands, "
        "float32 inputs and outputs; the VAE stays fp32 when its config says force_upcast."),
    tiny_vae: Optional[Path] = typer.Option(
        None, "--tiny-vae", help="A local diffusers AutoencoderTiny folder (TAESD for SD 1.x/2.x, TAESDXL for SDXL): "
        "also export it as vae_decoder_tiny/ and vae_encoder_tiny/, for `generate --vae tiny` and previews."),
    int8: bool = typer.Option(
        False, "--int8", help="Then quantize the UNet to int8 as `latentrt quantize` does (its defaults: calibrated on "
        "the model's own generations; SD 1.5: about 11 more minutes): the fastest CPU path. OUT holds the int8 UNet "
        "only (LoRAs need an export without --int8)."),
    controlnet: Optional[list[str]] = typer.Option(
        None, "--controlnet", help="[NAME=]DIR: a local diffusers ControlNetModel folder, exported as controlnet/NAME/ "
        "(NAME: the folder's name by default); repeatable. The UNet then also takes their residuals "
        "(unet/model_controlnet.onnx, sharing unet/model.onnx's weights file)."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Export a diffusers folder to an ONNX model folder, validating every component against PyTorch."""
    _setup_logging(verbose)
    try:
        from latentrt.export.exporter import ExportError, export_pipeline
        from latentrt.export.validate import ValidationError
    except ImportError as exc:
        _fail(f"the exporter needs the export extra ({exc.name} is missing): pip install 'latentrt[export]'")
    defaults = {"steps": default_steps, "guidance_scale": default_guidance, "scheduler": default_scheduler}
    options = dict(opset=opset, compact_weights=compact_weights, defaults=defaults, fused_attention=fused_attention,
                   cache_branch=cache_branch if deepcache else None, precision=precision, tiny_vae=tiny_vae,
                   controlnets=controlnet or None)
    if int8:
        return _export_int8(src, out, force, options)
    try:
        report = export_pipeline(src, out, force=force, report=typer.echo, **options)
    except (ExportError, FileExistsError, ValidationError, ValueError) as exc:  # ValueError: the tiny VAE's weights
        _fail(str(exc))
    total = sum(report.sizes.values())
    typer.echo(f"wrote {out} ({total / 1e6:.1f} MB) in {report.seconds:.1f} s")


def _export_int8(src: Path, out: Path, force: bool, export_options: dict) -> None:
    """`export --int8`: export, then quantize, into OUT; nothing half-written (latentrt/export/export_int8.py)."""
    from latentrt.export.export_int8 import export_int8
    from latentrt.export.exporter import ExportError
    from latentrt.export.validate import ValidationError

    try:
        result = export_int8(src, out, force=force, report=typer.echo, export_options=export_options)
    except (ExportError, FileExistsError, ValidationError, ValueError) as exc:  # QuantizeError is a ValueError
        _fail(str(exc))
    q = result.quantize
    typer.echo(
        f"wrote {out} in {result.seconds:.1f} s (export {result.export_seconds:.1f} s, calibration "
        f"{q.calibration_seconds:.1f} s, quantization {q.quantize_seconds:.1f} s); UNet {q.sizes['fp32'] / 1e6:.1f} MB -> "
        f"{q.sizes['int8'] / 1e6:.1f} MB int8"
    )


@app.command("add-tiny-vae")
def add_tiny_vae(
    model: Path = typer.Argument(..., help="ONNX model folder (latentrt's, optimum's or diffusers' legacy one)."),
    tiny_vae: Path = typer.Argument(..., help="A local diffusers AutoencoderTiny folder (TAESD, TAESDXL)."),
    force: bool = typer.Option(False, "--force", help="Replace the folder's tiny VAE if it has one."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Add a tiny autoencoder (vae_decoder_tiny/, vae_encoder_tiny/) to a model folder, validated against PyTorch;
    nothing is changed unless all of it succeeds."""
    _setup_logging(verbose)
    try:
        from latentrt.export.tiny_vae_folder import add_tiny_vae as add
        from latentrt.export.validate import ValidationError
    except ImportError as exc:
        _fail(f"add-tiny-vae needs the export extra ({exc.name} is missing): pip install 'latentrt[export]'")
    try:
        entries = add(model, tiny_vae, force=force, report=typer.echo)
    except (ValueError, FileExistsError, ValidationError) as exc:
        _fail(str(exc))
    size = sum(f["bytes"] for entry in entries.values() for f in entry["files"].values())
    typer.echo(f"added {', '.join(entries)} to {model} ({size / 1e6:.2f} MB): generate with --vae tiny")


@app.command()
def quantize(
    model: Path = typer.Argument(..., help="ONNX model folder with an fp32 UNet (from `latentrt export`)."),
    out: Path = typer.Argument(..., help="Model folder to write (the UNet in int8)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Calibration prompts, one per line (default: a built-in list)."),
    samples: int = typer.Option(32, "--samples", help="Calibration samples: UNet inputs recorded across the timestep range."),
    steps: int = typer.Option(10, "--steps", help="Steps of each calibration generation."),
    guidance: float = typer.Option(7.5, "--guidance", help="Guidance of the calibration generations (> 1: both CFG halves are seen)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Sampler of the calibration generations (default: the model's)."),
    height: Optional[int] = typer.Option(None, "--height", help="Calibration height (default: the native size, at most 256)."),
    width: Optional[int] = typer.Option(None, "--width", help="Calibration width (default: the native size, at most 256)."),
    keep_float: str = typer.Option(
        "conv_in,conv_out,time_embedding", "--keep-float",
        help="Parts left in float, comma-separated: conv_in, conv_out, time_embedding, text_projections; 'none' for none.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration generations."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists (only after the new folder is complete)."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Quantize a model folder's UNet (and DeepCache's shallow UNet) to static int8 (QDQ, U8S8) for ONNX Runtime,
    calibrated on its own generations."""
    _setup_logging(verbose)
    try:
        from latentrt.export.quantize import QuantizeError, quantize_folder, read_prompt_file
    except ImportError as exc:
        _fail(f"quantize needs the export extra ({exc.name} is missing): pip install 'latentrt[export]'")
    parts = [] if keep_float.strip().lower() == "none" else [p.strip() for p in keep_float.split(",") if p.strip()]
    try:
        prompt_list = read_prompt_file(prompts) if prompts is not None else None
        result = quantize_folder(
            model, out, prompts=prompt_list, prompts_source=str(prompts) if prompts is not None else None,
            samples=samples, steps=steps, guidance_scale=guidance, scheduler=scheduler, height=height, width=width,
            seed=seed, float_parts=parts, force=force, report=typer.echo,
        )
    except (QuantizeError, ValueError, FileExistsError) as exc:  # QuantizeError: a ValueError that says the fix
        _fail(str(exc))
    sizes = result.sizes
    typer.echo(
        f"wrote {out} in {result.seconds:.1f} s (calibration {result.calibration_seconds:.1f} s, quantization "
        f"{result.quantize_seconds:.1f} s); UNet {sizes['fp32'] / 1e6:.1f} MB -> {sizes['int8'] / 1e6:.1f} MB, "
        f"{sum(result.quantized_nodes.values())} nodes int8, {sum(len(v) for v in result.float_nodes.values())} kept float"
    )
    if result.shallow:
        shallow = result.shallow
        typer.echo(
            f"DeepCache's shallow UNet {shallow['sizes']['fp32'] / 1e6:.1f} MB -> {shallow['sizes']['int8'] / 1e6:.1f} MB, "
            f"{sum(shallow['quantized_nodes'].values())} nodes int8"
        )


@app.command()
def info(
    model: Optional[Path] = typer.Argument(None, help="ONNX model folder (default: the shipped model)."),
    verify: bool = typer.Option(False, "--verify", help="Check every file's sha256 against the manifest."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a model folder: components, inputs and outputs, precision, and what this machine offers."""
    from latentrt.runtime.info import describe

    try:
        if model is None:
            from latentrt.models import default_model_path

            model = default_model_path()
        description = describe(model, verify=verify)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(description, indent=2))
        return
    from latentrt.runtime.info import render

    typer.echo(render(description))


cache_app = typer.Typer(no_args_is_help=True, help="The cache of optimized and compiled models (what makes loads fast).")
app.add_typer(cache_app, name="cache")
_CACHE_DIR_HELP = "Cache folder (default: $LATENTRT_CACHE if set, else ~/.cache/latentrt)."


@cache_app.command("info")
def cache_info(
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=_CACHE_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the cache's entries and their sizes."""
    from latentrt.runtime.cache import cache_entries, cache_root, entry_source

    root = cache_root(cache_dir)
    entries = cache_entries(root) if root.is_dir() else []
    total = sum(size for *_, size in entries)
    rows = [{"backend": b, "entry": e.name, "bytes": size, "source": entry_source(e)} for b, e, size in entries]
    if as_json:
        typer.echo(json.dumps({"root": str(root), "entries": rows, "bytes": total}, indent=2))
        return
    typer.echo(f"{root}: {len(entries)} entries, {total / 1e6:.1f} MB")
    for row in rows:
        typer.echo(f"  {row['backend']}/{row['entry']}  {row['bytes'] / 1e6:.1f} MB  {row['source']}")


@cache_app.command("clear")
def cache_clear(cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=_CACHE_DIR_HELP)) -> None:
    """Remove every cached model (the next load of each folder rebuilds its entry); the benchmarks' files stay."""
    from latentrt.runtime.cache import cache_root, clear_cache

    root = cache_root(cache_dir)
    try:
        count, size = clear_cache(root) if root.is_dir() else (0, 0)
    except OSError as exc:
        _fail(f"could not clear {root}: {exc}")
    typer.echo(f"removed {count} entries ({size / 1e6:.1f} MB) from {root}")


@app.command("demo-model")
def demo_model(
    out: Path = typer.Argument(..., help="ONNX model folder to write."),
    family: str = typer.Option("sd1", "--family", help="sd1 or sd2 shapes."),
    force: bool = typer.Option(False, "--force"),
) -> None:
    """Build a tiny Stable Diffusion model with random weights and export it (needs the export extra)."""
    import tempfile

    try:
        from latentrt.export.exporter import export_pipeline
        from latentrt.export.tiny import build_tiny_pipeline
    except ImportError as exc:
        _fail(f"demo-model needs the export extra ({exc.name} is missing): pip install 'latentrt[export]'")
    if out.exists() and not force:
        _fail(f"{out} already exists: choose another OUT or pass --force to replace it")
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_pipeline(Path(tmp) / "diffusers", family=family)
        export_pipeline(Path(tmp) / "diffusers", out, force=force, report=typer.echo)
    typer.echo(f"wrote {out}")


app.command()(bench)  # latentrt/bench/cli.py: every option of the harness


@app.command()
def serve(
    model: Optional[Path] = typer.Argument(None, help="ONNX model folder (default: the shipped model)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, "--port"),
    provider: str = typer.Option("auto", "--provider", help="As for generate."),
    precision: str = typer.Option("auto", "--precision", help="As for generate."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads per network (default: all cores)."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests that may wait; past this they get 429 with Retry-After."),
    max_batch: int = typer.Option(
        0, "--max-batch",
        help="Images per UNet call when concurrent text-to-image requests share size, steps, guidance and a "
        "deterministic scheduler; 1: no batching; 0 (default): measured at start, 8 if a 2-image call costs under "
        "0.8x two 1-image calls, else 1 (benchmarks/results/serve_load.md)."),
    max_images: int = typer.Option(8, "--max-images", help="Most images one request may ask for (n, batch_size x n_iter)."),
    max_pixels: int = typer.Option(
        1024 * 1024, "--max-pixels",
        help="Refuse output images larger than this many pixels, 422 (default 1048576 = 1024x1024; the memory guard applies anyway)."),
    max_input_pixels: int = typer.Option(
        4096 * 4096, "--max-input-pixels",
        help="Refuse uploaded images (img2img, masks) whose decoded size, read from their header, is over this many pixels: 413 (default 16777216 = 4096x4096)."),
    max_steps: int = typer.Option(150, "--max-steps", help="Most denoising steps one request may ask for (422 past it)."),
    timeout: float = typer.Option(
        600.0, "--timeout",
        help="Seconds a request may take, queued and running: past it 504, and its job is dropped or stops at its next step (0: no limit)."),
    max_body_mb: float = typer.Option(32.0, "--max-body-mb", help="Largest request body (base64 images), in MiB: 413 past it."),
    max_connections: int = typer.Option(
        128, "--max-connections", help="Requests in progress at once: past this 503 with Retry-After (/health still "
        "answers); past this many idle connections the oldest is closed."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection has to send a request's headers; then it is closed."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="LATENTRT_API_KEY",
        help="Require 'Authorization: Bearer KEY' on every route but /health (also from $LATENTRT_API_KEY)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=_CACHE_DIR_HELP),
    io_binding: bool = typer.Option(False, "--io-binding", help="As for generate (no --cuda-graph: requests vary in shape)."),
    provider_option: Optional[list[str]] = typer.Option(None, "--provider-option", help="KEY=VALUE, as for generate."),
    sizes: Optional[str] = typer.Option(
        None, "--sizes", help="Only these sizes, WIDTHxHEIGHT separated by commas (e.g. 512x512,768x512): compiled at "
        "start for every batch size, any other size refused with 422 (default: any size)."),
    max_compiled_shapes: Optional[int] = typer.Option(
        None, "--max-compiled-shapes", help="OpenVINO: shapes each network keeps compiled from requests (sizes, batch "
        "sizes), the least recently used released past it (default 8); those compiled at start are kept."),
    vae: str = typer.Option(
        "full", "--vae", help="The VAE requests decode with unless they send `vae`: full, or tiny (the model's tiny "
        "autoencoder, TAESD: `latentrt add-tiny-vae`; the full VAE is then loaded only when a request asks for it)."),
    ray: bool = typer.Option(False, "--ray", help="Serve with Ray Serve (the ray extra): --replicas copies of the app, one pipeline each."),
    replicas: int = typer.Option(2, "--replicas", help="With --ray: how many replicas."),
) -> None:
    """Serve the model over HTTP: OpenAI's POST /v1/images/generations, AUTOMATIC1111's /sdapi/v1/txt2img and
    img2img, GET /health and GET /metrics (Prometheus)."""
    _setup_logging(True)
    try:
        from latentrt.serve import ServeOptions, is_loopback, run_server
    except ImportError as exc:
        _fail(f"`latentrt serve` needs the serve extra ({exc.name} is missing): pip install 'latentrt[serve]'")
    counts = (("--max-queue", max_queue), ("--max-batch", max_batch), ("--max-images", max_images), ("--port", port),
              ("--max-pixels", max_pixels), ("--max-input-pixels", max_input_pixels), ("--max-steps", max_steps),
              ("--max-connections", max_connections), ("--max-compiled-shapes", max_compiled_shapes))
    for name, value in counts:
        minimum = 0 if name in ("--port", "--max-batch") else 1
        if value is not None and value < minimum:  # --max-compiled-shapes: None is the backend's default
            _fail(f"{name} must be at least {minimum}, got {value}")
    for name, value in (("--max-body-mb", max_body_mb), ("--header-timeout", header_timeout)):
        if value <= 0:
            _fail(f"{name} must be positive, got {value}")
    if timeout < 0:
        _fail(f"--timeout must be 0 (no limit) or a number of seconds, got {timeout}")
    if vae not in ("full", "tiny"):
        _fail(f"--vae must be full or tiny, got {vae!r}")
    from latentrt.serve.app import check_api_key

    try:
        check_api_key(api_key)
    except ValueError as exc:
        _fail(f"--api-key: {exc}")
    if model is not None and not model.is_dir():
        _fail(f"{model} is not a folder: give the folder that `latentrt export` wrote (or none for the shipped model)")
    from latentrt.runtime.backend import parse_provider_options

    try:
        provider_options = parse_provider_options(provider_option)
        from latentrt.serve.sizes import parse_sizes

        allowed_sizes = parse_sizes(sizes)
    except ValueError as exc:
        _fail(str(exc))
    options = ServeOptions(model=None if model is None else str(model), provider=provider, precision=precision,
                           threads=threads, max_queue=max_queue, max_batch=max_batch, max_images=max_images,
                           max_pixels=max_pixels, max_input_pixels=max_input_pixels, max_steps=max_steps,
                           timeout_s=timeout or None, max_body_bytes=int(max_body_mb * 2**20), api_key=api_key,
                           cache_dir=None if cache_dir is None else str(cache_dir), io_binding=io_binding,
                           provider_options=provider_options, max_connections=max_connections,
                           header_timeout_s=header_timeout, sizes=allowed_sizes,
                           max_compiled_shapes=max_compiled_shapes, vae=vae)
    bind = host or "127.0.0.1"
    if host is None:
        logger.warning("listening on 127.0.0.1:%d, this machine only (--host 0.0.0.0 to accept other machines)%s", port,
                       "" if api_key else "; no --api-key: anyone who can reach the port can use it")
    elif not api_key and not is_loopback(bind):
        logger.warning("listening on %s:%d with no --api-key: anyone who can reach this address can use the server", bind, port)
    if ray:
        try:
            from latentrt.serve.ray_app import run_ray
        except ImportError as exc:
            _fail(f"--ray needs the ray extra ({exc.name} is missing): pip install 'latentrt[ray]'")
        run_ray(options, bind, port, replicas)
    else:
        run_server(options, bind, port)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
