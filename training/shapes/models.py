"""The shapes model: standard diffusers / transformers components, built from configs.

Everything is a stock Stable Diffusion part, so diffusers runs the folder as the reference and the
latentrt exporter treats it like any SD model:

- ``AutoencoderKL`` with three blocks (f=4): 64x64x3 images <-> 16x16x4 latents,
- ``CLIPTextModel``: a small CLIP text transformer trained from scratch with the UNet,
- ``UNet2DConditionModel`` on 16x16 latents, transformer (self + cross-attention) blocks at 8x8 and
  in the 4x4 mid block (optionally at 16x16 too),
- the Stable Diffusion 1.x noise schedule (scaled_linear betas) with v-prediction (as SD 2.x): the
  layout (the position) is decided at high noise, where an epsilon loss weighs errors in the image by
  the SNR (~0.005 at t=999) and a v loss by SNR + 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

LATENT_CHANNELS = 4

# SD 1.x noise schedule
SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    steps_offset=1,
    timestep_spacing="trailing",  # starts sampling at t=999 (Lin et al. 2023, "Common Diffusion Noise Schedules are Flawed")
)


@dataclass(frozen=True)
class ModelSizes:
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_layers_per_block: int = 1
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 1
    unet_full_res_attention: bool = False  # transformer blocks in the 16x16 block too
    unet_heads: int = 4  # diffusers' ``attention_head_dim`` (the head count in UNet2DConditionModel)
    norm_groups: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


def build_vae(s: ModelSizes, image_size: int = 64):
    from diffusers import AutoencoderKL

    n = len(s.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(s.vae_channels),
        layers_per_block=s.vae_layers_per_block,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=min(s.norm_groups, min(s.vae_channels)),
        sample_size=image_size,
        scaling_factor=1.0,  # set from the latent statistics after VAE training
    )


def build_text_encoder(s: ModelSizes, vocab_size: int, max_length: int, bos_id: int, eos_id: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=s.text_width,
        intermediate_size=4 * s.text_width,
        projection_dim=s.text_width,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        max_position_embeddings=max_length,
        hidden_act="quick_gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return CLIPTextModel(cfg)


def build_unet(s: ModelSizes, latent_size: int = 16):
    from diffusers import UNet2DConditionModel

    n = len(s.unet_channels)
    attn = [s.unet_full_res_attention] + [True] * (n - 2) + [False]  # per resolution, high to low
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(s.unet_channels),
        layers_per_block=s.unet_layers_per_block,
        cross_attention_dim=s.text_width,
        attention_head_dim=s.unet_heads,
        norm_num_groups=s.norm_groups,
    )


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())
