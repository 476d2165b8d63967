"""Tiny Stable Diffusion pipelines built from configs with random weights.

Used by the tests (export/runtime parity without any checkpoint) and by `latentrt demo-model`.
Families (each with its published scheduler config, copied below):
- "sd1": conv projections, one int head dim, epsilon prediction, PNDM;
- "sd2": linear projections, per-block head dims, upcast attention, v-prediction, DDIM;
- "sdxl": StableDiffusionXLPipeline: two CLIP text encoders (the second with a projection, its own layer
  count and pad token), a UNet conditioned on text_embeds and 6 time ids ("text_time"), Euler (leading),
  an fp16-unsafe VAE (force_upcast) with SDXL's scaling factor;
- "sdxl-refiner": StableDiffusionXLImg2ImgPipeline: text_encoder_2 only, 5 time ids (aesthetic score);
- "lcm": LatentConsistencyModelPipeline: the sd1 shapes with a guidance-embedding UNet (time_cond_proj_dim);
- "sd-turbo", "sdxl-turbo": the sd2 / sdxl shapes with stabilityai's trailing-spacing schedulers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner", "lcm", "sd-turbo", "sdxl-turbo")
SDXL_FAMILIES = ("sdxl", "sdxl-refiner", "sdxl-turbo")
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
# stabilityai/stable-diffusion-xl-base-1.0 (and -refiner-1.0): EulerDiscreteScheduler
SDXL_SCHEDULER = {
    **SD15_SCHEDULER,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# stabilityai/sd-turbo: EulerDiscreteScheduler; stabilityai/sdxl-turbo: EulerAncestralDiscreteScheduler
# (diffusers#6121). Both the SDXL keys with trailing spacing (1-4 steps start at t = 999).
TURBO_SCHEDULER = {**SDXL_SCHEDULER, "timestep_spacing": "trailing"}
# SimianLuo/LCM_Dreamshaper_v7: LCMScheduler
LCM_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
}
SDXL_VAE_SCALING_FACTOR = 0.13025


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
    has roughly unit variance like a trained epsilon predictor. SDXL's added embedding (text_embeds and
    time ids) and LCM's guidance embedding (timestep_cond) join the time embedding and are scaled alike.
    """
    import torch

    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2.to_out.0"):
                module.weight.mul_(10.0)
        unet.time_embedding.linear_2.weight.mul_(8.0)
        if getattr(unet, "add_embedding", None) is not None:
            unet.add_embedding.linear_2.weight.mul_(8.0)
        if unet.time_embedding.cond_proj is not None:
            unet.time_embedding.cond_proj.weight.mul_(4.0)
        unet.conv_out.weight.mul_(2.5)


def _tiny_clip(build: Path, hidden: int, layers: int, act: str, pad_token: str, projection_dim: int | None = None):
    """(CLIPTokenizer, CLIP text encoder): a CLIPTextModelWithProjection when projection_dim is given."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab_size = write_tokenizer(build, pad_token=pad_token)
    tokenizer = CLIPTokenizer.from_pretrained(build)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **({"projection_dim": projection_dim} if projection_dim else {}),
    )
    return tokenizer, (CLIPTextModelWithProjection if projection_dim else CLIPTextModel)(config)


def _tiny_vae(**overrides):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=64,
        **overrides,
    )


def _tiny_unet(**config):
    """A two-level UNet (32, 64 channels, one layer per block); the family gives blocks and conditioning."""
    from diffusers import UNet2DConditionModel

    defaults = dict(sample_size=16, out_channels=4, layers_per_block=1, block_out_channels=(32, 64), norm_num_groups=16)
    unet = UNet2DConditionModel(**defaults, **config)
    _amplify_conditioning(unet)
    return unet


def build_tiny_pipeline(out: Path, family: str = "sd1", seed: int = 0, inpaint: bool = False):
    """Build and save a tiny pipeline of ``family`` (see FAMILIES); return it (torch, random weights).

    inpaint: a StableDiffusionInpaintPipeline with a 9-channel UNet (latents, mask, masked-image latents);
    SD families only.
    """
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    if inpaint and family not in ("sd1", "sd2"):
        raise ValueError(f"inpaint is for the sd1 and sd2 families, not {family!r}")
    out = Path(out)
    torch.manual_seed(seed)
    build = out / "_tokenizer_build"
    pipe = (_tiny_sdxl if family in SDXL_FAMILIES else _tiny_sd)(build, family, inpaint)
    pipe.save_pretrained(out)
    shutil.rmtree(build)
    return pipe


def _tiny_sd(build: Path, family: str, inpaint: bool):
    from diffusers import (
        DDIMScheduler, EulerDiscreteScheduler, LatentConsistencyModelPipeline, LCMScheduler, PNDMScheduler,
        StableDiffusionInpaintPipeline, StableDiffusionPipeline,
    )

    sd2 = family in ("sd2", "sd-turbo")
    hidden = 64 if sd2 else 32
    tokenizer, text_encoder = _tiny_clip(
        build / "tokenizer", hidden, layers=2, act="gelu" if sd2 else "quick_gelu", pad_token="!" if sd2 else "<|endoftext|>"
    )
    unet = _tiny_unet(
        in_channels=9 if inpaint else 4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=(4, 8) if sd2 else 8,
        use_linear_projection=sd2,
        upcast_attention=sd2,
        time_cond_proj_dim=32 if family == "lcm" else None,
    )
    scheduler = {
        "sd1": lambda: PNDMScheduler.from_config(SD15_SCHEDULER),
        "sd2": lambda: DDIMScheduler.from_config({**SD15_SCHEDULER, "prediction_type": "v_prediction"}),
        "lcm": lambda: LCMScheduler.from_config(LCM_SCHEDULER),
        "sd-turbo": lambda: EulerDiscreteScheduler.from_config(TURBO_SCHEDULER),
    }[family]()
    cls = LatentConsistencyModelPipeline if family == "lcm" else StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    return cls(
        vae=_tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_sdxl(build: Path, family: str, inpaint: bool):
    """SDXL's shapes in small: the refiner has the second text encoder only and takes 5 time ids."""
    from diffusers import (
        EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    refiner = family == "sdxl-refiner"
    # CLIP ViT-L's and OpenCLIP bigG's traits: the second is wider, deeper, pads with "!" and projects
    tokenizer_2, text_encoder_2 = _tiny_clip(build / "tokenizer_2", 64, layers=3, act="gelu", pad_token="!", projection_dim=32)
    tokenizer, text_encoder = (None, None) if refiner else _tiny_clip(build / "tokenizer", 32, layers=2, act="quick_gelu", pad_token="<|endoftext|>")
    time_ids, time_embed_dim = (5 if refiner else 6), 8
    unet = _tiny_unet(
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64 if refiner else 32 + 64,
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=32 + time_ids * time_embed_dim,
    )
    if family == "sdxl-turbo":
        scheduler = EulerAncestralDiscreteScheduler.from_config(TURBO_SCHEDULER)
    else:
        scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)
    parts = dict(
        vae=_tiny_vae(force_upcast=True, scaling_factor=SDXL_VAE_SCALING_FACTOR),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )
    if refiner:
        return StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=True)
    return StableDiffusionXLPipeline(**parts)
