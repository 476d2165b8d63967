"""latentrt: Stable Diffusion as ONNX graphs, run by a torch-free NumPy + ONNX Runtime engine."""

__version__ = "0.1.0"

from latentrt.runtime.pipeline import Pipeline, PipelineResult  # noqa: E402

__all__ = ["Pipeline", "PipelineResult", "__version__"]
