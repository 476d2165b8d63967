"""Full-size SD 1.5 architecture (random weights, the published configs): export, load, one UNet call.

Minutes of CPU and ~12 GB of memory: behind the `slow` marker; CI runs it (`.ci/run`).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from latentrt.export.validate import COMPONENT_MAX_REL_ERROR, compare_arrays

pytestmark = pytest.mark.slow

# SD 1.5's published configs (unet/, vae/, text_encoder/ config.json of the v1-5 repository)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentrt.export.exporter import export_pipeline
    from latentrt.export.tiny import SD15_SCHEDULER
    from test_tokenizer import EOS, write_diffusers_tokenizer_folder

    root = tmp_path_factory.mktemp("sd15")
    src = root / "sd15-diffusers"
    torch.manual_seed(0)
    write_diffusers_tokenizer_folder(src / "tokenizer", pad_token=EOS)
    unet = UNet2DConditionModel(**SD15_UNET)
    unet.save_pretrained(src / "unet")
    CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).save_pretrained(src / "text_encoder")
    AutoencoderKL(**SD15_VAE).save_pretrained(src / "vae")
    PNDMScheduler.from_config(SD15_SCHEDULER).save_pretrained(src / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None]}
    (src / "model_index.json").write_text(json.dumps(index))
    out = root / "sd15-onnx"
    t0 = time.perf_counter()
    report = export_pipeline(src, out, report=print)
    seconds = time.perf_counter() - t0
    print(f"SD 1.5 export: {seconds:.0f} s, {sum(report.sizes.values()) / 1e9:.2f} GB")
    return unet.eval(), src, out, report


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
    pipe = Pipeline.from_folder(out)
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
