"""The roof: ONNX Runtime's fp32 GEMM throughput on this machine, with the benchmark's thread count.

One MatMul (M x K) @ (K x N) with the weight as an initializer, built with `onnx.helper` (in the
harness) and timed in a process of its own (like every system), with the same session options as
latentrt's (intra-op threads = T, inter-op 1, all graph optimizations). A sample is the median of
`repeats` calls after one warm-up call; the harness takes one sample per run, interleaved with the
systems, so the roof is measured under the same conditions as the UNet it is compared with.

    python benchmarks/roof.py build MODEL.onnx [--m 2048 --k 2048 --n 2048]     (needs onnx)
    python benchmarks/roof.py measure MODEL.onnx --threads T --out OUT.json     (onnxruntime + numpy)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

DEFAULT_SHAPE = (2048, 2048, 2048)  # 17.2 GFLOP a call: ~40 ms at 400 GFLOP/s, far beyond the caches


def build_gemm_model(path: Path, m: int = DEFAULT_SHAPE[0], k: int = DEFAULT_SHAPE[1], n: int = DEFAULT_SHAPE[2]) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm_roof", [a], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
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
    p = argparse.ArgumentParser(prog="roof.py", description=__doc__.split("\n\n")[0])
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
