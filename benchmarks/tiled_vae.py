"""Tiled vs untiled VAE decode of one ONNX model folder: agreement, time and peak memory.

Decodes the same latents (random: seed 0, standard normal; or a generation's, with --prompt;
divided by the VAE's scaling factor as the pipeline does) once untiled and once with latentrt.runtime.tiling.decode_tiled (diffusers'
tile size and overlap unless given), each in its own Python process with ONNX Runtime on the CPU,
so that each process's peak resident set size (getrusage ru_maxrss) is the peak of that decode
(this process stays small: on Linux a child's ru_maxrss starts at its parent's at the fork).
Prints a Markdown table: PSNR of the uint8 images, max abs difference of the decoder outputs,
decode wall and CPU time (one decode, no warm-up), RSS after loading the decoder and peak RSS.

    python -m benchmarks.tiled_vae <model folder> [--size 1024] [--threads 2] [--prompt TEXT]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = ("untiled", "tiled")


def _vae_config(model: Path) -> dict:
    return json.loads((model / "vae_decoder" / "config.json").read_text())


def _latents(config: dict, batch: int, height: int, width: int, seed: int, path: Path | None = None) -> np.ndarray:
    from latentrt.runtime.tiling import vae_scale_factor

    f = vae_scale_factor(config["block_out_channels"])
    if height % f or width % f:
        raise SystemExit(f"height and width must be multiples of the VAE factor {f}")
    shape = (batch, config["latent_channels"], height // f, width // f)
    if path is not None:
        latents = np.load(path).astype(np.float32)
        if latents.shape != shape:
            raise SystemExit(f"{path} holds latents {latents.shape}, expected {shape}")
    else:
        latents = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    z = latents / np.float32(config["scaling_factor"])
    if config.get("shift_factor") is not None:
        z = z + np.float32(config["shift_factor"])
    return z.astype(np.float32)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def generate(args) -> None:
    """The final latents of one generation with the folder's pipeline, to args.save."""
    from latentrt import Pipeline

    with Pipeline.from_folder(args.model, provider="cpu", threads=args.threads) as pipe:
        result = pipe(args.prompt, height=args.height, width=args.width, seed=args.seed, num_images=args.batch)
    np.save(args.save, result.latents)
    print(json.dumps({"mode": "generate", "shape": list(result.latents.shape)}))


def worker(args) -> None:
    """One decode in this process; writes the output (.npy) and prints a JSON line of measurements."""
    import onnxruntime as ort

    from latentrt.runtime.session import session_options
    from latentrt.runtime.tiling import decode_tiled, vae_scale_factor

    config = _vae_config(args.model)
    z = _latents(config, args.batch, args.height, args.width, args.seed, args.latents)
    options = session_options(args.threads)  # the pipeline's
    options.enable_cpu_mem_arena = not args.no_arena
    session = ort.InferenceSession(str(args.model / "vae_decoder" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    decode = lambda part: session.run(None, {name: part})[0]  # noqa: E731
    if args.worker == "tiled":
        f = vae_scale_factor(config["block_out_channels"])
        run = lambda: decode_tiled(decode, z, f, args.tile, args.overlap)  # noqa: E731
    else:
        run = lambda: decode(z)  # noqa: E731
    loaded_mb = _peak_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    out = run()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    np.save(args.save, out)
    print(json.dumps({"mode": args.worker, "seconds": seconds, "cpu_seconds": cpu_seconds,
                      "loaded_rss_mb": loaded_mb, "peak_rss_mb": _peak_rss_mb()}))


def _run_worker(args, mode: str, save: Path) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.tiled_vae", str(args.model), "--worker", mode, "--save", str(save),
           "--height", str(args.height), "--width", str(args.width), "--batch", str(args.batch),
           "--tile", str(args.tile), "--overlap", str(args.overlap), "--threads", str(args.threads),
           "--seed", str(args.seed)] + (["--no-arena"] if args.no_arena else [])
    cmd += ["--latents", str(args.latents)] if args.latents and mode != "generate" else []
    cmd += ["--prompt", args.prompt] if mode == "generate" else []
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tiled_vae", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="an ONNX model folder (latentrt export) with vae_decoder/")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    p.add_argument("--height", type=int, help="overrides --size")
    p.add_argument("--width", type=int, help="overrides --size")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tile", type=int, help="latent tile side (default: diffusers', from the VAE config)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", help="decode the final latents of this generation (the folder's pipeline, seed --seed) "
                   "instead of random latents")
    p.add_argument("--latents", type=Path, help="decode these latents (.npy, unscaled, as PipelineResult.latents)")
    p.add_argument("--no-arena", action="store_true", help="ONNX Runtime's CPU memory arena off (on in the pipeline)")
    p.add_argument("--worker", choices=MODES + ("generate",), help=argparse.SUPPRESS)
    p.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.height = args.height or args.size
    args.width = args.width or args.size
    config = _vae_config(args.model)
    if args.tile is None:
        from latentrt.runtime.tiling import default_tile

        args.tile = default_tile(config["sample_size"], config["block_out_channels"])
    if args.worker:
        generate(args) if args.worker == "generate" else worker(args)
        return

    from latentrt.export.validate import image_psnr
    from latentrt.runtime.images import decoded_to_uint8
    from latentrt.runtime.tiling import should_tile, tile_layout, vae_scale_factor

    f = vae_scale_factor(config["block_out_channels"])
    lh, lw = args.height // f, args.width // f
    stride, _, _ = tile_layout(args.tile, f, args.overlap)
    tiles = len(range(0, lh, stride)) * len(range(0, lw, stride)) if should_tile(lh, lw, args.tile) else 1
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = f"random latents (standard normal, seed {args.seed})"
        if args.latents:
            source = f"latents from `{args.latents.name}`"
        elif args.prompt:  # generated in a process of its own: a child's ru_maxrss starts at its parent's
            args.latents = Path(tmp) / "latents.npy"
            _run_worker(args, "generate", args.latents)
            source = f"the final latents of `{args.prompt}` (seed {args.seed}, the folder's default steps and scheduler)"
        for mode in MODES:
            results[mode] = _run_worker(args, mode, Path(tmp) / f"{mode}.npy")
        outputs = {mode: np.load(Path(tmp) / f"{mode}.npy") for mode in MODES}
    tiled, untiled = outputs["tiled"], outputs["untiled"]
    psnr = image_psnr(decoded_to_uint8(tiled), decoded_to_uint8(untiled))
    max_abs = float(np.abs(tiled - untiled).max())

    import onnxruntime as ort

    print(f"model `{args.model.name}`, image {args.batch} x {args.height}x{args.width} (latents {lh}x{lw}), "
          f"tile {args.tile} latent px ({args.tile * f} px), overlap {args.overlap}: {tiles} tiles; "
          f"ONNX Runtime {ort.__version__} CPU, {args.threads} threads"
          f"{', memory arena off' if args.no_arena else ''}; {_cpu_model()}; {source}")
    print()
    print(f"tiled vs untiled: PSNR (uint8) {psnr:.2f} dB, max abs diff {max_abs:.3g} (decoder output, before the clip to [-1, 1])")
    print()
    print("| decode | wall time (s) | CPU time (s) | RSS after load (MB) | peak RSS (MB) | peak - load (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in MODES:
        r = results[mode]
        print(f"| {mode} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['loaded_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - r['loaded_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
