"""The `latentrt bench` command (typer), the bench's one command line: an option for every BenchConfig field.

Registered by latentrt/cli.py; `python -m latentrt.bench.harness` runs the same command (main).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from latentrt.runtime.defaults import strength_help

SYSTEMS_HELP = ("Comma-separated, from: latentrt, latentrt-openvino, latentrt-int8, latentrt-openvino-int8 (latentrt's "
                "paths: ONNX Runtime fp32, OpenVINO precision auto, and both on `latentrt quantize`'s int8 folder); "
                "diffusers, diffusers-bf16 (PyTorch fp32 / bf16 autocast); optimum, optimum-intel (peers, each in its "
                "own venv).")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _intervals(text: str | None) -> tuple[int, ...]:
    """--cache-interval 3,5 as ints (resolve_settings checks that each is at least 2)."""
    parts = _split(text or "")
    bad = [p for p in parts if not p.isdigit()]
    if bad:
        _fail(f"--cache-interval takes whole numbers >= 2 (1 is the uncached row, --modes default), got {bad[0]!r}")
    return tuple(int(p) for p in parts)


def bench(
    ctx: typer.Context,
    src: Path = typer.Argument(
        ..., help="Local diffusers StableDiffusionPipeline folder (exported once into the cache), or a latentrt model folder (latentrt paths only)."
    ),
    steps: int = typer.Option(20, "--steps"),
    height: Optional[int] = typer.Option(None, "--height", help="Default: the model's native size."),
    width: Optional[int] = typer.Option(None, "--width"),
    runs: int = typer.Option(5, "--runs", help="Timed runs per system (after a warm-up), systems interleaved."),
    guidance: float = typer.Option(7.5, "--guidance"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Default: the folder's own."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for every system (default: all cores)."),
    systems: str = typer.Option("latentrt,diffusers", "--systems", help=SYSTEMS_HELP),
    modes: str = typer.Option(
        "default", "--modes",
        help="Comma-separated, from: default, low_memory (one network resident at a time). Each latentrt path runs once "
        "per mode, as a row of its own; the other systems have no modes.",
    ),
    cache_intervals: Optional[str] = typer.Option(
        None, "--cache-interval",
        help="Comma-separated DeepCache intervals N > 1: each latentrt path also runs with one full UNet call in N, a "
        "row per N (the export then includes the shallow UNet; --modes default gives the uncached row).",
    ),
    vaes: str = typer.Option(
        "full", "--vae",
        help="Comma-separated, from: full, tiny. Every system runs once per VAE, as a row of its own (\"+ tiny VAE\"): "
        "the model's autoencoder, or the tiny one (--tiny-vae; latentrt's vae_decoder_tiny/, diffusers' "
        "AutoencoderTiny as pipe.vae, optimum-intel's vae_decoder replaced by its OpenVINO IR as FastSD CPU does). "
        "Text to image only; optimum has no tiny row.",
    ),
    tiny_vae: Optional[Path] = typer.Option(
        None, "--tiny-vae",
        help="The tiny rows' local diffusers AutoencoderTiny folder (TAESD for SD 1.x/2.x, TAESDXL for SDXL); a "
        "latentrt model folder as SRC uses its own vae_decoder_tiny/.",
    ),
    task: str = typer.Option(
        "txt2img", "--task",
        help="txt2img, img2img or inpaint (the plain UNet, known region blended): the image tasks start from an init "
        "image (and a centred rectangle mask) the harness renders, also time the VAE encode, and run on the latentrt "
        "paths, diffusers and diffusers-bf16 only; controlnet: text to image with one ControlNet (--controlnet), "
        "conditioned on the canny edges of that picture, its calls timed too (latentrt, latentrt-openvino, diffusers "
        "and diffusers-bf16: StableDiffusionControlNetPipeline).",
    ),
    controlnet: Optional[str] = typer.Option(
        None, "--controlnet", help="With --task controlnet: a local diffusers ControlNetModel folder (exported with the "
        "model, `latentrt export --controlnet`); a latentrt model folder as SRC: the name of one of its ControlNets."),
    strength: Optional[float] = typer.Option(
        None, "--strength", help=f"The image tasks' strength, in (0, 1] ({strength_help()}): int(steps x strength) steps run."
    ),
    batch: int = typer.Option(1, "--batch", help="Images per generation."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write the table as markdown."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG plot."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Exports cache (default: ~/.cache/latentrt/bench)."),
    prompt: Optional[str] = typer.Option(None, "--prompt"),
    negative: Optional[str] = typer.Option(None, "--negative"),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial latents every system gets."),
    title: Optional[str] = typer.Option(None, "--title", help="Heading of the markdown and the plot."),
    note: Optional[str] = typer.Option(None, "--note", help="Conditions to record with the results."),
    ttfi: bool = typer.Option(True, "--ttfi/--no-ttfi", help="Time to first image in every run (a generation more per "
                              "row and run; --no-ttfi halves a long benchmark)."),
    warmup_round: bool = typer.Option(True, "--warmup-round/--no-warmup-round",
                                      help="A discarded load-only round first (fills the OS file cache)."),
    fast_path: Optional[str] = typer.Option(
        None, "--fast-path", help="The latentrt path the fastest-path table is for (default: the lowest end to end)."),
    optimum_folder: str = typer.Option(
        "own", "--optimum-folder", help="What optimum runs: 'own' (optimum's export) or 'latentrt' (latentrt's folder)."),
    optimum_intel_model_cache: bool = typer.Option(
        False, "--optimum-intel-model-cache",
        help="Give optimum-intel an OpenVINO CACHE_DIR (its CPU default is none: every load compiles)."),
) -> None:
    """Time latentrt against diffusers (PyTorch) and optimum on the same model and settings: load (cold and warm load
    cache), stages, end to end, time to first image and peak RSS."""
    import importlib.util
    import shlex

    from latentrt.bench.run import run_bench
    from latentrt.bench.report import render_markdown, write_outputs
    from latentrt.bench.settings import DEFAULT_NEGATIVE, DEFAULT_PROMPT, BenchConfig, BenchError

    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        _fail("--plot needs matplotlib, not installed here: pip install matplotlib (or 'latentrt[dev]')")
    # the command line recorded in the report: main() gives its own; else `latentrt bench ...` from sys.argv
    command = (ctx.obj or {}).get("command") or (
        "latentrt bench " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None)
    config = BenchConfig(
        src=src, steps=steps, height=height, width=width, runs=runs, guidance=guidance, scheduler=scheduler,
        threads=threads, systems=_split(systems), modes=_split(modes), cache_intervals=_intervals(cache_intervals),
        vaes=_split(vaes), tiny_vae=tiny_vae,
        prompt=DEFAULT_PROMPT if prompt is None else prompt, negative=DEFAULT_NEGATIVE if negative is None else negative,
        seed=seed, batch=batch, task=task, strength=strength, controlnet=controlnet, cache=cache, warmup_round=warmup_round,
        optimum_folder=optimum_folder, optimum_intel_model_cache=optimum_intel_model_cache, fast_path=fast_path,
        ttfi=ttfi, command=command, note=note, progress=lambda message: typer.echo(message, err=True),
    )
    try:
        report = run_bench(config)
    except (BenchError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    write_outputs(report, json_path, markdown, plot, title)
    typer.echo(render_markdown(report, title))


def main(argv: list[str] | None = None, prog: str = "python -m latentrt.bench.harness") -> None:
    """The bench command on its own (no `latentrt` group): `python -m latentrt.bench.harness SRC ...`."""
    import shlex

    app = typer.Typer(add_completion=False)
    app.command()(bench)
    argv = sys.argv[1:] if argv is None else list(argv)
    app(args=argv, prog_name=prog, obj={"command": f"{prog} {shlex.join(argv)}"})
