"""The tiny autoencoder at full size: parity with diffusers' AutoencoderTiny, decode/encode time, preview cost.

Builds random-weight TAESD and TAESDXL (diffusers' `AutoencoderTiny()` default config is TAESD's architecture, and
TAESDXL's: the two differ only in their trained weights, so each gets its own seed), exports each with latentrt's
exporter (`latentrt.export.tiny_vae`, validated against PyTorch as every export is), then on the same random latents:

- decode PSNR (uint8 images) of the exported decoder against diffusers' AutoencoderTiny, and the encoder's latents
  against its encoder in TAESD's own uint8 latent storage (`scale_latents`), at 512x512 and 1024x1024;
- decode and encode time (median of --repeats calls after one warm-up) on ONNX Runtime's CPU provider and, when the
  openvino extra is installed, OpenVINO at its auto precision, each through latentrt's backends;
- the full SD VAE decoder's time at 512x512 (SD 1.5's AutoencoderKL architecture, random weights, exported by
  latentrt), for the ratio the few-step models care about (--full-1024 adds 1024x1024);
- the cost of one preview at 512x512 (SD 1.5 latents, 64x64x4): the tiny decoder vs the cheap linear projection
  (runtime/previews.py), each as the denoise loop makes it (PIL image included).

    flock /tmp/latentrt-measure.lock python -m benchmarks.tiny_vae_parity --work <scratch dir> --out benchmarks/results/tiny_vae.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (512, 1024)
KINDS = (("TAESD", 0), ("TAESDXL", 1))


def _uint8(decoded: np.ndarray) -> np.ndarray:
    return (np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def build(work: Path) -> dict[str, Path]:
    """Export random-weight TAESD and TAESDXL (and SD 1.5's full VAE decoder) into ``work``; reuse earlier builds."""
    from latentrt.export.exporter import export_tiny_components
    from latentrt.export.tiny_vae import build_tiny_autoencoder, check_tiny_vae

    folders = {}
    for name, seed in KINDS:
        folder = work / name.lower()
        if not (folder / "vae_encoder_tiny" / "model.onnx").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            build_tiny_autoencoder(folder / "source", "taesd", seed=seed)
            export_tiny_components(check_tiny_vae(folder / "source", 4, 8), folder, 17, report=print)
        folders[name] = folder
    folders["full"] = _full_decoder(work / "sd15-vae")
    return folders


def _full_decoder(folder: Path) -> Path:
    """SD 1.5's VAE decoder architecture (diffusers' AutoencoderKL with SD 1.5's config), random weights, exported."""
    if (folder / "vae_decoder" / "model.onnx").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL

    from latentrt.export.exporter import _rewrite_and_save, _trace_component
    from latentrt.export.specs import VAE_DECODER

    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512, scaling_factor=0.18215).eval()
    module = VAE_DECODER.wrap(vae).eval()
    _trace_component(VAE_DECODER, module, folder / "vae_decoder", 17)
    _rewrite_and_save(folder / "vae_decoder", {})
    (folder / "vae_decoder" / "config.json").write_text(json.dumps(dict(vae.config)))
    return folder


def _open(backend, folder: Path, name: str):
    from latentrt.runtime.folder import ComponentFiles

    return backend.open(ComponentFiles(name, folder / name / "model.onnx", {}, None))


