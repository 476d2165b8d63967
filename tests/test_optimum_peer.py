"""optimum as a peer: its own venv exports a tiny diffusers folder and generates from it.

Marked `optimum`: the first run builds optimum's virtual environment (about a minute with the local
torch wheel, cached in $LATENTRT_CACHE/optimum-venv afterwards).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

pytestmark = pytest.mark.optimum

SD_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character map (its 256 values)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_tokenizer(folder: Path) -> int:
    """A CLIP BPE vocabulary of single bytes (plain and word-final) and two merges; returns its size."""
    chars = _bytes_to_unicode()
    merges = ["a s", "t r</w>"]
    tokens = chars + [c + "</w>" for c in chars] + ["as", "tr</w>", "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(tokens)


def build_tiny_sd(out: Path) -> None:
    """Save a tiny StableDiffusionPipeline (random weights, configs only) to `out`."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tok_dir = out.parent / "tiny-tokenizer-src"
    vocab_size = write_tiny_tokenizer(tok_dir)
    # from_pretrained, not CLIPTokenizer(vocab_file=...): transformers 5 names those arguments
    # vocab/merges and silently ignores vocab_file/merges_file (a 2-token vocabulary)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    assert len(tokenizer) == vocab_size
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=64,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)


@pytest.fixture(scope="module")
def optimum_folder(tmp_path_factory):
    from benchmarks.peers.optimum.env import run_worker

    root = tmp_path_factory.mktemp("optimum-peer")
    build_tiny_sd(root / "tiny-diffusers")
    run_worker(["export", root / "tiny-diffusers", root / "tiny-onnx"], timeout=900)
    return root / "tiny-onnx"


def test_export_layout(optimum_folder):
    from benchmarks.peers.optimum.env import run_worker

    for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert (optimum_folder / name / "model.onnx").is_file(), name
        assert (optimum_folder / name / "config.json").is_file(), name
    assert (optimum_folder / "model_index.json").is_file()
    assert (optimum_folder / "scheduler" / "scheduler_config.json").is_file()
    graphs = json.loads(run_worker(["inspect", optimum_folder], timeout=300).stdout)
    unet = {v["name"]: v for v in graphs["unet"]["inputs"]}
    assert list(unet) == ["sample", "timestep", "encoder_hidden_states"]
    assert [v["name"] for v in graphs["unet"]["outputs"]] == ["out_sample"]
    assert [v["name"] for v in graphs["vae_decoder"]["inputs"]] == ["latent_sample"]
    assert graphs["text_encoder"]["outputs"][0]["name"] == "last_hidden_state"


def _torch_reference(src: Path, latents: np.ndarray, scheduler: str) -> np.ndarray:
    """The same generation with diffusers (PyTorch) in this process."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(src)
    if scheduler == "euler":
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    n, _, h, w = latents.shape
    out = pipe(prompt="a tree", negative_prompt="blurry", num_inference_steps=3, guidance_scale=7.5,
               height=2 * h, width=2 * w, latents=torch.from_numpy(latents), output_type="np")
    return np.asarray(out.images)


@pytest.mark.parametrize("scheduler", ["pndm", "euler"])
def test_generate_matches_pytorch(optimum_folder, tmp_path, scheduler):
    from benchmarks.peers.optimum.env import run_worker

    latents = np.random.default_rng(0).standard_normal((1, 4, 16, 16), dtype=np.float32)  # (N, 4, H/2, W/2)
    np.save(tmp_path / "latents.npy", latents)
    out = tmp_path / "image.npy"
    run_worker(["generate", optimum_folder, "--prompt", "a tree", "--negative", "blurry",
                "--latents", tmp_path / "latents.npy", "--steps", "3", "--guidance", "7.5",
                "--scheduler", scheduler, "--threads", "1", "--out", out], timeout=600)
    image = np.load(out)
    assert image.shape == (1, 32, 32, 3)  # the tiny VAE (two blocks) upsamples 2x
    assert image.dtype == np.float32
    assert np.isfinite(image).all()
    assert 0.0 <= image.min() and image.max() <= 1.0
    # optimum's export and pipeline reproduce diffusers' PyTorch image from the same latents; this also
    # catches a source folder that transformers 4 misreads (random text encoder, see worker.py)
    reference = _torch_reference(optimum_folder.parent / "tiny-diffusers", latents, scheduler)
    assert np.abs(image - reference).max() < 1e-3


def test_bench_reports_every_figure(optimum_folder, tmp_path):
    from benchmarks.peers.optimum.env import run_worker

    report_path = tmp_path / "bench.json"
    run_worker(["bench", optimum_folder, "--height", "64", "--width", "64", "--steps", "2", "--runs", "1",
                "--warmup", "1", "--threads", "1", "--json", report_path], timeout=600)
    report = json.loads(report_path.read_text())
    for key in ("load", "text_encoder", "unet_step", "vae_decode", "end_to_end"):
        assert report["medians"][key] > 0, key
    assert report["peak_rss_mb"] > 0
    assert report["image_shape"] == [1, 64, 64, 3]
    assert report["settings"]["providers"][0] == "CPUExecutionProvider"
