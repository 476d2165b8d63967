"""ONNX Runtime's optimized-model cache: same images cold and warm, rebuilt when corrupt, never in the way."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from latentrt.cli import app
from latentrt.runtime.pipeline import Pipeline

SETTINGS = dict(seed=3, steps=2, height=64, width=64)


def entries(cache: Path) -> dict[str, Path]:
    folder = cache / "onnxruntime"
    return {p.name.split("-")[0]: p for p in folder.iterdir()} if folder.is_dir() else {}


def image(pipe: Pipeline) -> np.ndarray:
    return pipe("a red circle", **SETTINGS).arrays


def test_cold_and_warm_loads_give_the_uncached_images(tiny_sd1, tmp_path):
    reference = image(Pipeline.from_folder(tiny_sd1[1], provider="cpu", use_cache=False))
    cold = Pipeline.from_folder(tiny_sd1[1], provider="cpu", cache_dir=tmp_path)
    made = entries(tmp_path)
    assert set(made) == {"text_encoder", "unet", "vae_decoder"}
    assert all((e / "model.onnx").is_file() and (e / "model.onnx_data").is_file() for e in made.values())
    stamps = {name: (e / "model.onnx").stat().st_mtime_ns for name, e in made.items()}
    warm = Pipeline.from_folder(tiny_sd1[1], provider="cpu", cache_dir=tmp_path)
    assert {name: (e / "model.onnx").stat().st_mtime_ns for name, e in entries(tmp_path).items()} == stamps  # reused
    np.testing.assert_array_equal(image(cold), reference)
    np.testing.assert_array_equal(image(warm), reference)
    assert not list(tmp_path.glob("onnxruntime/.*"))  # no half-written folders left


def test_truncated_entry_is_rebuilt_with_a_warning(tiny_sd1, tmp_path, caplog):
    reference = image(Pipeline.from_folder(tiny_sd1[1], provider="cpu", cache_dir=tmp_path))
    data = entries(tmp_path)["unet"] / "model.onnx_data"
    data.write_bytes(data.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        pipe = Pipeline.from_folder(tiny_sd1[1], provider="cpu", cache_dir=tmp_path)
    assert "cannot be loaded" in caplog.text and "rebuilding" in caplog.text
    assert data.stat().st_size > 1000  # rebuilt in place
    np.testing.assert_array_equal(image(pipe), reference)


def test_unwritable_cache_loads_without_it(tiny_sd1, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")  # root can write anywhere: this fails for everyone
    with caplog.at_level(logging.WARNING):
        pipe = Pipeline.from_folder(tiny_sd1[1], provider="cpu", cache_dir=blocker)
    assert "could not write the optimized model" in caplog.text
    reference = image(Pipeline.from_folder(tiny_sd1[1], provider="cpu", use_cache=False))
    np.testing.assert_array_equal(image(pipe), reference)


def test_no_cache_writes_nothing(tiny_sd1, tmp_path):
    Pipeline.from_folder(tiny_sd1[1], provider="cpu", cache_dir=tmp_path, use_cache=False)
    assert not any(tmp_path.iterdir())


def test_two_processes_filling_one_entry_both_succeed(tiny_sd1, tmp_path):
    script = (
        "import sys; from latentrt.runtime.pipeline import Pipeline; "
        "p = Pipeline.from_folder(sys.argv[1], provider='cpu', cache_dir=sys.argv[2]); "
        "print(int(p('a red circle', seed=3, steps=2, height=64, width=64).arrays.sum()))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tiny_sd1[1]), str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert outs[0][0] == outs[1][0]
    assert set(entries(tmp_path)) == {"text_encoder", "unet", "vae_decoder"}
    assert not list(tmp_path.glob("onnxruntime/.*"))


def test_cache_info_and_clear(tiny_sd1, tmp_path):
    Pipeline.from_folder(tiny_sd1[1], provider="cpu", cache_dir=tmp_path)
    (tmp_path / "bench").mkdir()  # the benchmarks' exports share the root and are not the model cache's to clear
    runner = CliRunner()
    result = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert len(info["entries"]) == 3 and info["bytes"] > 0
    assert all(row["source"].endswith("model.onnx") for row in info["entries"])
    result = runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0 and "removed 3 entries" in result.output
    assert entries(tmp_path) == {} and (tmp_path / "bench").is_dir()