def timed(call, repeats: int) -> float:
    call()  # warm-up (OpenVINO compiles the shape here)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parity(folders: dict[str, Path]) -> list[dict]:
    """Exported graphs (ONNX Runtime CPU, fp32) vs diffusers' AutoencoderTiny on the same inputs."""
    import onnxruntime as ort
    import torch
    from diffusers import AutoencoderTiny

    from latentrt.export.validate import image_psnr

    rows = []
    for name, _ in KINDS:
        folder = folders[name]
        vae = AutoencoderTiny.from_pretrained(folder / "source").eval()
        decoder = ort.InferenceSession(str(folder / "vae_decoder_tiny" / "model.onnx"), providers=["CPUExecutionProvider"])
        encoder = ort.InferenceSession(str(folder / "vae_encoder_tiny" / "model.onnx"), providers=["CPUExecutionProvider"])
        for side in SIZES:
            rng = np.random.default_rng(side)
            latents = rng.standard_normal((1, 4, side // 8, side // 8), dtype=np.float32)
            pixels = rng.uniform(-1, 1, (1, 3, side, side)).astype(np.float32)
            with torch.no_grad():
                images = vae.decode(torch.from_numpy(latents)).sample.numpy()
                stored = vae.scale_latents(vae.encode(torch.from_numpy(pixels)).latents).mul(255).round().byte().numpy()
            ours = decoder.run(None, {"latent_sample": latents})[0]
            ours_latents = torch.from_numpy(encoder.run(None, {"sample": pixels})[0])
            ours_stored = vae.scale_latents(ours_latents).mul(255).round().byte().numpy()
            rows.append({"vae": name, "size": side, "decode_psnr_db": image_psnr(_uint8(ours), _uint8(images)),
                         "decode_max_abs": float(np.abs(ours - images).max()),
                         "encode_psnr_db": image_psnr(ours_stored, stored)})
    return rows


def timings(folders: dict[str, Path], repeats: int, full_1024: bool) -> list[dict]:
    """Decode/encode seconds per backend: the tiny VAE at 512 and 1024, the full SD decoder at 512 (and 1024)."""
    from latentrt.runtime.backend import openvino_installed, resolve_backend

    backends = [resolve_backend("cpu", "fp32")] + ([resolve_backend("openvino", "auto")] if openvino_installed() else [])
    rows = []
    for backend in backends:
        label = f"{backend.provider} {backend.precision}"
        for side in SIZES:
            rng = np.random.default_rng(side)
            latents = rng.standard_normal((1, 4, side // 8, side // 8), dtype=np.float32)
            pixels = rng.uniform(-1, 1, (1, 3, side, side)).astype(np.float32)
            row = {"backend": label, "size": side}
            decoder = _open(backend, folders["TAESD"], "vae_decoder_tiny")
            encoder = _open(backend, folders["TAESD"], "vae_encoder_tiny")
            row["tiny_decode_s"] = timed(lambda: decoder(latent_sample=latents), repeats)
            row["tiny_encode_s"] = timed(lambda: encoder(sample=pixels), repeats)
            decoder = encoder = None  # released before the next network loads
            if side == 512 or full_1024:
                full = _open(backend, folders["full"], "vae_decoder")
                row["full_decode_s"] = timed(lambda: full(latent_sample=latents), max(1, repeats // 2))
                full = None
            rows.append(row)
            print(row, file=sys.stderr)
    return rows


def preview_cost(folders: dict[str, Path], repeats: int) -> dict[str, float]:
    """One 512x512 preview from SD 1.5 latents (64x64x4), as runtime/previews.py makes it, ONNX Runtime CPU."""
    from latentrt.runtime.backend import resolve_backend
    from latentrt.runtime.previews import SD_LATENT_RGB, Previews

    decoder = _open(resolve_backend("cpu", "fp32"), folders["TAESD"], "vae_decoder_tiny")
    latents = np.random.default_rng(0).standard_normal((1, 4, 64, 64), dtype=np.float32)

    class FakePipe:  # what Previews reads of a pipeline: the folder's components, latent channels, the tiny decode
        def __init__(self, tiny: bool):
            self.folder = SimpleNamespace(vae=SimpleNamespace(latent_channels=4),
                                          components={"vae_decoder_tiny": None} if tiny else {})
            self.family = None

        def decode(self, z, vae="tiny"):
            return decoder(latent_sample=z)["sample"]

    plan = SimpleNamespace(preview_every=1, height=512, width=512)
    tiny, approx = Previews(FakePipe(True), plan), Previews(FakePipe(False), plan)
    assert approx.coefficients is SD_LATENT_RGB and tiny.method == "tiny" and approx.method == "approx"
    return {"tiny_s": timed(lambda: tiny.after_call(1, 1, latents), repeats),
            "approx_s": timed(lambda: approx.after_call(1, 1, latents), repeats * 10)}


def report(parity_rows, timing_rows, preview, command: str) -> str:
    from latentrt.bench.machine import machine_info

    machine = machine_info()
    lines = ["# Tiny autoencoder (TAESD / TAESDXL): parity, decode and encode time, preview cost", "",
             f"Command: `{command}`", "",
             f"Machine: {machine['cpu_model']}, {machine['logical_cores']} logical cores, {machine['memory_gb']} GB; "
             f"CPU flags: {' '.join(machine['cpu_flags'])}. Load average (1 min) at the end of the run: "
             f"{os.getloadavg()[0]:.1f} (other processes share the CPU when it is above the core count: compare ratios "
             "within one run).", "",
             "Random-weight networks of the real architectures (diffusers' `AutoencoderTiny()` default config for TAESD "
             "and TAESDXL, SD 1.5's `AutoencoderKL` for the full decoder), exported by latentrt; one image per call.", "",
             "## Parity with diffusers' AutoencoderTiny (the same inputs)", "",
             "| tiny VAE | size | decode PSNR (uint8 images) | decode max abs diff | encode PSNR (uint8 latents) |",
             "|---|---|---|---|---|"]
    for r in parity_rows:
        lines.append(f"| {r['vae']} | {r['size']}x{r['size']} | {r['decode_psnr_db']:.1f} dB | {r['decode_max_abs']:.2g} | "
                     f"{r['encode_psnr_db']:.1f} dB |")
    lines += ["", "(inf: bit-identical uint8 output. The figure asked for is >= 40 dB.)", "",
              "## Time per call (median after a warm-up)", "",
              "| backend | size | tiny decode | tiny encode | full SD VAE decode | full / tiny decode |", "|---|---|---|---|---|---|"]
    for r in timing_rows:
        full = r.get("full_decode_s")
        ratio = f"{full / r['tiny_decode_s']:.1f}x" if full else "not measured"
        lines.append(f"| {r['backend']} | {r['size']}x{r['size']} | {r['tiny_decode_s']:.2f} s | {r['tiny_encode_s']:.2f} s | "
                     f"{f'{full:.2f} s' if full else 'not measured'} | {ratio} |")
    lines += ["", "## One preview at 512x512 (SD 1.5 latents, ONNX Runtime CPU)", "",
              "| preview | seconds |", "|---|---|",
              f"| tiny VAE decode (the folder has vae_decoder_tiny) | {preview['tiny_s']:.3f} |",
              f"| cheap linear projection (A1111's Approx cheap), nearest-upscaled | {preview['approx_s']:.4f} |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the exported networks")
    parser.add_argument("--out", type=Path, help="write the Markdown report here (else print it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-1024", action="store_true", help="also time the full SD VAE decoder at 1024x1024")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    folders = build(args.work)
    text = report(parity(folders), timings(folders, args.repeats, args.full_1024), preview_cost(folders, args.repeats),
                  "python -m benchmarks.tiny_vae_parity --work <scratch> --out benchmarks/results/tiny_vae.md"
                  + (" --full-1024" if args.full_1024 else "") + (f" --repeats {args.repeats}" if args.repeats != 3 else ""))
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
