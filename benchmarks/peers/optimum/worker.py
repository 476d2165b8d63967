"""optimum as a peer: export, generate and bench, run INSIDE the optimum virtual environment.

This script is never imported by latentrt. `env.run_worker([...])` runs it with the optimum venv's
interpreter (see env.py), which has torch, diffusers < 0.36, transformers 4.x and optimum-onnx.
export and generate take SD 1.x/2.x and SDXL folders (ORTStableDiffusionXLPipeline); bench SD 1.x/2.x only.

    worker.py export SRC OUT [--opset N] [--validate] [--tokenizer-json]
    worker.py generate FOLDER --prompt P [--negative N] --latents L.npy --steps S --guidance G
                       [--scheduler {pndm,ddim,euler}] [--threads T] --out OUT.npy
    worker.py bench FOLDER [--prompt P] [--negative N] [--steps S] [--guidance G] [--height H]
                    [--width W] [--scheduler ...] [--runs N] [--warmup W] [--threads T]
                    [--seed S | --latents L.npy] [--out-image OUT.npy] [--json PATH]
    worker.py inspect FOLDER     (JSON: every graph's inputs/outputs, dtypes, shapes, opset)
    worker.py versions           (JSON: library versions)

Everything is local: HF_HUB_OFFLINE=1 is set before any Hugging Face import, so nothing is fetched.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# folders saved with transformers 5 (main venv) read by this venv's transformers 4 (see README.md)
from benchmarks.peers.compat import (  # noqa: E402
    export_atomically,
    go_offline,
    needs_slow_tokenizer_files,
    write_slow_tokenizer_files,
)

go_offline()  # before any Hugging Face import

SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}
COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")
TOKENIZERS = {"tokenizer": "text_encoder", "tokenizer_2": "text_encoder_2"}  # SDXL has the second pair


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("optimum", "optimum-onnx", "onnxruntime", "onnx", "torch", "diffusers", "transformers",
                 "huggingface-hub", "tokenizers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ----------------------------------------------------------------------------------------- export


def _with_slow_tokenizer_2(src: Path, scratch: Path) -> Path:
    """`src`, or a view of it whose SDXL tokenizer_2/ also has vocab.json + merges.txt.

    compat.shim_source fixes tokenizer/ only; transformers 4 loads tokenizer_2 (CLIPTokenizer) the same slow
    way and fails the same way. text_encoder_2 (CLIPTextModelWithProjection) keeps its `text_model.` prefix
    under transformers 5, so its weights need nothing.
    """
    tok = src / "tokenizer_2"
    if not needs_slow_tokenizer_files(tok):
        return src
    view = scratch / "src"
    view.mkdir()
    for entry in src.iterdir():
        if entry.name != tok.name:
            (view / entry.name).symlink_to(entry.resolve())
    (view / tok.name).mkdir()
    for sub in tok.iterdir():
        (view / tok.name / sub.name).symlink_to(sub.resolve())
    write_slow_tokenizer_files(tok / "tokenizer.json", view / tok.name)
    return view


def cmd_export(args: argparse.Namespace) -> None:
    import tempfile

    from optimum.exporters.onnx import main_export

    def export(src: Path, tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="optimum-export-") as scratch:
            main_export(
                model_name_or_path=str(_with_slow_tokenizer_2(src, Path(scratch))),
                output=tmp,
                task="text-to-image",
                opset=args.opset,
                device="cpu",
                dtype="fp32",
                library_name="diffusers",
                local_files_only=True,
                do_validation=args.validate,
            )
        if args.tokenizer_json:
            # optimum writes the slow tokenizer's files only (vocab.json, merges.txt, configs); add the
            # tokenizer.json that the `tokenizers` library loads (not part of optimum's own output)
            from transformers import CLIPTokenizerFast

            for name in TOKENIZERS:
                if (tmp / name).is_dir():
                    CLIPTokenizerFast.from_pretrained(str(tmp / name)).backend_tokenizer.save(
                        str(tmp / name / "tokenizer.json")
                    )

    out, seconds = export_atomically(args.src, args.out, export)
    print(json.dumps({"out": str(out), "seconds": round(seconds, 3), "versions": _versions()}))


# ------------------------------------------------------------------------------------- pipelines


def _session_options(threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so


def _set_torch_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _fast_tokenizer(folder: Path, name: str):
    """A CLIPTokenizerFast read from tokenizer.json (a folder saved by transformers 5 or latentrt)."""
    from transformers import CLIPTokenizerFast

    tokenizer = CLIPTokenizerFast.from_pretrained(str(folder / name))
    if tokenizer.model_max_length > 100_000:  # no tokenizer_config.json: transformers' 1e30 default
        te_config = json.loads((folder / TOKENIZERS[name] / "config.json").read_text())
        tokenizer.model_max_length = te_config["max_position_embeddings"]
    return tokenizer


def _is_xl(folder: Path) -> bool:
    return "XL" in json.loads((folder / "model_index.json").read_text()).get("_class_name", "")


def load_pipeline(folder: str | Path, scheduler: str | None = None, threads: int | None = None):
    """ORTStableDiffusionPipeline (ORTStableDiffusionXLPipeline for an SDXL folder) on CPUExecutionProvider,
    with the scheduler swapped if asked."""
    import diffusers
    from optimum.onnxruntime import ORTStableDiffusionPipeline, ORTStableDiffusionXLPipeline

    folder = Path(folder)
    # tokenizer.json only (transformers 5 or latentrt): the fast tokenizer reads it directly
    extra = {name: _fast_tokenizer(folder, name) for name in TOKENIZERS
             if needs_slow_tokenizer_files(folder / name)}
    cls = ORTStableDiffusionXLPipeline if _is_xl(folder) else ORTStableDiffusionPipeline
    pipe = cls.from_pretrained(
        str(folder),
        provider="CPUExecutionProvider",
        session_options=_session_options(threads),
        export=False,
        **extra,
    )
    if scheduler:
        if scheduler not in SCHEDULERS:
            raise SystemExit(f"unknown scheduler {scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        cls = getattr(diffusers, SCHEDULERS[scheduler])
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _vae_scale(pipe) -> int:
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def _run(pipe, prompt, negative, latents_np, steps, guidance):
    """One text-to-image call with fixed initial latents; returns float32 (N, H, W, 3) in [0, 1]."""
    import numpy as np
    import torch

    latents = torch.from_numpy(np.ascontiguousarray(latents_np, dtype=np.float32))  # (N, C, h, w)
    n, _, h, w = latents.shape
    scale = _vae_scale(pipe)
    out = pipe(
        prompt=prompt,
        negative_prompt=negative or None,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=h * scale,
        width=w * scale,
        num_images_per_prompt=n,
        latents=latents,
        output_type="np",
    )
    return np.asarray(out.images, dtype=np.float32)  # (N, H, W, 3)


def cmd_generate(args: argparse.Namespace) -> None:
    import numpy as np

    _set_torch_threads(args.threads)
    pipe = load_pipeline(args.folder, args.scheduler, args.threads)
    latents = np.load(args.latents)
    if latents.ndim != 4:
        raise SystemExit(f"--latents must be (N, C, H/8, W/8), got shape {latents.shape}")
    images = _run(pipe, args.prompt, args.negative, latents, args.steps, args.guidance)
    np.save(args.out, images)
    print(json.dumps({
        "out": str(args.out),
        "shape": list(images.shape),
        "scheduler": type(pipe.scheduler).__name__,
        "min": float(images.min()),
        "max": float(images.max()),
    }))


# ----------------------------------------------------------------------------------------- bench


def _summary(samples: list[float]) -> dict:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "runs": samples,
    }


def _timed(fn, warmup: int, runs: int) -> tuple[list[float], object]:
    result = None
    for _ in range(warmup):
        result = fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return samples, result


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def cmd_bench(args: argparse.Namespace) -> None:
    import gc

    import numpy as np
    import torch

    _set_torch_threads(args.threads)
    folder = Path(args.folder)
    if _is_xl(folder):  # its encode_prompt and UNet take other arguments (prompt_2, text_embeds, time_ids)
        raise SystemExit(f"{folder} is an SDXL folder: bench times SD 1.x/2.x pipelines only (generate runs SDXL)")
    metrics: dict[str, dict] = {}

    # load: a fresh pipeline each time (sessions built, weights read; file cache warm after warm-up)
    pipe = None

    def load():
        nonlocal pipe
        pipe = None
        gc.collect()
        pipe = load_pipeline(folder, args.scheduler, args.threads)
        return pipe

    samples, _ = _timed(load, args.warmup, max(args.load_runs, 1))
    metrics["load"] = _summary(samples)

    scale = _vae_scale(pipe)
    cfg = args.guidance > 1.0
    if args.latents:  # its shape sets batch, height and width
        latents = np.load(args.latents).astype(np.float32)
        if latents.ndim != 4:
            raise SystemExit(f"--latents must be (N, C, H/8, W/8), got shape {latents.shape}")
        args.height, args.width = latents.shape[2] * scale, latents.shape[3] * scale
    else:
        if args.height % scale or args.width % scale:
            raise SystemExit(f"height and width must be multiples of {scale}, got {args.height}x{args.width}")
        rng = np.random.default_rng(args.seed)
        c = pipe.unet.config.in_channels
        latents = rng.standard_normal((args.batch, c, args.height // scale, args.width // scale), dtype=np.float32)
    batch = latents.shape[0]

    # text encoder: tokenize + encode the prompt (and the negative prompt with CFG), as the pipeline does
    def encode():
        return pipe.encode_prompt(args.prompt, "cpu", batch, cfg, args.negative or None)

    samples, (cond, uncond) = _timed(encode, args.warmup, args.runs)
    metrics["text_encoder"] = _summary(samples)

    # one UNet call: the batch the denoising loop sends (2N with CFG), through optimum's wrapper
    emb = torch.cat([uncond, cond]) if cfg else cond
    sample = torch.from_numpy(np.concatenate([latents, latents]) if cfg else latents)
    pipe.scheduler.set_timesteps(args.steps)
    t = pipe.scheduler.timesteps[0]

    def unet():
        return pipe.unet(sample, t, encoder_hidden_states=emb, return_dict=False)[0]

    samples, _ = _timed(unet, args.warmup, args.runs)
    metrics["unet_step"] = _summary(samples)

    # VAE decode of the batch's latents
    lat = torch.from_numpy(latents) / pipe.vae.config.scaling_factor

    def decode():
        return pipe.vae.decode(lat, return_dict=False)[0]

    samples, _ = _timed(decode, args.warmup, args.runs)
    metrics["vae_decode"] = _summary(samples)

    # end to end: prompt -> float image array (output_type="np"), same initial latents every run
    def e2e():
        return _run(pipe, args.prompt, args.negative, latents, args.steps, args.guidance)

    samples, images = _timed(e2e, args.warmup, args.runs)
    metrics["end_to_end"] = _summary(samples)
    if args.out_image:
        np.save(args.out_image, images)

    import onnxruntime as ort

    report = {
        "system": "optimum",
        "folder": str(folder.resolve()),
        "settings": {
            "prompt": args.prompt,
            "negative": args.negative,
            "steps": args.steps,
            "guidance": args.guidance,
            "height": args.height,
            "width": args.width,
            "batch": batch,
            "scheduler": type(pipe.scheduler).__name__,
            "threads": args.threads,
            "torch_threads": torch.get_num_threads(),
            "warmup": args.warmup,
            "runs": args.runs,
            "providers": pipe.unet.session.get_providers(),
            "ort_available_providers": ort.get_available_providers(),
        },
        "metrics": metrics,
        "medians": {k: v["median"] for k, v in metrics.items()},
        "peak_rss_mb": _peak_rss_mb(),
        "image_shape": list(images.shape),
        "notes": {
            "load": "ORTStableDiffusionPipeline.from_pretrained (sessions + tokenizer + scheduler)",
            "text_encoder": "pipe.encode_prompt: tokenize + text encoder (twice with CFG)",
            "unet_step": "one pipe.unet call on the CFG batch via optimum's wrapper (torch<->numpy, casts)",
            "vae_decode": "pipe.vae.decode on the batch's latents",
            "end_to_end": "pipe(...) with fixed latents, output_type='np' (no PIL)",
            "peak_rss_mb": "ru_maxrss of this whole process (load + all runs)",
        },
        "versions": _versions(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()},
    }
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


# --------------------------------------------------------------------------------------- inspect


def cmd_inspect(args: argparse.Namespace) -> None:
    import onnx

    folder = Path(args.folder)
    report = {}
    for name in COMPONENTS:
        path = folder / name / "model.onnx"
        if not path.is_file():
            continue
        model = onnx.load(str(path), load_external_data=False)

        def describe(values):
            out = []
            for v in values:
                t = v.type.tensor_type
                dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
                        for d in t.shape.dim]
                out.append({"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(),
                            "shape": dims})
            return out

        external = sorted({e.value for init in model.graph.initializer for e in init.external_data
                           if e.key == "location"})
        report[name] = {
            "inputs": describe(model.graph.input),
            "outputs": describe(model.graph.output),
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "ir_version": model.ir_version,
            "producer": f"{model.producer_name} {model.producer_version}",
            "external_data": external,
            "files": sorted(p.name for p in (folder / name).iterdir()),
        }
    report["_folder"] = sorted(p.name for p in folder.iterdir())
    print(json.dumps(report, indent=1))


def cmd_versions(args: argparse.Namespace) -> None:
    print(json.dumps(_versions()))


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worker.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="optimum's ONNX export of a local diffusers folder (fp32, CPU)")
    e.add_argument("src")
    e.add_argument("out")
    e.add_argument("--opset", type=int, default=None, help="default: optimum's default for the task")
    e.add_argument("--validate", action="store_true", help="run optimum's ONNX-vs-PyTorch validation")
    e.add_argument("--tokenizer-json", action="store_true",
                   help="also write tokenizer/tokenizer.json (optimum itself writes vocab.json + merges.txt only)")
    e.set_defaults(fn=cmd_export)

    def common(s, latents_required: bool):
        s.add_argument("folder")
        s.add_argument("--prompt", default="a photograph of an astronaut riding a horse", required=False)
        s.add_argument("--negative", default="")
        s.add_argument("--steps", type=int, default=20)
        s.add_argument("--guidance", type=float, default=7.5)
        s.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None,
                       help="default: the folder's scheduler (model_index.json)")
        s.add_argument("--threads", type=int, default=None, help="ORT intra-op and torch threads")
        s.add_argument("--latents", required=latents_required, help=".npy float32 (N, C, H/8, W/8)")

    g = sub.add_parser("generate", help="ORTStableDiffusion(XL)Pipeline text-to-image with given latents")
    common(g, latents_required=True)
    g.add_argument("--out", required=True, help=".npy float32 (N, H, W, 3) in [0, 1]")
    g.set_defaults(fn=cmd_generate)

    b = sub.add_parser("bench", help="time load, text encoder, one UNet call, VAE decode, end to end")
    common(b, latents_required=False)
    b.add_argument("--height", type=int, default=512)
    b.add_argument("--width", type=int, default=512)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--load-runs", type=int, default=None, help="default: --runs")
    b.add_argument("--out-image", help="save the last end-to-end image array (.npy)")
    b.add_argument("--json", help="also write the report here")
    b.set_defaults(fn=cmd_bench)

    i = sub.add_parser("inspect", help="graph inputs/outputs of each component (JSON)")
    i.add_argument("folder")
    i.set_defaults(fn=cmd_inspect)

    v = sub.add_parser("versions", help="library versions (JSON)")
    v.set_defaults(fn=cmd_versions)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "load_runs", 0) is None:
        args.load_runs = args.runs
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
