"""optimum as a peer: its own venv exports a tiny diffusers folder and generates from it.

Marked `optimum`: the first run builds optimum's virtual environment (about a minute with the local
torch wheel, cached in $LATENTRT_CACHE/optimum-venv afterwards).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.optimum

@pytest.fixture(scope="module")
def optimum_folder(optimum_sd1):
    return optimum_sd1[1]


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
    f = pipe.vae_scale_factor
    out = pipe(prompt="a tree", negative_prompt="blurry", num_inference_steps=3, guidance_scale=7.5,
               height=f * h, width=f * w, latents=torch.from_numpy(latents), output_type="np")
    return np.asarray(out.images)


@pytest.mark.parametrize("scheduler", ["pndm", "euler"])
def test_generate_matches_pytorch(optimum_sd1, tmp_path, scheduler):
    src, optimum_folder = optimum_sd1
    from benchmarks.peers.optimum.env import run_worker

    latents = np.random.default_rng(0).standard_normal((1, 4, 16, 16), dtype=np.float32)  # (N, 4, H/4, W/4)
    np.save(tmp_path / "latents.npy", latents)
    out = tmp_path / "image.npy"
    run_worker(["generate", optimum_folder, "--prompt", "a tree", "--negative", "blurry",
                "--latents", tmp_path / "latents.npy", "--steps", "3", "--guidance", "7.5",
                "--scheduler", scheduler, "--threads", "1", "--out", out], timeout=600)
    image = np.load(out)
    assert image.shape == (1, 64, 64, 3)  # the tiny VAE (three blocks) upsamples 4x
    assert image.dtype == np.float32
    assert np.isfinite(image).all()
    assert 0.0 <= image.min() and image.max() <= 1.0
    # optimum's export and pipeline reproduce diffusers' PyTorch image from the same latents; this also
    # catches a source folder that transformers 4 misreads (random text encoder, see worker.py)
    reference = _torch_reference(src, latents, scheduler)
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
