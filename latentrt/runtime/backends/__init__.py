"""Session implementations behind the one interface of `latentrt.runtime.session` (inputs, outputs, __call__).

ONNX Runtime (every execution provider) lives in `session.py`; OpenVINO, an optional extra, in `openvino.py`.
`backend.py` chooses between them and resolves the precision.
"""
