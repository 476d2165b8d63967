"""Full-size SD 1.5 architecture (random weights, the published configs): export, load, one UNet call.

Minutes of CPU and ~12 GB of memory: behind the `slow` marker; CI runs it (`.ci/run`).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from latentrt.export.validate import COMPONENT_MAX_REL_ERROR, compare_arrays

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    from diffusers import UNet2DConditionModel

    from benchmarks.sd15_random import build
    from latentrt.export.exporter import export_pipeline

    root = tmp_path_factory.mktemp("sd15")
    src = build(root / "sd15-diffusers", seed=0)
    out = root / "sd15-onnx"
    t0 = time.perf_counter()
    report = export_pipeline(src, out, report=print)
    seconds = time.perf_counter() - t0
    print(f"SD 1.5 export: {seconds:.0f} s, {sum(report.sizes.values()) / 1e9:.2f} GB")
    return UNet2DConditionModel.from_pretrained(src / "unet").eval(), src, out, report


def test_unet_weights_go_to_one_external_data_file(sd15):
    _, _, out, report = sd15
    files = sorted(p.name for p in (out / "unet").iterdir())
    assert files == ["config.json", "model.onnx", "model.onnx_data"]
    assert (out / "unet" / "model.onnx_data").stat().st_size > 3_000_000_000  # 860 M fp32 parameters
    assert (out / "unet" / "model.onnx").stat().st_size < 50_000_000  # the graph only
    assert sorted(p.name for p in (out / "text_encoder").iterdir()) == ["config.json", "model.onnx"]
    for name, comparisons in report.comparisons.items():
        for c in comparisons:
            print(c)
            assert c.max_rel_error <= COMPONENT_MAX_REL_ERROR


def test_runtime_loads_and_one_unet_call_agrees(sd15):
    import torch

    from latentrt import Pipeline

    unet, _, out, _ = sd15
    pipe = Pipeline.from_folder(out, provider="cpu", use_cache=False)  # no 5 GB load-cache entry on the CI disk
    rng = np.random.default_rng(1)
    sample = rng.standard_normal((2, 4, 32, 32), dtype=np.float32)  # 256x256 images, CFG batch
    hidden = rng.standard_normal((2, 77, 768), dtype=np.float32)
    t = np.array([500.0, 500.0], dtype=np.float32)
    got = pipe.unet(sample=sample, timestep=t, encoder_hidden_states=hidden)["out_sample"]
    with torch.no_grad():
        expected = unet(torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(hidden)).sample.numpy()
    comparison = compare_arrays("sd15.unet.out_sample@256px", got, expected)
    print(comparison)
    assert comparison.max_rel_error <= COMPONENT_MAX_REL_ERROR
    image = pipe("a watercolor fox", steps=1, height=128, width=128, seed=0).images[0]
    assert image.size == (128, 128)
