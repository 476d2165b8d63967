"""Converting a network's output into ``x_0`` / ``eps`` estimates, and clipping those estimates: pure functions."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def x0_and_eps(
    prediction_type: str,
    model_output: NDArray[np.floating],
    sample: NDArray[np.floating],
    alpha_prod_t: np.floating,
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """``(x_0, eps)`` estimated from the model output at a timestep with cumulative alpha ``alpha_prod_t``.

    ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps`` (Ho et al. 2020, eq. 4). ``epsilon`` predicts ``eps``; ``sample``
    predicts ``x_0``; ``v_prediction`` predicts ``v = sqrt(a) eps - sqrt(1 - a) x_0`` (Salimans & Ho,
    "Progressive Distillation for Fast Sampling of Diffusion Models", 2022, section 4).
    """
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        return (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha_prod_t**0.5 * model_output) / beta_prod_t**0.5
    if prediction_type == "v_prediction":
        x0 = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
        eps = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        return x0, eps
    raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")


def dynamic_threshold(x0: NDArray[np.floating], ratio: float, max_value: float) -> NDArray[np.floating]:
    """Dynamic thresholding of Saharia et al., "Photorealistic Text-to-Image Diffusion Models with Deep Language
    Understanding" (Imagen, 2022), section 2.3: per sample, ``s`` = the ``ratio`` quantile of ``|x_0|`` clamped to
    ``[1, max_value]``; ``x_0`` is clipped to ``[-s, s]`` and divided by ``s``. ``x0``: ``(B, C, ...)``.
    """
    dtype = x0.dtype
    flat = x0.astype(np.float32 if dtype not in (np.float32, np.float64) else dtype).reshape(x0.shape[0], -1)
    s = np.clip(np.quantile(np.abs(flat), ratio, axis=1), 1, max_value)[:, None].astype(flat.dtype)  # (B, 1)
    return (np.clip(flat, -s, s) / s).reshape(x0.shape).astype(dtype)
