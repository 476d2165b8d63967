"""`latentrt bench --vae full,tiny --tiny-vae DIR`: every system once per VAE, the tiny rows on a tiny
AutoencoderTiny, and the few-step figures of the fastest latentrt path with the tiny VAE. Tiny models; the
timings are not asserted (benchmarks/results/w5-*.md hold the measured ones)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from latentrt.cli import app
from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr


@pytest.fixture(scope="module")
def turbo_src(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny SD 1.x diffusers folder, a tiny AutoencoderTiny of its latents: 4 channels, 4 pixels per latent pixel)."""
    from latentrt.export.tiny import build_tiny_pipeline
    from latentrt.export.tiny_vae import build_tiny_autoencoder

    root = tmp_path_factory.mktemp("few-step")
    build_tiny_pipeline(root / "tiny-sd1", "sd1")
    build_tiny_autoencoder(root / "tiny-taesd", "small")
    return root / "tiny-sd1", root / "tiny-taesd"


def _run(src: Path, tmp_path: Path, systems: str, *extra: str) -> tuple[dict, str]:
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["bench", str(src), "--runs", "1", "--steps", "1", "--guidance", "0", "--threads", "1", "--systems", systems,
            "--cache", str(tmp_path / "cache"), "--json", str(out), "--markdown", str(md), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(out.read_text()), md.read_text()


def _image(report: dict, stem: str) -> np.ndarray:
    return np.load(Path(report["workdir"]) / f"{stem}-run0.npy")


def test_bench_full_and_tiny_vae(turbo_src, tmp_path):
    """A row per system and VAE; latentrt's tiny row agrees with diffusers + AutoencoderTiny (the same latents), not
    with the full VAE's image; both tiny rows' cold start is a fresh process to the PNG; the figures are there. The
    tiny VAE is added to an export cached without it (`latentrt add-tiny-vae`), not exported again."""
    from latentrt.bench.exports import cache_root, ensure_exports, source_key
    from latentrt.bench.settings import BenchConfig

    src, tiny = turbo_src
    # an export cached without the tiny VAE (as every run before --vae made): the run adds it, exports nothing again
    cache = tmp_path / "cache"
    export = ensure_exports(BenchConfig(src=src, systems=("latentrt",), cache=cache), cache_root(cache) / source_key(src))["latentrt"]
    assert not (export / "vae_decoder_tiny").exists()
    unet_written = (export / "unet" / "model.onnx").stat().st_mtime_ns
    report, text = _run(src, tmp_path, "latentrt,diffusers", "--vae", "full,tiny", "--tiny-vae", str(tiny))
    assert Path(report["folders"]["latentrt"]) == export and (export / "vae_decoder_tiny" / "model.onnx").is_file()
    assert (export / "unet" / "model.onnx").stat().st_mtime_ns == unet_written
    assert "vae_decoder_tiny" in json.loads((export / "manifest.json").read_text())["components"]
    rows = ["latentrt", "latentrt + tiny VAE", "diffusers", "diffusers + tiny VAE"]
    assert list(report["systems"]) == rows and report["settings"]["vaes"] == ["full", "tiny"]
    systems = report["systems"]
    for row in rows:
        m = systems[row]
        assert m["vae"] == ("tiny" if "tiny" in row else "full")
        assert m["end_to_end"] > 0 and m["vae_decode"] > 0 and m["ttfi"] > 0 and m["ttfi_peak_rss_mb"] > 0
        assert m["ttfi_psnr_vs_run_db"] > 40  # the first image is the timed run's image
    assert systems["latentrt + tiny VAE"]["info"]["vae"] == "tiny" and systems["latentrt"]["info"]["vae"] == "full"
    assert systems["diffusers + tiny VAE"]["info"]["vae"] == "AutoencoderTiny"
    assert systems["diffusers"]["info"]["vae"] == "AutoencoderKL"
    assert systems["latentrt + tiny VAE"]["modules_imported"] == []
    assert "--vae tiny" in report["embedding"]["ttfi_commands"]["latentrt + tiny VAE"]
    assert "--vae" not in report["embedding"]["ttfi_commands"]["latentrt"]
    # the tiny rows decode with the tiny VAE: latentrt's agrees with diffusers' AutoencoderTiny, not the full VAE
    ours, theirs = _image(report, "latentrt.tiny"), _image(report, "diffusers.tiny")
    assert image_psnr(ours, theirs) >= IMAGE_MIN_PSNR_DB
    assert image_psnr(ours, _image(report, "diffusers")) < IMAGE_MIN_PSNR_DB
    assert report["agreement_vs_reference"]["latentrt"]["psnr_db"] >= IMAGE_MIN_PSNR_DB  # the full rows as before
    tiny_figures = report["tiny_vae"]
    assert tiny_figures["system"] == "latentrt" and tiny_figures["row"] == "latentrt + tiny VAE"
    figures = {f["vs"]: f for f in tiny_figures["figures"]}
    own = figures["latentrt"]
    assert own["end_to_end"] == pytest.approx(systems["latentrt + tiny VAE"]["end_to_end"] / systems["latentrt"]["end_to_end"])
    assert own["goal"] == 0.4 and own["at_most"] and own["met"] == (own["end_to_end"] <= 0.4)
    vs_diffusers = figures["diffusers + tiny VAE"]
    assert vs_diffusers["ttfi"] == pytest.approx(systems["diffusers + tiny VAE"]["ttfi"] / systems["latentrt + tiny VAE"]["ttfi"])
    assert vs_diffusers["goal"] == 2.0 and vs_diffusers["met"] in (True, False)
    assert figures["optimum-intel"]["end_to_end"] is None and figures["optimum-intel"]["met"] is None  # not run
    assert "**Tiny VAE, fastest latentrt path: `latentrt + tiny VAE`**" in text
    assert text.count("| latentrt + tiny VAE |") == 3  # times table, load/TTFI table, roof table
    assert (export / ".tiny-vae.source").is_file()  # the next run finds it there


@pytest.mark.optimum
def test_bench_optimum_intel_with_a_tiny_vae_decoder(turbo_src, tmp_path):
    """optimum-intel + tiny VAE: its vae_decoder replaced by the tiny decoder's OpenVINO IR, as FastSD CPU wires it;
    its image agrees with diffusers + AutoencoderTiny's; its cold start is measured."""
    pytest.importorskip("openvino")
    src, tiny = turbo_src
    report, _ = _run(src, tmp_path, "diffusers,optimum-intel", "--vae", "full,tiny", "--tiny-vae", str(tiny))
    systems = report["systems"]
    ov_tiny = systems["optimum-intel + tiny VAE"]
    assert ov_tiny["info"]["vae_scaling_factor"] == 1.0 and "FastSD CPU" in ov_tiny["info"]["vae"]
    assert ov_tiny["ttfi"] > 0 and systems["optimum-intel"]["ttfi"] > 0
    assert (Path(report["folders"]["optimum-intel-tiny-vae"]) / "vae_decoder" / "openvino_model.xml").is_file()
    # OpenVINO computes in bf16 where the CPU has it: close to diffusers' fp32 image, not equal
    assert image_psnr(_image(report, "optimum-intel.tiny"), _image(report, "diffusers.tiny")) > 25
    assert report["tiny_vae"] is None  # no latentrt path ran (the figures: test_tiny_vae_figures_met_and_missed)


def test_rows_per_vae():
    from latentrt.bench.settings import BenchConfig, bench_rows, row_modes

    rows = bench_rows(("latentrt", "diffusers"), ("default", "low_memory"), (3,), ("full", "tiny"))
    assert rows == [
        ("latentrt", "latentrt", "default"), ("latentrt (low_memory)", "latentrt", "low_memory"),
        ("latentrt (cache interval 3)", "latentrt", "cache3"),
        ("latentrt + tiny VAE", "latentrt", "tiny"), ("latentrt (low_memory) + tiny VAE", "latentrt", "low_memory+tiny"),
        ("latentrt (cache interval 3) + tiny VAE", "latentrt", "cache3+tiny"),
        ("diffusers", "diffusers", "default"), ("diffusers + tiny VAE", "diffusers", "tiny"),
    ]
    modes = row_modes(BenchConfig(src=Path("."), modes=("default", "low_memory"), cache_intervals=(3,), vaes=("full", "tiny")))
    assert modes["cache3+tiny"] == {"mode": "default", "cache_interval": 3, "vae": "tiny"}
    assert modes["tiny"] == {"mode": "default", "cache_interval": 1, "vae": "tiny"}
    assert modes["low_memory"] == {"mode": "low_memory", "cache_interval": 1, "vae": "full"}
    assert bench_rows(("latentrt", "diffusers"), ("default",)) == [("latentrt", "latentrt", "default"),
                                                                   ("diffusers", "diffusers", "default")]


def test_tiny_vae_figures_met_and_missed():
    from latentrt.bench.report import tiny_vae_figures

    def row(e2e, ttfi):
        return {"end_to_end": e2e, "ttfi": ttfi, "info": {"precision": "bf16"}}

    systems = {"latentrt-openvino": row(10.0, 20.0), "latentrt-openvino + tiny VAE": row(3.0, 8.0),
               "latentrt": row(12.0, 22.0), "latentrt + tiny VAE": row(5.0, 9.0),
               "diffusers + tiny VAE": row(6.0, 12.0), "optimum-intel": row(4.0, 30.0)}
    tiny = tiny_vae_figures(systems)
    assert tiny["system"] == "latentrt-openvino" and tiny["end_to_end"] == 3.0  # the lowest tiny end to end
    f = {x["vs"]: x for x in tiny["figures"]}
    assert f["latentrt-openvino"]["end_to_end"] == pytest.approx(0.3) and f["latentrt-openvino"]["met"] is True
    assert f["latentrt-openvino"]["ttfi"] == pytest.approx(0.4)
    assert f["diffusers + tiny VAE"]["end_to_end"] == pytest.approx(2.0) and f["diffusers + tiny VAE"]["met"] is True
    assert f["optimum-intel"]["end_to_end"] == pytest.approx(4 / 3) and f["optimum-intel"]["met"] is False
    assert f["optimum-intel + tiny VAE"]["end_to_end"] is None and f["optimum-intel + tiny VAE"]["met"] is None
    assert tiny_vae_figures(systems, "latentrt")["system"] == "latentrt"  # named
    assert tiny_vae_figures({"latentrt": row(1.0, 2.0)}) is None  # no tiny row: no figures


def _refused(src, tmp_path, systems: str, options: list[str], message: str) -> None:
    args = ["bench", str(src), "--systems", systems, *options, "--cache", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "cache").exists()  # refused before anything ran


def test_bad_vae_options_are_clear_errors(turbo_src, tmp_path):
    src, tiny = turbo_src
    _refused(src, tmp_path, "latentrt", ["--vae", "tiny"], "--vae tiny needs --tiny-vae DIR")
    _refused(src, tmp_path, "latentrt", ["--vae", "small"], "unknown VAE 'small'")
    _refused(src, tmp_path, "latentrt", ["--vae", "full,full"], "--vae names a VAE twice")
    _refused(src, tmp_path, "latentrt", ["--tiny-vae", str(tiny)], "add --vae full,tiny")
    _refused(src, tmp_path, "latentrt,optimum", ["--vae", "full,tiny", "--tiny-vae", str(tiny)], "optimum has no tiny VAE row")
    _refused(src, tmp_path, "latentrt", ["--vae", "tiny", "--tiny-vae", str(src / "vae")], "holds a 'AutoencoderKL', not an AutoencoderTiny")
    _refused(src, tmp_path, "latentrt", ["--vae", "tiny", "--tiny-vae", str(tmp_path / "nowhere")], "cannot read its config.json")
    _refused(src, tmp_path, "latentrt", ["--vae", "tiny", "--tiny-vae", str(tiny), "--task", "img2img"], "text to image only")
    wrong = tmp_path / "taesd-8ch"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({**json.loads((tiny / "config.json").read_text()), "latent_channels": 8}))
    _refused(src, tmp_path, "latentrt", ["--vae", "tiny", "--tiny-vae", str(wrong)], "has 8 latent channels, the UNet of")
