"""provider="auto": the measured rule per kind of CPU (simulated by its flags) and folder (small/full-size, float/int8),
what `latentrt info` says about it, and explicit choices left as asked."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

import latentrt.runtime.auto_backend as auto_module
import latentrt.runtime.backend as backend_module
from latentrt.cli import app
from latentrt.models import default_model_path
from latentrt.runtime.auto_backend import SMALL_UNET_GFLOP, auto_choice, cpu_kind, unet_size
from latentrt.runtime.backend import resolve_backend
from latentrt.runtime.folder import ModelFolder

FLAGS = {  # the flags that decide, as /proc/cpuinfo lists them on each machine latentrt runs on
    "amx": {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"},  # Xeon (Sapphire Rapids)
    "avx512-bf16": {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"},  # EPYC Zen 4
    "avx512": {"avx2", "avx512f", "avx512_vnni"},  # Xeon Cascade Lake
    "avx2": {"avx2", "fma"},  # EPYC Zen 2/3
    "other": {"neon"},
}
SHAPES = ModelFolder.open(default_model_path())


def full_size(folder: ModelFolder, int8: bool = False) -> ModelFolder:
    """The folder as if its UNet were SD 1.5's (803 GFLOP per image at 512px), optionally quantized."""
    unet = folder.components["unet"]
    entry = dict(unet.manifest or {})
    entry["flops"] = {"a": 3e9, "b": 0.0, "c": 1e9}  # at its 16x16 latents: 769 GFLOP, as SD 1.5 at 64x64
    if int8:
        entry["precision"] = "int8-qdq"
    return replace(folder, components={**folder.components, "unet": replace(unet, manifest=entry)})


@pytest.mark.parametrize("kind", sorted(FLAGS))
def test_cpu_kind_from_flags(kind):
    assert cpu_kind(FLAGS[kind]) == kind


@pytest.mark.parametrize("kind, int8, expected", [
    ("amx", False, "openvino"), ("amx", True, "openvino"),
    ("avx512-bf16", False, "openvino"), ("avx512-bf16", True, "openvino"),
    ("avx512", False, "cpu"), ("avx512", True, "cpu"),
    ("avx2", False, "cpu"), ("avx2", True, "cpu"),  # AVX2 EPYC: ONNX Runtime as fast on fp32, faster on int8
    ("other", False, "cpu"), ("other", True, "cpu"),
])
def test_rule_for_full_size_folders(kind, int8, expected):
    folder = full_size(SHAPES, int8)
    assert not unet_size(folder)[0]
    choice = auto_choice(folder, openvino=True, bf16=kind in ("amx", "avx512-bf16"), flags=FLAGS[kind])
    assert choice.provider == expected
    assert ("int8 folder" if int8 else "float folder") in choice.reason


@pytest.mark.parametrize("kind", sorted(FLAGS))
def test_small_models_run_on_onnx_runtime_everywhere(kind):
    small, why = unet_size(SHAPES)
    assert small and f"< {SMALL_UNET_GFLOP:g}" in why
    choice = auto_choice(SHAPES, openvino=True, bf16=True, flags=FLAGS[kind])
    assert choice.provider == "cpu" and "small model" in choice.reason and "compilation" in choice.reason


def test_no_openvino_or_no_bf16_in_the_plugin_means_onnx_runtime():
    folder = full_size(SHAPES)
    assert auto_choice(folder, openvino=False, bf16=False, flags=FLAGS["amx"]).provider == "cpu"
    hidden = auto_choice(folder, openvino=True, bf16=False, flags=FLAGS["avx512-bf16"])
    assert hidden.provider == "cpu" and "OpenVINO runs no bf16 here" in hidden.reason


def test_a_folder_without_flops_is_sized_by_its_files(tmp_path):
    unet = SHAPES.components["unet"]
    entry = {k: v for k, v in unet.manifest.items() if k != "flops"}
    folder = replace(SHAPES, components={**SHAPES.components, "unet": replace(unet, manifest=entry)})
    small, why = unet_size(folder)
    assert small and "UNet files 11 MB" in why


@pytest.fixture
def simulated_cpu(monkeypatch):
    """Make this machine look like `kind`: its flags, OpenVINO installed, bf16 in its plugin where the kind has it."""
    from latentrt.runtime.backends import openvino as ov_backend

    def simulate(kind: str):
        monkeypatch.setattr(auto_module, "cpu_flags", lambda: frozenset(FLAGS[kind]))
        monkeypatch.setattr(backend_module, "openvino_installed", lambda: True)
        monkeypatch.setattr(ov_backend, "supports_bf16", lambda: kind in ("amx", "avx512-bf16"))

    return simulate


@pytest.mark.parametrize("kind, provider, precision", [
    ("amx", "openvino", "bf16"), ("avx512-bf16", "openvino", "bf16"), ("avx512", "cpu", "fp32"), ("avx2", "cpu", "fp32"),
])
def test_resolve_backend_follows_the_rule(simulated_cpu, kind, provider, precision):
    simulated_cpu(kind)
    backend = resolve_backend("auto", "auto", use_cache=False, folder=full_size(SHAPES))
    assert (backend.provider, backend.precision) == (provider, precision)
    assert backend.reason.startswith("OpenVINO bf16" if provider == "openvino" else "ONNX Runtime")
    int8 = full_size(SHAPES, int8=True)
    assert resolve_backend("auto", "auto", use_cache=False, folder=int8).label(int8) == f"int8+{precision}"
    small = resolve_backend("auto", "auto", use_cache=False, folder=SHAPES)
    assert small.provider == "cpu" and "small model" in small.reason


@pytest.mark.parametrize("kind", ["avx512-bf16", "avx2"])
def test_explicit_choices_are_untouched(simulated_cpu, kind):
    simulated_cpu(kind)
    big = full_size(SHAPES)
    for provider in ("cpu", "openvino"):
        for folder in (SHAPES, big):
            assert resolve_backend(provider, "fp32", use_cache=False, folder=folder).provider == provider
    ov = resolve_backend("openvino", "auto", use_cache=False, folder=SHAPES)  # a small model, OpenVINO asked: OpenVINO
    assert (ov.provider, ov.precision) == ("openvino", "bf16" if kind == "avx512-bf16" else "fp32")
    assert resolve_backend("cpu", "auto", use_cache=False, folder=big).reason == "asked"
    # ONNX Runtime's own options ask for ONNX Runtime; bf16 asks for OpenVINO
    assert resolve_backend("auto", "auto", use_cache=False, folder=big, io_binding=True).provider == "cpu"
    if kind == "avx512-bf16":
        assert resolve_backend("auto", "bf16", use_cache=False, folder=SHAPES).provider == "openvino"
        fp32 = resolve_backend("auto", "fp32", use_cache=False, folder=big)
        assert (fp32.provider, fp32.precision) == ("openvino", "fp32")


def test_info_says_what_auto_picked_and_why(simulated_cpu):
    simulated_cpu("avx2")
    result = CliRunner().invoke(app, ["info", str(default_model_path()), "--json"])
    assert result.exit_code == 0, result.output
    runtime = json.loads(result.output)["runtime"]
    assert runtime["auto"] == {"provider": "cpu", "precision": "fp32"} and runtime["cpu_kind"] == "avx2"
    assert "small model" in runtime["auto_reason"]
    text = CliRunner().invoke(app, ["info", str(default_model_path())]).output
    assert "AVX2 without AVX-512" in text and "auto here     cpu fp32" in text and "why         ONNX Runtime: small model" in text
