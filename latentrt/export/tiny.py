"""Tiny Stable Diffusion pipelines built from configs with random weights.

Used by the tests (export/runtime parity without any checkpoint) and by `latentrt demo-model`.
Two shapes: "sd1" (conv projections, one int head dim, epsilon prediction, PNDM) and "sd2"
(linear projections, per-block head dims, upcast attention, v-prediction, DDIM).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FAMILIES = ("sd1", "sd2")
# SD 1.5's published scheduler config (scheduler/scheduler_config.json)
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_level_vocab() -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary with no merges: every byte, alone and word-final, plus the specials."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, []


def write_tokenizer(folder: Path, pad_token: str, max_length: int = 77) -> int:
    """Write a CLIPTokenizer folder; return the vocabulary size."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = byte_level_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        pad_token=pad_token,
        model_max_length=max_length,
    )
    tokenizer.save_pretrained(folder)
    return len(vocab)


def _amplify_conditioning(unet) -> None:
    """Make a random UNet depend strongly on its prompt and timestep, as a trained one does.

    At random init the cross-attention and time-embedding paths barely move the output (about 2% and
    4% of its spread), so a parity test on such a model would not notice a wrong guidance scale or a
    wrong timestep. Scaled up, both move the output by about its own size, and the noise prediction
    has roughly unit variance like a trained epsilon predictor.
    """
    import torch

    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2.to_out.0"):
                module.weight.mul_(10.0)
        unet.time_embedding.linear_2.weight.mul_(8.0)
        unet.conv_out.weight.mul_(2.5)


def build_tiny_pipeline(out: Path, family: str = "sd1", seed: int = 0, inpaint: bool = False):
    """Build and save a tiny StableDiffusionPipeline; return it (torch, random weights).

    inpaint: a StableDiffusionInpaintPipeline with a 9-channel UNet (latents, mask, masked-image latents).
    """
    import torch
    from diffusers import (
        AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    out = Path(out)
    sd2 = family == "sd2"
    torch.manual_seed(seed)
    tok_dir = out / "_tokenizer_build"
    vocab_size = write_tokenizer(tok_dir, pad_token="!" if sd2 else "<|endoftext|>")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    hidden = 64 if sd2 else 32
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="gelu" if sd2 else "quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=9 if inpaint else 4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=(4, 8) if sd2 else 8,
        use_linear_projection=sd2,
        upcast_attention=sd2,
        norm_num_groups=16,
    )
    _amplify_conditioning(unet)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=64,
    )
    if sd2:
        scheduler = DDIMScheduler.from_config({**SD15_SCHEDULER, "prediction_type": "v_prediction"})
    else:
        scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)
    pipe = (StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline)(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    shutil.rmtree(tok_dir)
    return pipe
