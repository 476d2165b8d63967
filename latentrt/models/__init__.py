"""Models shipped inside the package (ONNX folders)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = "shapes"


def default_model_path() -> Path:
    path = Path(__file__).parent / DEFAULT_MODEL
    if not (path / "unet" / "model.onnx").is_file():
        raise FileNotFoundError(
            f"the default model is not installed at {path}: pass a model folder with -m/--model "
            "(export one with `latentrt export SRC OUT`, or build a demo with `latentrt demo-model OUT`)"
        )
    return path
