"""The roof: ONNX Runtime's fp32 GEMM throughput on this machine, with the benchmark's thread count.

One MatMul (M x K) @ (K x N) with the weight as an initializer, built in the harness and timed in a
process of its own (like every system), with the same session options as latentrt's (intra-op threads
= T, inter-op 1, all graph optimizations). A sample is the median of `repeats` calls after one warm-up
call; the harness takes one sample per run, interleaved with the systems, so the roof is measured under
the same conditions as the UNet it is compared with. The model's few protobuf messages are written here
by hand (NumPy + the standard library), so that the bench runs without the `onnx` package (an export-extra
dependency): what onnx.helper would build, checked against it by tests/test_bench.py.

    python -m latentrt.bench.roof build MODEL.onnx [--m 2048 --k 2048 --n 2048]
    python -m latentrt.bench.roof measure MODEL.onnx --threads T --out OUT.json     (onnxruntime + numpy)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

DEFAULT_SHAPE = (2048, 2048, 2048)  # 17.2 GFLOP a call: ~40 ms at 400 GFLOP/s, far beyond the caches


# ONNX's protobuf field numbers (onnx/onnx.proto) of the messages the GEMM model uses
_FLOAT = 1  # TensorProto.DataType.FLOAT


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    """A varint field (wire type 0)."""
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    """A length-delimited field (wire type 2): a string, bytes, or an embedded message."""
    data = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, shape: tuple[int, ...]) -> bytes:
    """ValueInfoProto(name=1, type=2: TypeProto(tensor_type=1: (elem_type=1, shape=2: (dim=1: (dim_value=1)))))."""
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, _int(1, _FLOAT) + _bytes(2, dims)))


def build_gemm_model(path: Path, m: int = DEFAULT_SHAPE[0], k: int = DEFAULT_SHAPE[1], n: int = DEFAULT_SHAPE[2]) -> Path:
    """y = a @ w, a (m, k) an input, w (k, n) a float32 initializer drawn from seed 0; opset 17, IR version 8."""
    import numpy as np

    w = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    node = _bytes(1, "a") + _bytes(1, "w") + _bytes(2, "y") + _bytes(4, "MatMul")  # NodeProto: input, output, op_type
    # TensorProto: dims=1, data_type=2, name=8, raw_data=9 (little-endian)
    weight = _int(1, k) + _int(1, n) + _int(2, _FLOAT) + _bytes(8, "w") + _bytes(9, w.astype("<f4").tobytes())
    # GraphProto: node=1, name=2, initializer=5, input=11, output=12
    graph = (_bytes(1, node) + _bytes(2, "gemm_roof") + _bytes(5, weight) + _bytes(11, _value_info("a", (m, k)))
             + _bytes(12, _value_info("y", (m, n))))
    # ModelProto: ir_version=1, graph=7, opset_import=8 (OperatorSetIdProto: domain=1, version=2)
    model = _int(1, 8) + _bytes(7, graph) + _bytes(8, _bytes(1, "") + _int(2, 17))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    return path


def measure(path: Path, threads: int | None, repeats: int = 7) -> dict:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (m, k), n = session.get_inputs()[0].shape, session.get_outputs()[0].shape[1]
    x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
    session.run(None, {"a": x})  # warm-up: prepacking, arena
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {"a": x})
        seconds.append(time.perf_counter() - t0)
    flops = 2.0 * m * k * n
    rates = [flops / s / 1e9 for s in seconds]
    return {
        "m": m, "k": k, "n": n, "threads": threads, "repeats": repeats,
        "gflops": statistics.median(rates), "gflops_best": max(rates), "gflops_calls": rates,
        "onnxruntime": ort.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m latentrt.bench.roof", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("model", type=Path)
    b.add_argument("--m", type=int, default=DEFAULT_SHAPE[0])
    b.add_argument("--k", type=int, default=DEFAULT_SHAPE[1])
    b.add_argument("--n", type=int, default=DEFAULT_SHAPE[2])
    s = sub.add_parser("measure")
    s.add_argument("model", type=Path)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--repeats", type=int, default=7)
    s.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.cmd == "build":
        print(build_gemm_model(args.model, args.m, args.k, args.n))
        return
    result = measure(args.model, args.threads, args.repeats)
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
