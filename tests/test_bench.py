"""`latentrt bench` on a tiny model: every key of the JSON report is there, with sane values.

The timings themselves are not asserted (the machine is shared and noisy); see benchmarks/results/.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from latentrt.cli import app
from latentrt.export.validate import IMAGE_MIN_PSNR_DB

METRICS = ("load", "text_encoder", "unet_step", "vae_decode", "end_to_end")


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
    from latentrt.export.tiny import build_tiny_pipeline

    src = tmp_path_factory.mktemp("bench") / "tiny-sd1"
    build_tiny_pipeline(src, "sd1")
    return src


def _bench(src, tmp_path, systems: str) -> dict:
    out = tmp_path / "bench.json"
    args = ["bench", str(src), "--runs", "1", "--steps", "2", "--threads", "1", "--systems", systems,
            "--cache", str(tmp_path / "cache"), "--json", str(out), "--markdown", str(tmp_path / "bench.md"),
            "--plot", str(tmp_path / "bench.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "bench.md").read_text().count("| latentrt |") == 2  # times table, roof table
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    return json.loads(out.read_text())


def _check_system(m: dict) -> None:
    for key in METRICS:
        assert m[key] > 0, key
        assert 0 < m["min"][key] <= m[key] <= m["max"][key], key
    assert m["peak_rss_mb"] > 50
    assert m["unet_gflops"] > 0 and 0 < m["fraction_of_roof"]


def _check_common(report: dict, systems: list[str]) -> None:
    assert list(report["systems"]) == systems
    for name in systems:
        _check_system(report["systems"][name])
    assert report["psnr_vs_reference_db"] >= IMAGE_MIN_PSNR_DB
    assert 0 <= report["max_abs_diff"] <= 255
    assert report["machine"]["cpu_model"] and report["machine"]["logical_cores"] >= 1
    assert report["machine"]["threads"] == 1
    assert report["versions"]["latentrt"]["onnxruntime"] and report["versions"]["diffusers"]["torch"]
    roof = report["roof"]
    assert roof["gemm"]["gflops"] > 0 and roof["unet_flops_per_call"] > 0
    assert roof["flops_source"].startswith("manifest")  # counted once at export time
    assert 0 < roof["fraction_of_roof"] == report["systems"]["latentrt"]["fraction_of_roof"]
    assert report["ratios"]["diffusers"]["speedup"]["unet_step"] > 0
    settings = report["settings"]
    assert (settings["height"], settings["width"], settings["steps"], settings["runs"]) == (64, 64, 2, 1)
    assert settings["scheduler"] == "pndm"  # the folder's own
    # the latentrt worker never imported torch; the reference did
    assert report["systems"]["latentrt"]["modules_imported"] == []
    assert "torch" in report["systems"]["diffusers"]["modules_imported"]


def test_bench_latentrt_vs_diffusers(tiny_src, tmp_path):
    report = _bench(tiny_src, tmp_path, "latentrt,diffusers")
    _check_common(report, ["latentrt", "diffusers"])


@pytest.mark.optimum
def test_bench_with_optimum(tiny_src, tmp_path):
    report = _bench(tiny_src, tmp_path, "latentrt,diffusers,optimum")
    _check_common(report, ["latentrt", "diffusers", "optimum"])
    assert report["agreement_vs_reference"]["optimum"]["psnr_db"] >= IMAGE_MIN_PSNR_DB
    assert report["systems"]["optimum"]["info"]["providers"][0] == "CPUExecutionProvider"
    assert set(report["ratios"]["optimum"]["speedup"]) == set(METRICS)
