"""Loading one part of a diffusers pipeline folder as a float32 torch model (eval mode), for the exporter and
for the weight maps (`weight_map.add_weight_maps`); torch, diffusers and transformers are imported on call."""

from __future__ import annotations

from pathlib import Path


def load_component(src: Path, part: str, projection: bool = False):
    """The torch model in ``src``/``part``: "unet", "vae", or a text encoder (``projection``: SDXL's second,
    CLIPTextModelWithProjection)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}
    cls = classes.get(part) or (CLIPTextModelWithProjection if projection else CLIPTextModel)
    return cls.from_pretrained(Path(src) / part, torch_dtype=torch.float32).eval()
