"""Build a diffusers folder with SD 1.5's architecture and random weights (workloads W2 and W3).

The published configs of the v1-5 repository (unet/, vae/, text_encoder/, scheduler/) and OpenAI
CLIP's real BPE vocabulary (tests/assets/clip); tests/test_full_size.py builds its model here too. Random weights
draw noise, but the graphs, shapes and FLOPs are SD 1.5's, which is what a speed benchmark needs.
About 4.3 GB on disk.

    python -m benchmarks.sd15_random <bench-cache>/sd15-random-diffusers [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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


def partial_folder(out: Path) -> Path:
    """The folder to build ``out`` in (renamed to ``out`` when complete); ``out`` must not exist yet."""
    if out.exists():
        raise SystemExit(f"{out} already exists: remove it or choose another folder")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def build(out: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(ROOT / "tests"))
    from test_tokenizer import EOS, write_diffusers_tokenizer_folder  # OpenAI CLIP's real vocabulary

    from latentrt.export.tiny import SD15_SCHEDULER

    out = Path(out)
    tmp = partial_folder(out)
    torch.manual_seed(seed)
    write_diffusers_tokenizer_folder(tmp / "tokenizer", pad_token=EOS)
    UNet2DConditionModel(**SD15_UNET).save_pretrained(tmp / "unet")
    CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).save_pretrained(tmp / "text_encoder")
    AutoencoderKL(**SD15_VAE).save_pretrained(tmp / "vae")
    PNDMScheduler.from_config(SD15_SCHEDULER).save_pretrained(tmp / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None]}
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sd15_random", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(build(args.out, args.seed))


if __name__ == "__main__":
    main()
