"""benchmarks/gpu/run.sh --dry-run: the GPU benchmark's code path on the CPU (tiny model, fp16 export, ONNX Runtime's
CPU provider with and without IO binding, diffusers fp32), its JSON, markdown and plot. The GPU run itself needs an
NVIDIA GPU (benchmarks/results/gpu-h200.* when one was at hand)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "gpu" / "run.sh"
DRY_ROWS = ["latentrt-cpu-fp16", "latentrt-cpu-fp16-iobinding", "diffusers"]
TIMES = ("load", "text_encoder", "unet_step", "vae_decode", "end_to_end")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("gpu-bench")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_BENCH_WORK": str(tmp / "work"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(["bash", str(RUN), "--dry-run", str(tmp / "out"), "--threads", "1"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((tmp / "out" / "gpu-dry-run.json").read_text()), tmp / "out"


def test_dry_run_rows_and_numbers(dry_run):
    report, _ = dry_run
    assert list(report["systems"]) == DRY_ROWS
    assert list(report["skipped"]) == ["latentrt-cpu-fp16-cudagraph"]  # the CPU provider has no CUDA graphs
    s = report["settings"]
    assert s["dry_run"] and s["device"] == "cpu" and s["runs"] == 2 and s["cfg"]
    for name, row in report["systems"].items():
        for metric in TIMES:
            assert 0 < row["min"][metric] <= row[metric] <= row["max"][metric] < 60, (name, metric)
        assert len(row["runs"]["end_to_end"]) == 2  # timed generations, after an untimed one
        assert row["unet_calls_per_image"] >= s["steps"]
        assert row["peak_rss_mb"] > 50
    latentrt = report["systems"]["latentrt-cpu-fp16-iobinding"]
    assert latentrt["info"]["providers"][0] == "CPUExecutionProvider"
    assert latentrt["pipeline_options"] == {"io_binding": True} and latentrt["info"]["precision"] == "fp16"
    assert report["systems"]["diffusers"]["info"]["precision"] == "fp32"
    for name in DRY_ROWS[:2]:  # the fp16 folder against diffusers fp32: close, not equal
        assert report["agreement_vs_reference"][name]["psnr_db"] > 30
        assert report["speedup_vs_reference"][name]["end_to_end"] > 0
    goals = report["goals"]
    assert goals["fastest"] in DRY_ROWS[:2]
    assert {k: goals[k]["goal"] for k in ("end_to_end_s", "end_to_end_speedup", "psnr_db")} == {
        "end_to_end_s": 0.6, "end_to_end_speedup": 1.5, "psnr_db": 30.0}
    assert report["phases_s"]["export"] > 0


def test_dry_run_markdown_and_plot(dry_run):
    _, out = dry_run
    text = (out / "gpu-dry-run.md").read_text()
    for name in DRY_ROWS:
        assert f"| {name} |" in text
    assert "Not run: latentrt-cpu-fp16-cudagraph" in text
    assert text.count(" — met") + text.count(" — missed") == 3
    assert (out / "gpu-dry-run.png").stat().st_size > 10_000


def test_gpu_rows():
    """The full run's rows (only a GPU runs them): three latentrt rows on CUDA and diffusers fp16."""
    from benchmarks.gpu.bench import plan

    p = plan(dry_run=False, steps=None, runs=None, name=None)
    assert (p.steps, p.size, p.runs, p.name) == (50, 512, 3, "gpu-h200")
    rows = {row.name: (row.system, row.config) for row in p.rows()}
    assert rows == {
        "latentrt-cuda-fp16": ("latentrt", {"provider": "cuda", "pipeline_options": {}}),
        "latentrt-cuda-fp16-iobinding": ("latentrt", {"provider": "cuda", "pipeline_options": {"io_binding": True}}),
        "latentrt-cuda-fp16-cudagraph": ("latentrt", {"provider": "cuda", "pipeline_options": {"cuda_graph": True}}),
        "diffusers-fp16": ("diffusers", {"device": "cuda", "dtype": "float16"}),
    }
    assert p.skipped() == {}


def test_gpu_probe_fails_clearly_without_cuda(tmp_path):
    """On a machine whose ONNX Runtime has no CUDA provider, the full run stops before the export, saying why."""
    import onnxruntime

    from benchmarks.gpu.bench import probe_gpu
    from latentrt.bench.settings import BenchError

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(BenchError, match=r"(?s)onnxruntime-gpu cannot use the GPU here: .*fell back to \[.CPUExecutionProvider.\]"):
        probe_gpu("onnxruntime-gpu", tmp_path)


def test_gpu_report_renders(dry_run, tmp_path):
    """The GPU-only parts of the output (GPU memory column, torch's allocator figure, a failed row, the GPU's name),
    on the dry run's report dressed as a GPU one."""
    from benchmarks.gpu.bench import write_outputs

    report = json.loads(json.dumps(dry_run[0]))
    report["settings"]["dry_run"] = False
    report["machine"]["gpu"] = {"name": "NVIDIA H200", "driver": "570.00", "memory_total_mb": "143771"}
    for i, row in enumerate(report["systems"].values()):
        row["gpu_memory_mb"] = 1000.0 + i
        for key in ("min", "max"):
            row[key]["gpu_memory_mb"] = 1000.0 + i
    report["systems"]["diffusers"]["info"]["torch_max_memory_allocated_mb"] = 2345.0
    report["failed"] = {"latentrt-cuda-fp16-cudagraph": "latentrt (x) failed: the CUDA graph could not be captured\nmore"}
    md, _, png = (tmp_path / "g.md", tmp_path / "g.json", tmp_path / "g.png")
    write_outputs(report, tmp_path, "g", "GPU")
    text = md.read_text()
    assert "| GPU memory |" in text and "1,000 MB" in text and "torch.cuda.max_memory_allocated 2,345 MB" in text
    assert "**Failed: latentrt-cuda-fp16-cudagraph.** latentrt (x) failed: the CUDA graph could not be captured more" in text
    assert "NVIDIA H200 (driver 570.00" in text and "Dry run" not in text
    assert png.stat().st_size > 10_000
