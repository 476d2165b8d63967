"""ONNX vs PyTorch, per component and end to end, against named thresholds.

Export, tests and benchmarks all call this module, so "agrees with PyTorch" means one thing.

Thresholds (fp32) and why:
- A component's error is ``max|onnx - torch| / max|torch|`` (the largest deviation relative to the
  output's own scale, so a VAE producing pixels in [-1, 1] and a text encoder producing values
  near 30 are judged alike). ONNX Runtime reorders float32 sums (blocked GEMM, fused attention),
  which costs a few ulps per reduction; through the 12 layers of CLIP or the ~70 layers of the
  SD 1.5 UNet that accumulates to about 1e-6..1e-5 of the output scale. `COMPONENT_MAX_REL_ERROR`
  = 1e-4 leaves an order of magnitude of head-room for that and still fails loudly on a real
  export bug (a wrong attention scale or a missing layer gives errors of 1e-2 and up).
- fp16 graphs (`export --precision fp16`, `FP16_MAX_REL_ERROR`): fp16 keeps 11 significant bits, a rounding
  step of 2^-11 = 4.9e-4 of a value, taken by every weight and every intermediate value. Measured on the tiny
  models, the text encoders land at 1.2e-3 and the UNets at 0.8e-3..1.1e-3 (about two fp16 steps). Trained
  full-size networks are deeper (12-32 CLIP layers, ~70 UNet layers) with larger activations, so the limits
  leave ~10x head-room: text encoders 1e-2, UNet 2e-2, an fp16 VAE 2e-2. They still fail on the real fp16
  faults: an overflow gives inf/NaN (always an error), and losing an fp32 island does too (a fractional timestep
  rounded to fp16 moved the tiny UNet by 6e-2, tests/test_export_fp16.py).
- Images are compared as uint8, where the usual bar for "the same picture" is a PSNR of 40 dB
  (an RMS error of 2.5 grey levels out of 255); `IMAGE_MIN_PSNR_DB` = 40.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

COMPONENT_MAX_REL_ERROR = 1e-4
IMAGE_MIN_PSNR_DB = 40.0
# fp16 graphs (`export --precision fp16`): see the module docstring for the why of each value
FP16_MAX_REL_ERROR = {"text_encoder": 1e-2, "text_encoder_2": 1e-2, "unet": 2e-2, "unet_shallow": 2e-2, "unet_controlnet": 2e-2,
                      "vae_decoder": 2e-2, "vae_encoder": 2e-2}


class ValidationError(RuntimeError):
    """ONNX and PyTorch disagree past a named threshold."""


@dataclass(frozen=True)
class Comparison:
    name: str
    max_abs_diff: float
    max_rel_error: float  # max_abs_diff / max|reference|
    psnr_db: float  # of the difference against the reference's peak-to-peak range

    def as_dict(self) -> dict[str, float | str]:
        return {
            "name": self.name,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_error": self.max_rel_error,
            "psnr_db": self.psnr_db,
        }

    def __str__(self) -> str:
        return (
            f"{self.name}: max abs diff {self.max_abs_diff:.3g}, "
            f"max rel error {self.max_rel_error:.3g}, PSNR {self.psnr_db:.1f} dB"
        )


def compare_arrays(name: str, actual: np.ndarray, reference: np.ndarray) -> Comparison:
    if actual.shape != reference.shape:
        raise ValidationError(f"{name}: shape {actual.shape} differs from the reference's {reference.shape}")
    actual = actual.astype(np.float64)
    reference = reference.astype(np.float64)
    if not np.all(np.isfinite(actual)):
        raise ValidationError(f"{name}: the ONNX output contains NaN or inf")
    diff = np.abs(actual - reference)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    rel = max_abs / scale if scale > 0 else max_abs
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    peak = float(reference.max() - reference.min()) if reference.size else 0.0
    psnr = math.inf if mse == 0 else 10 * math.log10(max(peak, 1e-12) ** 2 / mse)
    return Comparison(name, max_abs, rel, psnr)


def check_component(comparison: Comparison, max_rel_error: float = COMPONENT_MAX_REL_ERROR,
                    precision: str = "fp32") -> Comparison:
    if not comparison.max_rel_error <= max_rel_error:
        raise ValidationError(
            f"{comparison} exceeds the {precision} threshold (max rel error {max_rel_error:g}): "
            "the ONNX graph does not reproduce the PyTorch model"
        )
    return comparison


def image_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (or stacks of them)."""
    if a.shape != b.shape:
        raise ValidationError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def check_images(a: np.ndarray, b: np.ndarray, min_psnr_db: float = IMAGE_MIN_PSNR_DB) -> float:
    psnr = image_psnr(a, b)
    if not psnr >= min_psnr_db:
        raise ValidationError(f"images differ: PSNR {psnr:.1f} dB is below {min_psnr_db} dB")
    return psnr


def validate_component(spec, torch_module, onnx_path, seed: int = 0, precision: str = "fp32") -> list[Comparison]:
    """Run `torch_module` (the spec's wrapper) and the exported graph on the spec's sample inputs.

    An fp16 graph runs on ONNX Runtime's CPU provider too: it has few fp16 kernels, and for each node without one
    it inserts Casts and computes in fp32, so every intermediate value is still rounded to fp16 (and overflows
    past 65504 to inf) as on a GPU, whose fp16 GEMMs and convolutions also accumulate in fp32."""
    import onnxruntime as ort
    import torch

    from latentrt.export.specs import to_torch

    inputs = getattr(torch_module, "sample_inputs", None)  # recorded with the outputs (the exporter's reference)
    if inputs is None:
        inputs = spec.sample_inputs(torch_module.model, np.random.default_rng(seed))
    with torch.no_grad():
        expected = torch_module(*to_torch(inputs))
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    taken = {i.name for i in session.get_inputs()}  # the tracer drops an input the graph does not use
    actual = session.run([o.name for o in spec.outputs], {k: v for k, v in inputs.items() if k in taken})
    results = []
    for out_spec, got, ref in zip(spec.outputs, actual, expected):
        comparison = compare_arrays(f"{spec.name}.{out_spec.name}", got, ref.numpy())
        threshold = COMPONENT_MAX_REL_ERROR if precision == "fp32" else FP16_MAX_REL_ERROR[spec.name]
        results.append(check_component(comparison, threshold, precision))
    return results

