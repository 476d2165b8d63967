"""Floating-point operations of one UNet (or VAE decoder) call, counted once from the model's config.

The count comes from `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add, over
convolutions, matmuls and attention) on a copy of the model built on the ``meta`` device: no
weights, no arithmetic, a few seconds even for SD 1.5.

A UNet's cost per sample is exactly ``c + a*N + b*N**2`` in the number of latent pixels
``N = h*w`` (convolutions, projections and cross-attention grow with N, self-attention with N**2,
the time embedding is constant), as long as h and w divide by the UNet's total downsampling.
`flops_formula` counts three such sizes and solves for (a, b, c); the exporter stores that in the
manifest (`components.unet.flops`), and `flops_at` evaluates it for any batch and size in plain
Python, so a torch-free process (the runtime, the benchmark harness) can turn seconds into GFLOP/s.

    python -m latentrt.export.flops SRC --height 256 --width 256 --batch 2     # counts directly
"""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

METHOD = "torch.utils.flop_counter.FlopCounterMode on the meta device (2 FLOPs per multiply-add)"
FORMULA = "batch * (c + a*N + b*N**2), N = latent height * latent width"
TEXT_LENGTH = 77  # CLIP's sequence length; cross-attention cost is linear in it


def _meta_model(kind: str, config: Mapping[str, Any]):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cls = {"unet": UNet2DConditionModel, "vae_decoder": AutoencoderKL}[kind]
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    with torch.device("meta"):
        return cls.from_config(config).eval()


def count_flops(kind: str, config: Mapping[str, Any], batch: int, latent_h: int, latent_w: int,
                text_length: int = TEXT_LENGTH, model=None, text_embeds_width: int | None = None) -> int:
    """FLOPs of one `kind` call ("unet" or "vae_decoder") at this batch and latent size.

    text_embeds_width: an SDXL UNet's pooled text width (text_encoder_2's projection_dim)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from latentrt.export.specs import unet_spec

    model = model if model is not None else _meta_model(kind, config)
    meta = torch.device("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if kind == "unet":
            sample = torch.empty(batch, config["in_channels"], latent_h, latent_w, device=meta)
            timestep = torch.empty(batch, device=meta)
            hidden = torch.empty(batch, text_length, config["cross_attention_dim"], device=meta)
            spec = unet_spec(config, text_embeds_width)  # SDXL's and LCM's extra inputs, through the export wrapper
            extra = [torch.empty(batch, t.axes[-1], device=meta) for t in spec.inputs[3:]]
            spec.wrap(model)(sample, timestep, hidden, *extra)
        elif kind == "vae_decoder":
            latents = torch.empty(batch, config["latent_channels"], latent_h, latent_w, device=meta)
            model.decode(latents, return_dict=False)
        else:
            raise ValueError(f"unknown component {kind!r}: choose unet or vae_decoder")
    return int(counter.get_total_flops())


def _downsampling(kind: str, config: Mapping[str, Any]) -> int:
    return 2 ** (len(config["block_out_channels"]) - 1) if kind == "unet" else 1


def flops_formula(kind: str, config: Mapping[str, Any], text_length: int = TEXT_LENGTH,
                  text_embeds_width: int | None = None) -> dict[str, Any]:
    """Count three sizes (batch 1), solve c + a*N + b*N**2, and check the fit at a fourth size."""
    model = _meta_model(kind, config)
    step = max(_downsampling(kind, config), 8)
    sides = [step * k for k in (2, 4, 6, 8)]
    counts = [count_flops(kind, config, 1, s, s, text_length, model, text_embeds_width) for s in sides]
    n = [Fraction(s * s) for s in sides[:3]]
    y = [Fraction(c) for c in counts[:3]]
    # Newton's divided differences for the quadratic through the three points
    d01 = (y[1] - y[0]) / (n[1] - n[0])
    d12 = (y[2] - y[1]) / (n[2] - n[1])
    b = (d12 - d01) / (n[2] - n[0])
    a = d01 - b * (n[0] + n[1])
    c = y[0] - a * n[0] - b * n[0] ** 2
    formula = {"a": float(a), "b": float(b), "c": float(c)}
    check = flops_at({"formula": FORMULA, **formula}, 1, sides[3], sides[3])
    if abs(check - counts[3]) > 1e-6 * counts[3]:
        logger.warning("%s FLOPs are not quadratic in the latent pixels: %.6g predicted, %d counted",
                       kind, check, counts[3])
    return {
        "formula": FORMULA,
        **formula,
        "text_length": text_length,
        "counted": [{"batch": 1, "latent_height": s, "latent_width": s, "flops": f} for s, f in zip(sides, counts)],
        "method": METHOD,
    }


def flops_at(entry: Mapping[str, Any], batch: int, latent_h: int, latent_w: int) -> float:
    """Evaluate a stored formula (pure Python: usable without torch)."""
    n = latent_h * latent_w
    return batch * (entry["c"] + entry["a"] * n + entry["b"] * n * n)


def component_flops(name: str, model, text_embeds_width: int | None = None) -> dict[str, Any]:
    """The manifest addition for an exported component: {"flops": formula} for unet and vae_decoder."""
    if name not in ("unet", "vae_decoder"):
        return {}
    try:
        return {"flops": flops_formula(name, model.config, text_embeds_width=text_embeds_width)}
    except Exception as exc:  # a count is a nice-to-have: never fail an export over it
        logger.warning("could not count %s FLOPs: %s", name, exc)
        return {}


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m latentrt.export.flops", description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="diffusers folder (reads unet/ and vae/ config.json)")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=1, help="UNet batch (2x the images with CFG)")
    p.add_argument("--vae-batch", type=int, default=None, help="VAE decoder batch (default: --batch)")
    args = p.parse_args(argv)
    vae_cfg = json.loads((args.src / "vae" / "config.json").read_text())
    unet_cfg = json.loads((args.src / "unet" / "config.json").read_text())
    pooled = args.src / "text_encoder_2" / "config.json"  # SDXL: text_embeds width
    text_embeds = json.loads(pooled.read_text()).get("projection_dim") if pooled.is_file() else None
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    h, w = args.height // factor, args.width // factor
    out = {
        "unet": count_flops("unet", unet_cfg, args.batch, h, w, text_embeds_width=text_embeds),
        "vae_decoder": count_flops("vae_decoder", vae_cfg, args.vae_batch or args.batch, h, w),
        "batch": args.batch,
        "latent_height": h,
        "latent_width": w,
        "method": METHOD,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
