"""latentrt: Stable Diffusion as ONNX graphs, run by a torch-free NumPy + ONNX Runtime engine."""

__version__ = "0.1.0"

__all__ = ["ImageTooLargeError", "Pipeline", "PipelineResult", "Request", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `latentrt.export` (torch side) does not load the runtime and vice versa.
    if name in ("ImageTooLargeError", "Pipeline", "PipelineResult", "Request"):
        from latentrt.runtime import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'latentrt' has no attribute {name!r}")
