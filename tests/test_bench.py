"""`latentrt bench` on a tiny model: every key of the JSON report is there, with sane values.

The timings themselves are not asserted (the machine is shared and noisy); see benchmarks/results/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture(scope="module")
def tiny_sdxl_src(tmp_path_factory):
    """A tiny StableDiffusionXLPipeline folder (two text encoders, text_embeds + 6 time ids; EulerDiscreteScheduler)."""
    from latentrt.export.tiny import build_tiny_pipeline

    src = tmp_path_factory.mktemp("bench") / "tiny-sdxl"
    build_tiny_pipeline(src, "sdxl")
    return src


def _bench(src, tmp_path, systems: str, *extra: str, steps: int = 2, cache=None) -> dict:
    out = tmp_path / "bench.json"
    args = ["bench", str(src), "--runs", "1", "--steps", str(steps), "--threads", "1", "--systems", systems,
            "--cache", str(cache or tmp_path / "cache"), "--json", str(out), "--markdown", str(tmp_path / "bench.md"),
            "--plot", str(tmp_path / "bench.png"), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "bench.md").read_text().count("| latentrt |") == 3  # times table, load/TTFI table, roof table
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
    report = _bench(tiny_src, tmp_path, "latentrt,diffusers,diffusers-bf16")
    _check_common(report, ["latentrt", "diffusers", "diffusers-bf16"])
    # the bf16 variant: the same worker under torch.autocast, its own row, ratios and image agreement
    bf16 = report["systems"]["diffusers-bf16"]
    assert bf16["info"]["precision"] == "bfloat16 autocast (fp32 weights)"
    assert report["systems"]["diffusers"]["info"]["precision"] == "fp32"
    assert "torch" in bf16["modules_imported"]
    assert report["agreement_vs_reference"]["diffusers-bf16"]["psnr_db"] > 20  # bf16: close to fp32, not equal
    assert set(report["ratios"]["diffusers-bf16"]["speedup"]) == set(METRICS)
    fast = report["fast_path"]
    assert fast["system"] == "latentrt" and fast["precision"] == "fp32"
    figures = {(f["metric"], f["vs"]): f for f in fast["figures"]}
    assert figures[("unet_step", "diffusers-bf16")]["speedup"] == report["ratios"]["diffusers-bf16"]["speedup"]["unet_step"]
    assert figures[("unet_step", "diffusers-bf16")]["met"] in (True, False)
    assert figures[("unet_step", "optimum-intel")]["speedup"] is None  # not run: reported as such
    markdown = (tmp_path / "bench.md").read_text()
    assert "| diffusers-bf16 |" in markdown and "**Fastest latentrt path: `latentrt`**" in markdown
    assert "| diffusers-bf16 / latentrt (time), latentrt / diffusers-bf16 (RSS) |" in markdown


@pytest.mark.optimum
def test_bench_with_optimum(tiny_src, tmp_path):
    report = _bench(tiny_src, tmp_path, "latentrt,diffusers,optimum")
    _check_common(report, ["latentrt", "diffusers", "optimum"])
    assert report["agreement_vs_reference"]["optimum"]["psnr_db"] >= IMAGE_MIN_PSNR_DB
    assert report["systems"]["optimum"]["info"]["providers"][0] == "CPUExecutionProvider"
    assert set(report["ratios"]["optimum"]["speedup"]) == set(METRICS)


def test_bench_latentrt_paths(tiny_src, tmp_path):
    """latentrt-openvino (OpenVINO, precision auto), latentrt-int8 (ONNX Runtime on `latentrt quantize`'s folder,
    made once) and latentrt-openvino-int8 (OpenVINO on that folder)."""
    pytest.importorskip("openvino")
    paths = ["latentrt-openvino", "latentrt-int8", "latentrt-openvino-int8"]
    out = tmp_path / "bench.json"
    args = ["bench", str(tiny_src), "--runs", "1", "--steps", "2", "--threads", "1", "--systems",
            ",".join([*paths, "diffusers"]), "--cache", str(tmp_path / "cache"), "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(out.read_text())
    assert list(report["systems"]) == [*paths, "diffusers"]
    ov = report["systems"]["latentrt-openvino"]
    _check_system(ov)
    assert ov["info"]["provider"] == "openvino" and ov["modules_imported"] == []
    assert ov["info"]["precision"] in ("bf16", "fp32")  # auto: bf16 where the CPU runs it natively
    assert ov["first_load"] is None and ov["load_cold"] > 0  # latentrt rows' first process: the cold-cache load
    assert ov["load_cache_written_mb"] is None and ov["info"]["load_cache"] is None  # OpenVINO: no load cache
    assert ov["info"]["compiled_model_cache"] is False  # the opt-in blob cache stays off
    for name in paths:
        assert report["systems"][name]["ttfi"] > 0 and report["systems"][name]["ttfi_psnr_vs_run_db"] == 100, name
    assert report["agreement_vs_reference"]["latentrt-openvino"]["psnr_db"] > 20
    assert report["ratios"] == {}  # `ratios` is against latentrt (ONNX Runtime fp32), not run here
    assert set(report["ratios_by_latentrt_path"]) == set(paths)
    assert report["fast_path"]["system"] in paths
    int8 = report["systems"]["latentrt-int8"]
    assert int8["info"]["folder"] == report["folders"]["latentrt-int8"] != report["folders"]["latentrt"]
    assert "int8" in int8["info"]["precision"] and int8["info"]["provider"] == "cpu"
    assert report["agreement_vs_reference"]["latentrt-int8"]["psnr_db"] > 10
    ov_int8 = report["systems"]["latentrt-openvino-int8"]
    assert ov_int8["info"]["folder"] == int8["info"]["folder"] and ov_int8["info"]["provider"] == "openvino"
    assert ov_int8["info"]["precision"].startswith("int8+")


def test_bench_modes_load_cache_and_time_to_first_image(tiny_src, tmp_path, monkeypatch):
    """--modes default,low_memory: a row per latentrt mode, each with its cold and warm load, time to first image
    (a fresh `latentrt generate`, diffusers' --first-image script) and peak RSS; the load cache is the run's own
    (a temporary folder, removed after), never the user's."""
    import tempfile

    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("LATENTRT_CACHE", str(user_cache))  # what the workers must not use
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the run's load cache is made
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["bench", str(tiny_src), "--runs", "1", "--steps", "2", "--threads", "1", "--systems", "latentrt,diffusers",
            "--modes", "default,low_memory", "--cache", str(tmp_path / "cache"), "--json", str(out), "--markdown", str(md)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(out.read_text())
    rows = ["latentrt", "latentrt (low_memory)", "diffusers"]
    assert list(report["systems"]) == rows and report["settings"]["modes"] == ["default", "low_memory"]
    for name in rows[:2]:
        m = report["systems"][name]
        _check_system(m)
        for key in ("load_cold", "load_warm", "ttfi", "peak_rss_mb", "ttfi_peak_rss_mb", "load_cache_written_mb"):
            assert m[key] > 0, (name, key)
        assert m["load_warm"] == m["load"] and m["min"]["ttfi"] <= m["ttfi"] <= m["max"]["ttfi"]
        assert m["info"]["load_cache"] == "onnxruntime" and m["modules_imported"] == []
        assert m["ttfi_psnr_vs_run_db"] == 100  # the first image is the timed run's image
        assert report["embedding"]["rows"][name]["ttfi"] == m["ttfi"]
        assert report["embedding"]["vs_reference"][name]["ttfi"] > 0
        assert report["embedding"]["vs_reference"][name]["peak_rss"] > 0
        assert report["embedding"]["ttfi_commands"][name].startswith("latentrt generate ")
    default, low = report["systems"]["latentrt"], report["systems"]["latentrt (low_memory)"]
    assert (default["mode"], low["mode"], low["system"]) == ("default", "low_memory", "latentrt")
    assert low["info"]["low_memory"] is True and default["info"]["low_memory"] is False
    assert low["cache_fill_after_load_s"] > 0 and default["cache_fill_after_load_s"] is None
    assert "--low-memory" in report["embedding"]["ttfi_commands"]["latentrt (low_memory)"]
    assert "--low-memory" not in report["embedding"]["ttfi_commands"]["latentrt"]
    assert report["agreement_vs_reference"]["latentrt (low_memory)"]["psnr_db"] >= IMAGE_MIN_PSNR_DB
    ref = report["systems"]["diffusers"]
    assert ref["ttfi"] > 0 and ref["ttfi_peak_rss_mb"] > 0 and ref["ttfi_psnr_vs_run_db"] > 40
    assert ref["load_cold"] is None and ref["load_warm"] is None and ref["mode"] == "default"
    assert "--first-image" in report["embedding"]["ttfi_commands"]["diffusers"]
    assert set(report["ratios_by_latentrt_path"]) == {"latentrt", "latentrt (low_memory)"}
    text = md.read_text()
    assert "| system (mode) | load, cold cache | load, warm cache | time to first image | peak RSS |" in text
    assert text.count("| latentrt (low_memory) |") == 3  # times table, load/TTFI table, roof table
    assert "| diffusers / latentrt (low_memory) (time), latentrt (low_memory) / diffusers (RSS) |" in text
    assert not list(temp.iterdir())  # the run's load cache is gone
    assert not (user_cache / "onnxruntime").exists()  # and the user's was never touched


@pytest.mark.parametrize("task,strength", [("img2img", "0.5"), ("inpaint", "0.75")])
def test_bench_image_tasks(tiny_src, tmp_path, task, strength):
    """--task img2img / inpaint: the harness's init image (and mask) for every system, the VAE encode timed, the
    images comparable with diffusers' (the same NumPy noise), no time to first image."""
    from PIL import Image

    report = _bench(tiny_src, tmp_path, "latentrt,diffusers", "--task", task, "--strength", strength, steps=4)
    settings = report["settings"]
    assert (settings["task"], settings["strength"]) == (task, float(strength))
    assert settings["metrics"] == ["load", "text_encoder", "vae_encode", "unet_step", "vae_decode", "end_to_end"]
    steps_run = int(4 * float(strength))  # pndm: one UNet call more than the steps that run (its first step)
    for name in ("latentrt", "diffusers"):
        system = report["systems"][name]
        _check_system(system)
        assert 0 < system["min"]["vae_encode"] <= system["vae_encode"] <= system["max"]["vae_encode"]
        assert system["ttfi"] is None and system["info"]["task"] == task
        assert system["unet_calls_per_image"] == steps_run + 1, name
        assert system["deterministic_across_runs"]
    # diffusers' inpainting also encodes the masked image (unused by a 4-channel UNet); latentrt does not
    assert report["systems"]["latentrt"]["vae_encode_calls_per_image"] == 1
    assert report["systems"]["diffusers"]["vae_encode_calls_per_image"] == (2 if task == "inpaint" else 1)
    assert report["systems"]["latentrt"]["info"]["vae_encoder_first_call_s"] > 0
    assert set(report["ratios"]["diffusers"]["speedup"]) == set(settings["metrics"])
    assert report["psnr_vs_reference_db"] >= IMAGE_MIN_PSNR_DB  # the same NumPy draws: the same image
    workdir = Path(report["workdir"])
    image = Image.open(workdir / "init.png")
    assert image.size == (64, 64) and image.mode == "RGB"
    assert (workdir / "mask.png").is_file() == (task == "inpaint")
    markdown = (tmp_path / "bench.md").read_text()
    assert f"**Task: {task}**" in markdown and "| VAE encode |" in markdown


@pytest.mark.parametrize("guidance", ["5", "0"])  # 0: SDXL-Turbo's
def test_bench_sdxl(tiny_sdxl_src, tmp_path, guidance):
    """SRC an SDXL folder: latentrt's export of it against StableDiffusionXLPipeline, both systems' stages timed
    (diffusers' UNet calls with added_cond_kwargs), the same latents giving the same image; guidance 0 (SDXL-Turbo's
    settings): no CFG, UNet batch 1, in both systems."""
    cache = tiny_sdxl_src.parent / "cache"  # latentrt's export of the folder, made once for both guidances
    report = _bench(tiny_sdxl_src, tmp_path, "latentrt,diffusers", "--guidance", guidance, cache=cache)
    settings = report["settings"]
    assert settings["family"] == "sdxl" and settings["scheduler"] == "euler"  # the folder's own
    assert (settings["height"], settings["width"], settings["steps"], settings["runs"]) == (64, 64, 2, 1)
    assert settings["latent_shape"] == [1, 4, 16, 16]  # the tiny VAE downsamples by 4
    assert settings["cfg"] == (guidance != "0") and settings["unet_batch"] == (1 if guidance == "0" else 2)
    assert list(report["systems"]) == ["latentrt", "diffusers"]
    for name in ("latentrt", "diffusers"):
        system = report["systems"][name]
        _check_system(system)
        assert system["unet_calls_per_image"] == 2 and system["ttfi"] > 0, name
    assert report["systems"]["diffusers"]["info"]["pipeline"] == "StableDiffusionXLPipeline"
    assert report["systems"]["diffusers"]["info"]["family"] == "sdxl"
    assert report["systems"]["latentrt"]["modules_imported"] == []
    assert report["psnr_vs_reference_db"] >= IMAGE_MIN_PSNR_DB  # the same latents: the same image
    assert report["roof"]["flops_source"].startswith("manifest") and report["roof"]["unet_flops_per_call"] > 0
    assert "StableDiffusionXLPipeline" in (tmp_path / "bench.md").read_text()


def test_sdxl_refusals(tiny_sdxl_src, tmp_path):
    """optimum's worker runs SD 1.x/2.x pipelines only (optimum-intel's runs SDXL too); an SDXL refiner has no
    text-to-image pipeline."""
    from latentrt.bench.settings import BenchConfig, BenchError, resolve_settings
    from latentrt.export.tiny import build_tiny_pipeline

    with pytest.raises(BenchError, match=r"optimum cannot run .*an SDXL model: its worker runs Stable "
                                         r"Diffusion 1.x/2.x pipelines only"):
        resolve_settings(BenchConfig(src=tiny_sdxl_src, systems=("latentrt", "optimum", "optimum-intel")))
    settings = resolve_settings(BenchConfig(src=tiny_sdxl_src, systems=("latentrt", "diffusers-bf16"), task="inpaint"))
    assert settings["family"] == "sdxl" and settings["task"] == "inpaint"
    refiner = tmp_path / "tiny-sdxl-refiner"
    build_tiny_pipeline(refiner, "sdxl-refiner")
    with pytest.raises(BenchError, match="an SDXL refiner .* it runs --task img2img or --task inpaint only"):
        resolve_settings(BenchConfig(src=refiner, systems=("latentrt", "diffusers")))
    assert resolve_settings(BenchConfig(src=refiner, systems=("latentrt", "diffusers"), task="img2img"))["family"] == "sdxl"


def _cli_refuses(src, tmp_path, options: list[str], message: str) -> None:
    """`latentrt bench SRC --systems latentrt OPTIONS` exits 2 with the message, before anything ran."""
    args = ["bench", str(src), "--systems", "latentrt", *options, "--cache", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "cache").exists()  # refused before anything ran


def test_bad_tasks_are_clear_errors(tiny_src, tmp_path):
    from latentrt.bench.settings import BenchConfig, BenchError, resolve_settings

    _cli_refuses(tiny_src, tmp_path, ["--task", "outpaint"], "unknown task 'outpaint': --task takes one of txt2img, img2img, inpaint")
    for strength in (0.0, -0.5, 1.5):
        with pytest.raises(BenchError, match=r"--strength must be a number in \(0, 1\]"):
            resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), task="img2img", strength=strength))
    with pytest.raises(BenchError, match="leaves no step to run"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), steps=4, task="inpaint", strength=0.2))
    with pytest.raises(BenchError, match="--strength applies to the image tasks only"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), strength=0.5))
    with pytest.raises(BenchError, match=r"optimum cannot run --task img2img: its worker does text to image only; "
                                         r"leave it out of --systems"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt", "optimum"), task="img2img"))
    with pytest.raises(BenchError, match="optimum, optimum-intel cannot run --task inpaint: their workers do"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt", "optimum", "optimum-intel"), task="inpaint"))
    settings = resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt", "diffusers-bf16"), task="inpaint"))
    assert settings["strength"] == 1.0 and settings["task"] == "inpaint"  # the pipeline's (diffusers') default
    img2img = resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), task="img2img"))
    assert img2img["strength"] == 0.8
    assert resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",)))["strength"] is None


