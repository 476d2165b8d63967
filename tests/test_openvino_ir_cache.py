"""OpenVINO's load cache: the graph as IR written once and memory-mapped, compiled models cached without weights.

The second load reads the IR and imports each shape's compiled model (same images, bit for bit), damaged entries
are rebuilt with a warning, use_cache=False writes nothing, a LoRA never gets the folder's cached graph, and
`latentrt cache` lists and clears the entries.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from latentrt import Pipeline
from latentrt.cli import app

pytest.importorskip("openvino", reason="the openvino extra is not installed")
from latentrt.runtime.backends import openvino as ov_backend

NETWORKS = {"text_encoder", "unet", "vae_decoder"}
CALL = {"steps": 2, "guidance_scale": 1.0, "seed": 4, "height": 32, "width": 32}


def entries(cache: Path) -> dict[str, Path]:
    """{network: its entry folder} under the cache root (temporary folders left out)."""
    folder = cache / "openvino"
    return {p.name.rsplit("-", 1)[0]: p for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else {}


def blobs(entry: Path) -> list[Path]:
    return sorted(entry.glob("compiled-*/*.blob"))


def image(folder: Path, **options) -> np.ndarray:
    with Pipeline.from_folder(folder, provider="openvino", precision="fp32", **options) as pipe:
        return pipe("a red circle", **CALL).arrays


def test_second_load_reads_the_ir_and_imports_the_compiled_models(tiny_sd1, tmp_path, monkeypatch, caplog):
    reference = image(tiny_sd1[1], use_cache=False)
    cold = image(tiny_sd1[1], cache_dir=tmp_path)
    made = entries(tmp_path)
    assert set(made) == NETWORKS
    for entry in made.values():
        assert (entry / "model.xml").is_file() and (entry / "model.bin").is_file()
        assert len(blobs(entry)) == 1 and blobs(entry)[0].stat().st_size < 10_000_000  # weightless: no copy of the weights
    stamps = {p: p.stat().st_mtime_ns for entry in made.values() for p in entry.rglob("*") if p.is_file()}

    def no_onnx(self):
        raise AssertionError("read model.onnx although its IR is cached")

    monkeypatch.setattr(ov_backend.OpenVinoModel, "_read_onnx", no_onnx)
    with caplog.at_level(logging.INFO, logger="latentrt"):
        warm = image(tiny_sd1[1], cache_dir=tmp_path)
    assert sum("imported from" in r.getMessage() for r in caplog.records) == 3
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    # exact on any CPU kind: all three run on this CPU with the same plugin, on the same graph (the IR is the ONNX
    # graph as OpenVINO read it, weights kept fp32), so its kernel choice is the same; only the cache differs
    np.testing.assert_array_equal(cold, reference)
    np.testing.assert_array_equal(warm, reference)
    assert not list((tmp_path / "openvino").glob(".*"))  # no half-written folders left


def test_damaged_entries_are_rebuilt_with_a_warning(tiny_sd1, tmp_path, caplog):
    reference = image(tiny_sd1[1], cache_dir=tmp_path)
    made = entries(tmp_path)
    bin_file = made["unet"] / "model.bin"
    bin_file.write_bytes(bin_file.read_bytes()[:100])  # a truncated IR
    for blob in blobs(made["vae_decoder"]):
        os.chmod(blob, 0o644)  # OpenVINO writes its blobs read-only
        blob.write_bytes(b"not a compiled model" * 10)
    with caplog.at_level(logging.WARNING, logger="latentrt"):
        again = image(tiny_sd1[1], cache_dir=tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert any("unet" in m and "IR" in m and "cannot be used" in m for m in messages)
    assert any("vae_decoder" in m and "compiled it again" in m for m in messages)
    np.testing.assert_array_equal(again, reference)
    assert bin_file.stat().st_size > 100  # the IR written again
    assert all(b.stat().st_size > 1000 for b in blobs(entries(tmp_path)["vae_decoder"]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="latentrt"):
        np.testing.assert_array_equal(image(tiny_sd1[1], cache_dir=tmp_path), reference)
    assert not caplog.records  # repaired: the next load is a clean hit


def test_no_cache_writes_nothing(tiny_sd1, tmp_path):
    image(tiny_sd1[1], cache_dir=tmp_path, use_cache=False)
    assert not any(tmp_path.iterdir())


def test_unwritable_cache_loads_without_it(tiny_sd1, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="latentrt"):
        out = image(tiny_sd1[1], cache_dir=blocker)
    assert "could not write the OpenVINO IR" in caplog.text
    np.testing.assert_array_equal(out, image(tiny_sd1[1], use_cache=False))


def test_a_lora_is_never_served_from_the_cached_graph(tiny_sd1, tmp_path, monkeypatch):
    from tests.test_lora import make_peft_lora

    lora = make_peft_lora(tiny_sd1[0], tmp_path / "lora", seed=1)
    plain = image(tiny_sd1[1], cache_dir=tmp_path / "cache")  # fills the cache with the folder's own weights
    uncached = image(tiny_sd1[1], use_cache=False, loras=[(lora, 1.0)])
    before = set(entries(tmp_path / "cache"))
    read_irs = []
    monkeypatch.setattr(ov_backend.OpenVinoModel, "_read_ir", lambda self: read_irs.append(self.name))
    adapted = image(tiny_sd1[1], cache_dir=tmp_path / "cache", loras=[(lora, 1.0)])
    assert "unet" not in read_irs and "text_encoder" not in read_irs  # the adapted networks bypass the cache
    np.testing.assert_array_equal(adapted, uncached)
    assert not np.array_equal(adapted, plain)
    assert set(entries(tmp_path / "cache")) == before


def test_two_processes_fill_the_same_cache_at_once(tiny_sd1, tmp_path):
    script = (
        "import sys; from latentrt import Pipeline; "
        "p = Pipeline.from_folder(sys.argv[1], provider='openvino', precision='fp32', cache_dir=sys.argv[2]); "
        "r = p('x', steps=2, guidance_scale=1.0, height=32, width=32, seed=5); print(int(r.arrays.sum()))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tiny_sd1[1]), str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    assert outputs[0][0] == outputs[1][0]
    assert set(entries(tmp_path)) == NETWORKS
    assert all(len(blobs(entry)) == 1 for entry in entries(tmp_path).values())
    assert not list((tmp_path / "openvino").rglob(".*.tmp"))  # no half-written entry left behind


def test_cache_keys_follow_precision_and_cpu_shape(tiny_sd1, tmp_path):
    Pipeline.from_folder(tiny_sd1[1], provider="openvino", precision="fp32", cache_dir=tmp_path).compile(32, 32, 1, 1.0)
    Pipeline.from_folder(tiny_sd1[1], provider="openvino", precision="fp32", cache_dir=tmp_path).compile(48, 32, 1, 1.0)
    made = entries(tmp_path)
    assert set(made) == NETWORKS  # one IR per network, whatever the shapes
    assert len(blobs(made["unet"])) == len(blobs(made["vae_decoder"])) == 2 and len(blobs(made["text_encoder"])) == 1
    if ov_backend.supports_bf16():
        Pipeline.from_folder(tiny_sd1[1], provider="openvino", precision="bf16", cache_dir=tmp_path).compile(32, 32, 1, 1.0)
        assert len(blobs(entries(tmp_path)["unet"])) == 3  # no compiled model shared between precisions


def test_cache_info_lists_and_clear_removes_the_entries(tiny_sd1, tmp_path):
    image(tiny_sd1[1], cache_dir=tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = [row for row in json.loads(result.output)["entries"] if row["backend"] == "openvino"]
    assert len(rows) == 3 and all(row["bytes"] > 0 and row["source"].endswith("model.onnx") for row in rows)
    result = runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0 and "removed" in result.output
    assert entries(tmp_path) == {}


def test_parallel_compiles_from_the_cache_keep_the_process_locale(tmp_path):
    """Compiling the networks at once from a warm cache once left the process in the "C" locale (Python's default
    text encoding then ASCII); the backend puts the locale back."""
    import locale

    start = locale.setlocale(locale.LC_ALL)
    for _ in range(4):
        with Pipeline.default(provider="openvino", precision="fp32", cache_dir=tmp_path) as pipe:
            pipe.compile(64, 64)
            pipe.compile(48, 32, batch=2)
        assert locale.setlocale(locale.LC_ALL) == start
