"""Build diffusers folders with SD 2.1 (768-v) and SDXL base architectures and random weights; measure their export.

The published configs of stabilityai/stable-diffusion-2-1 and stabilityai/stable-diffusion-xl-base-1.0 (unet/,
vae/, text_encoder/, text_encoder_2/, scheduler/ and model_index.json), written below as constants: no
network. The tokenizers are OpenAI CLIP's real BPE vocabulary (tests/assets/clip), as benchmarks/sd15_random.py
writes it; SD 2.1's and SDXL's tokenizer_2 (OpenCLIP) pad with "!", SDXL's tokenizer with <|endoftext|>.
Random weights draw noise, but the graphs, shapes, sizes and FLOPs are the published models'.

Each component is built, saved and freed before the next, so the largest model (SDXL's 2.6 B-parameter UNet,
10.3 GB in fp32) is the only one in memory; safetensors writes from the tensors' own memory (no second copy).
``--dtype float16`` stores the weights as the published fp16 variants do (half the disk); the exporter loads
them as fp32 either way, and `latentrt export --compact-weights` then stores them as fp16 again, losslessly.

    python -m benchmarks.full_size_random build sd21 <bench-cache>/sd21-random-diffusers
    python -m benchmarks.full_size_random build sdxl <bench-cache>/sdxl-random-diffusers --dtype float16
    python -m benchmarks.full_size_random measure <bench-cache>/sdxl-random-diffusers <bench-cache>/sdxl-onnx \\
        --json <bench-cache>/sdxl-export.json -- --compact-weights

`measure` runs `latentrt export SRC OUT [options]` in its own process and records its wall time, peak RSS
(the kernel's ru_maxrss of the child), the RSS sampled once a second against the line the export last
printed (a component's line comes when it is done, so the peak under "text_encoder_2: exported ..." is the
next one's, the UNet's), the folder's size per component and the manifest's validation errors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.sd15_random import SD15_UNET, SD15_VAE, partial_folder

ROOT = Path(__file__).resolve().parents[1]

# stabilityai/stable-diffusion-2-1 (768-v): unet/config.json is SD 1.5's but for these keys
SD21_UNET = dict(
    SD15_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    upcast_attention=True, norm_eps=1e-5, act_fn="silu", downsample_padding=1, mid_block_scale_factor=1,
    dual_cross_attention=False, only_cross_attention=False, center_input_sample=False,
)
# vae/config.json: SD 1.x's autoencoder, sample_size 768
SD_VAE = dict(SD15_VAE, sample_size=768, norm_num_groups=32, act_fn="silu")
# text_encoder/config.json: OpenCLIP ViT-H/14's text tower without its last layer (23 of 24), as a CLIPTextModel
SD21_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=512,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
# scheduler/scheduler_config.json: DDIMScheduler, v-prediction
SD21_SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "prediction_type": "v_prediction", "trained_betas": None,
}

# stabilityai/stable-diffusion-xl-base-1.0: unet/config.json
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, use_linear_projection=True, upcast_attention=None,
    norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, act_fn="silu", downsample_padding=1,
    mid_block_scale_factor=1, mid_block_type="UNetMidBlock2DCrossAttn", dual_cross_attention=False,
    only_cross_attention=False, center_input_sample=False, conv_in_kernel=3, conv_out_kernel=3,
    time_embedding_type="positional", resnet_time_scale_shift="default",
)
# vae/config.json: SD's autoencoder, fp16-unsafe (force_upcast), SDXL's scaling factor
SDXL_VAE = dict(SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
# text_encoder/config.json: OpenAI CLIP ViT-L/14's text tower
SDXL_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
# text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower, CLIPTextModelWithProjection
SDXL_TEXT_2 = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=1280,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
# scheduler/scheduler_config.json: EulerDiscreteScheduler, epsilon, leading spacing (latentrt.export.tiny's copy)

MODELS = ("sd21", "sdxl")
SD_INDEX_EXTRAS = {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}


def build(model: str, out: Path, seed: int = 0, dtype: str = "float32") -> Path:
    """Write the diffusers folder of ``model`` ("sd21" or "sdxl") to ``out`` (built beside it, then renamed)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    sys.path.insert(0, str(ROOT / "tests"))
    from test_tokenizer import EOS, write_diffusers_tokenizer_folder  # OpenAI CLIP's real vocabulary

    from latentrt.export.tiny import SDXL_SCHEDULER

    if model not in MODELS:
        raise SystemExit(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")
    tmp = partial_folder(Path(out))
    torch.manual_seed(seed)
    store = getattr(torch, dtype)

    def save(part: str, make) -> None:
        module = make()
        if store != torch.float32:
            module = module.to(store)  # cast tensor by tensor: one copy of the weights at a time
        module.save_pretrained(tmp / part, **({"max_shard_size": "20GB"} if part == "unet" else {}))  # one file, as published
        print(f"{part}: {sum(p.numel() for p in module.parameters()) / 1e6:.0f} M parameters", flush=True)
        del module

    xl = model == "sdxl"
    text = SDXL_TEXT if xl else SD21_TEXT
    write_diffusers_tokenizer_folder(tmp / "tokenizer", pad_token=EOS if xl else "!")
    save("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**text)))
    if xl:
        write_diffusers_tokenizer_folder(tmp / "tokenizer_2", pad_token="!")
        save("text_encoder_2", lambda: CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2)))
    save("unet", lambda: UNet2DConditionModel(**(SDXL_UNET if xl else SD21_UNET)))
    save("vae", lambda: AutoencoderKL(**(SDXL_VAE if xl else SD_VAE)))
    if xl:
        EulerDiscreteScheduler.from_config(SDXL_SCHEDULER).save_pretrained(tmp / "scheduler")
    else:
        DDIMScheduler.from_config(SD21_SCHEDULER).save_pretrained(tmp / "scheduler")
    index = {"_class_name": "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler" if xl else "DDIMScheduler"]}
    if xl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"], tokenizer_2=["transformers", "CLIPTokenizer"],
                     force_zeros_for_empty_prompt=True)
    else:
        index.update(SD_INDEX_EXTRAS)
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    tmp.rename(out)
    return Path(out)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def summarize(src: Path, out: Path) -> dict:
    """Per component: bytes on disk (the folder's and the manifest's files), export seconds, validation errors."""
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    components = {}
    for name, entry in manifest["components"].items():
        components[name] = {
            "bytes": folder_bytes(Path(out) / name),
            "export_seconds": entry.get("export_seconds"),
            "fp16_stored_weights": entry.get("fp16_stored_weights"),
            "fused_attention": entry.get("fused_attention"),
            "validation": entry.get("validation", []),
        }
    sources = {p.name: folder_bytes(p) for p in sorted(Path(src).iterdir()) if p.is_dir()}
    return {"components": components, "folder_bytes": folder_bytes(out), "source_bytes": sources,
            "rewrites": manifest.get("rewrites"), "exporter": manifest.get("exporter")}


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def measure(src: Path, out: Path, options: list[str], log=print) -> dict:
    """Run ``latentrt export src out *options`` in its own process; see the module docstring."""
    command = [sys.executable, "-c", "from latentrt.cli import app; app()", "export", str(src), str(out), *options]
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is printed: the stages' RSS below need them
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
    stage = {"line": "(loading)", "peaks": {}}
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((round(time.perf_counter() - started, 1), line.rstrip()))
            log(f"[{lines[-1][0]:7.1f} s] {line.rstrip()}")
            stage["line"] = line.strip()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    min_available = _available_kib()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss = _rss_kib(proc.pid)
        key = stage["line"]
        stage["peaks"][key] = max(stage["peaks"].get(key, 0), rss)  # peak RSS while this was the last line printed
        min_available = min(min_available, _available_kib())
        time.sleep(1.0)
    seconds = time.perf_counter() - started
    reader.join(timeout=10)
    rc = os.waitstatus_to_exitcode(status)
    result = {
        "command": ["latentrt", "export", "<src>", "<out>", *options],
        "returncode": rc,
        "wall_seconds": round(seconds, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # the child's ru_maxrss (KiB on Linux)
        "peak_rss_after_line": {k: v * 1024 for k, v in stage["peaks"].items()},
        "min_mem_available_bytes": min_available * 1024,
        "output": lines,
    }
    if rc == 0:
        result.update(summarize(src, out))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.full_size_random", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write a random-weight diffusers folder with the published architecture")
    b.add_argument("model", choices=MODELS)
    b.add_argument("out", type=Path)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="how the weights are stored")
    m = sub.add_parser("measure", help="run `latentrt export SRC OUT [options after --]` and record what it cost")
    m.add_argument("src", type=Path)
    m.add_argument("out", type=Path)
    m.add_argument("--json", type=Path, required=True)
    args, options = p.parse_known_args(argv)  # what follows "--" goes to latentrt export
    if options[:1] == ["--"]:
        options = options[1:]
    if options and args.command == "build":
        p.error(f"unrecognized arguments: {' '.join(options)}")
    if args.command == "build":
        t0 = time.perf_counter()
        print(build(args.model, args.out, args.seed, args.dtype), f"({time.perf_counter() - t0:.0f} s)")
        return
    result = measure(args.src, args.out, options)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"rc {result['returncode']}, {result['wall_seconds']} s, peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB")
    sys.exit(0 if result["returncode"] == 0 else 1)


if __name__ == "__main__":
    main()