def test_bad_modes_are_clear_errors(tiny_src, tmp_path):
    from latentrt.bench.settings import BenchConfig, BenchError, resolve_settings

    _cli_refuses(tiny_src, tmp_path, ["--modes", "default,lowmem"],
                 "unknown modes ['lowmem']: --modes takes a comma-separated list of default, low_memory")
    with pytest.raises(BenchError, match="unknown modes"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), modes=()))
    with pytest.raises(BenchError, match="names a mode twice"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), modes=("low_memory", "low_memory")))
    with pytest.raises(BenchError, match="default-mode row"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), modes=("low_memory",), fast_path="latentrt"))


def test_rows_per_mode():
    from latentrt.bench.settings import bench_rows

    assert bench_rows(("latentrt-openvino-int8", "diffusers", "optimum"), ("default", "low_memory")) == [
        ("latentrt-openvino-int8", "latentrt-openvino-int8", "default"),
        ("latentrt-openvino-int8 (low_memory)", "latentrt-openvino-int8", "low_memory"),
        ("diffusers", "diffusers", "default"),  # the other systems have no modes: one row each
        ("optimum", "optimum", "default"),
    ]
    assert bench_rows(("latentrt",), ("low_memory",)) == [("latentrt (low_memory)", "latentrt", "low_memory")]


