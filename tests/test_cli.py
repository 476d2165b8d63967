"""The CLI: generate writes PNGs with A1111 parameters, refuses to overwrite; info; export errors."""

from __future__ import annotations

from PIL import Image
from typer.testing import CliRunner

from latentrt.cli import app

runner = CliRunner()


def test_generate_writes_png_with_parameters(tiny_sd1, tmp_path):
    out = tmp_path / "fox.png"
    args = ["generate", "a watercolor fox", "-m", str(tiny_sd1[1]), "-o", str(out), "--steps", "3",
            "--guidance", "7.5", "--seed", "42", "--negative", "blurry", "--scheduler", "euler", "--provider", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        text = image.text["parameters"]
        assert image.size == (64, 64)
    assert text.splitlines() == [
        "a watercolor fox",
        "Negative prompt: blurry",
        f"Steps: 3, Sampler: euler, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: {tiny_sd1[1].name}, Backend: cpu, "
        "Precision: fp32",
    ]
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(app, args + ["--force"]).exit_code == 0


def test_generate_many_and_same_seed_same_image(tiny_sd1, tmp_path):
    args = ["generate", "a fox", "-m", str(tiny_sd1[1]), "--steps", "2", "--seed", "3", "-n", "2"]
    assert runner.invoke(app, args + ["-o", str(tmp_path / "a.png")]).exit_code == 0
    assert runner.invoke(app, args + ["-o", str(tmp_path / "b.png")]).exit_code == 0
    a1, a2, b1 = (Image.open(tmp_path / n).tobytes() for n in ("a_1.png", "a_2.png", "b_1.png"))
    assert a1 == b1 and a1 != a2


def test_generate_bad_input_exits_cleanly(tiny_sd1, tmp_path):
    out = tmp_path / "x.png"
    result = runner.invoke(app, ["generate", "x", "-m", str(tiny_sd1[1]), "-o", str(out), "--height", "66"])
    assert result.exit_code == 2
    assert "height must be a multiple of 4" in result.output
    assert not out.exists()
    result = runner.invoke(app, ["generate", "x", "-m", str(tmp_path), "-o", str(out)])
    assert result.exit_code == 2 and "not an ONNX model folder" in result.output


def test_info(tiny_sd2):
    result = runner.invoke(app, ["info", str(tiny_sd2[1]), "--verify"])
    assert result.exit_code == 0, result.output
    for expected in ("unet", "timestep", "v_prediction", "cpu", "all files match"):
        assert expected in result.output
    from latentrt.runtime.schedulers import available_schedulers

    for name in available_schedulers():
        assert name in result.output


def test_export_refuses_non_pipeline(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "model_index.json" in result.output