def test_bench_on_a_model_folder(tmp_path):
    """SRC a latentrt model folder (the shipped model): the latentrt path runs it as it is, no export, no torch."""
    from latentrt.models import default_model_path

    model = default_model_path()
    out = tmp_path / "bench.json"
    args = ["bench", str(model), "--runs", "1", "--steps", "1", "--threads", "1", "--systems", "latentrt",
            "--cache", str(tmp_path / "cache"), "--json", str(out), "--markdown", str(tmp_path / "bench.md")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(out.read_text())
    assert list(report["systems"]) == ["latentrt"] and report["folders"] == {"latentrt": str(model.resolve())}
    _check_system(report["systems"]["latentrt"])
    assert report["systems"]["latentrt"]["modules_imported"] == []
    assert report["roof"]["flops_source"].startswith("manifest")
    assert report["agreement_vs_reference"] == {} and report["ratios"] == {}
    assert (report["settings"]["height"], report["settings"]["width"]) == (64, 64)  # the model's native size
    assert "| latentrt |" in (tmp_path / "bench.md").read_text()
    assert not list((tmp_path / "cache").glob("*/latentrt"))  # nothing exported


def test_bench_imports_nothing_heavy():
    """The harness, its roof and plot modules, the workers' protocol and the CLI import neither torch nor onnx."""
    script = (
        "import sys, latentrt.cli, latentrt.bench.harness, latentrt.bench.roof, latentrt.bench.plot, "
        "latentrt.bench.systems.protocol; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'diffusers', 'transformers', 'onnx', 'optimum', 'matplotlib')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_roof_model_is_what_onnx_helper_builds(tmp_path):
    """The GEMM model is written without the onnx package, byte for byte what onnx.helper builds."""
    import numpy as np

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from latentrt.bench.roof import build_gemm_model, measure

    m, k, n = 3, 5, 4
    path = build_gemm_model(tmp_path / "gemm.onnx", m, k, n)
    w = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm_roof",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert path.read_bytes() == model.SerializeToString()
    onnx.checker.check_model(onnx.load(str(path)))
    assert measure(path, threads=1, repeats=1)["m"] == m


def test_systems_the_source_cannot_run_are_clear_errors(tiny_src, tmp_path, monkeypatch):
    from latentrt.bench import peers, settings
    from latentrt.bench.settings import BenchConfig, BenchError, resolve_settings
    from latentrt.models import default_model_path

    model = default_model_path()
    with pytest.raises(BenchError, match="diffusers, diffusers-bf16 need a diffusers folder as SRC"):
        resolve_settings(BenchConfig(src=model, systems=("latentrt", "diffusers", "diffusers-bf16")))
    with pytest.raises(BenchError, match="nor a latentrt model folder"):
        resolve_settings(BenchConfig(src=tmp_path, systems=("latentrt",)))
    # a wheel install: no benchmarks/peers beside the package
    monkeypatch.setattr(peers, "SOURCE_ROOT", tmp_path)
    with pytest.raises(BenchError, match=r"optimum-intel runs in a virtual environment built from benchmarks/peers/, which only latentrt's source checkout"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt", "optimum-intel")))
    # diffusers without torch and diffusers installed
    monkeypatch.setitem(settings.SYSTEM_MODULES, "diffusers", ("latentrt_no_such_module",))
    with pytest.raises(BenchError, match="diffusers needs latentrt_no_such_module, not installed here"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt", "diffusers")))


# ------------------------------------------------------------------ the harness's tables (no process started)


def test_every_system_has_a_worker():
    from latentrt.bench.peers import PEERS
    from latentrt.bench.processes import WORKERS
    from latentrt.bench.settings import LATENTRT_PATHS, SYSTEMS

    assert set(WORKERS) == set(SYSTEMS) and set(LATENTRT_PATHS) <= set(SYSTEMS)
    for name, path in WORKERS.items():
        assert path.is_file(), (name, path)
    assert WORKERS["diffusers-bf16"] == WORKERS["diffusers"]
    assert WORKERS["optimum-intel"].name == "optimum_intel_worker.py"
    assert {WORKERS[p] for p in LATENTRT_PATHS} == {WORKERS["latentrt"]}
    assert set(PEERS) == {"optimum", "optimum-intel"}


def test_bad_systems_and_fast_path_are_clear_errors(tiny_src):
    from latentrt.bench.settings import BenchConfig, BenchError, resolve_settings

    with pytest.raises(BenchError, match="unknown systems"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt", "pytorch")))
    with pytest.raises(BenchError, match="fast path"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt", "diffusers"), fast_path="latentrt-openvino"))


def _system(load: float, unet: float, e2e: float, precision: str = "fp32") -> dict:
    times = {"load": load, "text_encoder": 0.1, "unet_step": unet, "vae_decode": 1.0, "end_to_end": e2e}
    return {**times, "peak_rss_mb": 1000.0, "info": {"precision": precision}}


def test_fast_path_figures_met_and_missed():
    from latentrt.bench.report import fast_path_figures, fast_path_lines, speedup_ratios
    from latentrt.bench.settings import LATENTRT_PATHS

    systems = {
        "latentrt": _system(10.0, 2.0, 30.0),
        "latentrt-openvino": _system(3.0, 0.5, 8.0, "bf16"),
        "diffusers": _system(1.0, 2.5, 40.0),
        "diffusers-bf16": _system(1.0, 1.2, 20.0, "bfloat16 autocast (fp32 weights)"),
        "optimum-intel": _system(4.0, 0.6, 9.0, "bf16"),
    }
    by_path = {p: speedup_ratios(systems, p) for p in LATENTRT_PATHS if p in systems}
    assert set(by_path["latentrt-openvino"]) == {"latentrt", "diffusers", "diffusers-bf16", "optimum-intel"}
    fast = fast_path_figures(systems, by_path, None)
    assert fast["system"] == "latentrt-openvino" and fast["precision"] == "bf16"  # the lowest end to end
    got = {(f["metric"], f["vs"]): (round(f["speedup"], 3), f["met"]) for f in fast["figures"]}
    assert got[("unet_step", "diffusers")] == (5.0, True)  # goal 4.5x
    assert got[("unet_step", "diffusers-bf16")] == (2.4, True)  # goal 2x
    assert got[("unet_step", "optimum-intel")] == (1.2, False)  # goal 1.25x
    assert got[("end_to_end", "optimum-intel")] == (1.125, False)
    assert got[("load", "optimum-intel")] == (1.333, True)  # loads in less than optimum-intel's time
    assert got[("end_to_end", "diffusers")] == (5.0, None)  # no goal: reported only
    named = fast_path_figures(systems, by_path, "latentrt")
    assert named["system"] == "latentrt" and named["chosen_by"] == "named"
    text = "\n".join(fast_path_lines(fast))
    assert "| UNet call | 5.00x (goal ≥ 4.5x: met) | 2.40x (goal ≥ 2x: met) | 1.20x (goal ≥ 1.25x: missed) |" in text
    assert "| load | 0.33x | 0.33x | 1.33x (goal ≥ 1x: met) |" in text


# ------------------------------------------------------------------ one command line, imports that run downwards


def test_bench_command_has_an_option_for_every_config_field():
    """`latentrt bench` (typer) is the bench's one command line: every BenchConfig field has its option, so the two
    cannot drift apart again; `python -m latentrt.bench.harness` runs that same command."""
    import dataclasses
    import os

    import typer.main

    from latentrt.bench.settings import BenchConfig

    params = {p.name for p in typer.main.get_command(app).commands["bench"].params}
    fields = {f.name for f in dataclasses.fields(BenchConfig)} - {"command", "progress"}  # the command sets these
    assert fields <= params, sorted(fields - params)
    out = subprocess.run([sys.executable, "-m", "latentrt.bench.harness", "--help"], capture_output=True, text=True,
                         check=True, env={**os.environ, "COLUMNS": "200"})
    for option in ("--cache-interval", "--fast-path", "--optimum-intel-model-cache", "--no-ttfi", "--batch"):
        assert option in out.stdout, option


def test_cache_intervals_are_ints(tiny_src):
    from latentrt.bench.settings import BenchConfig, BenchError, bench_rows, resolve_settings, row_modes

    assert bench_rows(("latentrt", "diffusers"), ("default",), (3,)) == [
        ("latentrt", "latentrt", "default"),
        ("latentrt (cache interval 3)", "latentrt", "cache3"),  # the report's mode label
        ("diffusers", "diffusers", "default"),
    ]
    cfg = BenchConfig(src=tiny_src, systems=("latentrt",), cache_intervals=(3, 5))
    assert row_modes(cfg)["cache5"] == {"mode": "default", "cache_interval": 5, "vae": "full"}  # what the worker gets: an int
    for bad in ((1,), ("3",), (3, 3)):
        with pytest.raises(BenchError, match="--cache-interval"):
            resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), cache_intervals=bad))
    result = CliRunner().invoke(app, ["bench", str(tiny_src), "--cache-interval", "3,x"])
    assert result.exit_code == 2 and "whole numbers >= 2" in result.output


def test_the_package_imports_nothing_from_the_checkout():
    """No module under latentrt/ imports benchmarks, training or tests: the arrows run from them to the package."""
    import ast

    package = Path(__file__).resolve().parents[1] / "latentrt"
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names = [node.args[0].value]
            else:
                continue
            found += [f"{path.relative_to(package.parent)}: {name}" for name in names
                      if name.split(".")[0] in ("benchmarks", "training", "tests")]
    assert found == []


@pytest.mark.slow  # about 3 minutes: the export of the tiny model with its ControlNet, validated, then both systems
def test_bench_controlnet(tmp_path):
    """--task controlnet: one ControlNet (exported with the model) for latentrt, StableDiffusionControlNetPipeline for
    diffusers, the same control map; the ControlNet's calls timed beside the UNet's; the images agree."""
    from controlnet_models import build_controlnet_source
    from PIL import Image

    source = build_controlnet_source(tmp_path / "src", "sd1", ("edges",))
    report = _bench(source.src, tmp_path, "latentrt,diffusers", "--task", "controlnet", "--controlnet",
                    str(source.controlnets["edges"]), steps=3)
    settings = report["settings"]
    assert (settings["task"], settings["controlnet"]) == ("controlnet", "edges")
    assert settings["metrics"] == ["load", "text_encoder", "controlnet_step", "unet_step", "vae_decode", "end_to_end"]
    for name in ("latentrt", "diffusers"):
        system = report["systems"][name]
        _check_system(system)
        assert 0 < system["min"]["controlnet_step"] <= system["controlnet_step"] <= system["max"]["controlnet_step"]
        assert system["controlnet_calls_per_image"] == system["unet_calls_per_image"] == 4  # pndm: steps + 1
        assert system["ttfi"] is None
    assert report["systems"]["latentrt"]["info"]["controlnet"] == "edges"
    assert report["systems"]["diffusers"]["info"]["pipeline"] == "StableDiffusionControlNetPipeline"
    assert report["systems"]["latentrt"]["modules_imported"] == []
    assert report["psnr_vs_reference_db"] >= IMAGE_MIN_PSNR_DB
    assert set(report["ratios"]["diffusers"]["speedup"]) == set(settings["metrics"])
    control = Image.open(Path(report["workdir"]) / "control.png")
    assert control.size == (64, 64) and set(control.getextrema()[0]) == {0, 255}  # edges on black
    assert "controlnet/edges" in json.loads((Path(report["folders"]["latentrt"]) / "manifest.json").read_text())["components"]
    markdown = (tmp_path / "bench.md").read_text()
    assert "**Task: controlnet**" in markdown and "| ControlNet call |" in markdown and "A ControlNet step" in markdown


def test_bench_controlnet_refusals(tiny_src, tmp_path):
    from latentrt.bench.settings import BenchConfig, BenchError, resolve_settings

    with pytest.raises(BenchError, match="--task controlnet needs --controlnet DIR"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), task="controlnet"))
    with pytest.raises(BenchError, match="--controlnet gives --task controlnet its ControlNet: add --task controlnet"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), controlnet=tmp_path))
    with pytest.raises(BenchError, match="latentrt-int8 cannot run --task controlnet"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt", "latentrt-int8"), task="controlnet", controlnet=tmp_path))
    with pytest.raises(BenchError, match="is not a diffusers ControlNetModel folder"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), task="controlnet", controlnet=tmp_path))
    with pytest.raises(BenchError, match="--strength applies to the image tasks only"):
        resolve_settings(BenchConfig(src=tiny_src, systems=("latentrt",), task="controlnet", controlnet=tmp_path, strength=0.5))
