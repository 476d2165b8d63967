"""The package stands alone: a wheel of this tree, installed in a fresh virtual environment with its runtime
dependencies only (never torch), generates and benchmarks from a folder outside the checkout.

Needs the package index pip is configured with (the wheel's dependencies, and setuptools for the isolated
build); about a minute, most of it pip. Marked slow: `python -m pytest -m "not slow and not optimum"` skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Variables that would let the fresh venv's interpreter see this environment's packages
_DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")


def _env(venv: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env["PYTHONNOUSERSITE"] = "1"
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd: list, cwd: Path, venv: Path | None = None, timeout: float = 900, check: bool = True):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(venv), capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check:
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """{"wheel", "venv", "work"}: the wheel, a fresh venv holding it and its dependencies, an empty folder.

    Removed after the module's tests (a few hundred MB that pytest would otherwise keep for three runs)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what the wheel is made of (the top-level files and latentrt/): an in-tree build
    # would leave build/ in the checkout, and setuptools would package whatever stale modules it holds.
    src = tmp / "src"
    src.mkdir()
    for path in ROOT.iterdir():
        if path.is_file():
            shutil.copy2(path, src / path.name)
    shutil.copytree(ROOT / "latentrt", src / "latentrt", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", src, "-w", tmp / "dist"],
         cwd=tmp)
    (wheel,) = (tmp / "dist").glob("latentrt-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp)
    constraints = tmp / "constraints.txt"
    constraints.write_text("torch<0\n")  # anything that asks for torch fails to resolve
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", constraints, wheel],
         cwd=tmp, venv=venv)
    work = tmp / "work"  # the commands run here: outside the checkout, nothing of the source tree
    work.mkdir()
    yield {"wheel": wheel, "venv": venv, "work": work}
    shutil.rmtree(tmp, ignore_errors=True)


def test_wheel_contents(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for name in ("latentrt/cli.py", "latentrt/bench/harness.py", "latentrt/bench/roof.py", "latentrt/bench/plot.py",
                 "latentrt/bench/systems/protocol.py", "latentrt/bench/systems/latentrt_worker.py",
                 "latentrt/bench/systems/diffusers_worker.py", "latentrt/models/shapes/unet/model.onnx",
                 "latentrt/models/shapes/manifest.json", "latentrt/models/shapes/tokenizer/tokenizer.json"):
        assert name in names, name
    assert not [n for n in names if n.split("/")[0] in ("benchmarks", "tests", "training")]


def test_harness_imports_no_torch(installed):
    script = ("import importlib.util, json, sys, latentrt.bench.harness, latentrt; "
              "print(json.dumps({'torch_loaded': 'torch' in sys.modules, 'torch_installed': bool(importlib.util.find_spec('torch')), "
              "'package': latentrt.__file__}))")
    out = json.loads(_run([installed["venv"] / "bin" / "python", "-c", script], cwd=installed["work"]).stdout)
    assert out == {"torch_loaded": False, "torch_installed": False, "package": out["package"]}
    assert Path(out["package"]).is_relative_to(installed["venv"])  # the wheel's, not the checkout's


def test_generate_from_wheel(installed):
    work = installed["work"]
    _run(["latentrt", "generate", "a red circle", "-o", "out.png", "--steps", "2", "--provider", "cpu"], cwd=work,
         venv=installed["venv"])
    assert (work / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_from_wheel(installed):
    venv, work = installed["venv"], installed["work"]
    model = _run([venv / "bin" / "python", "-c", "from latentrt.models import default_model_path as p; print(p())"],
                 cwd=work).stdout.strip()
    assert Path(model).is_relative_to(venv)
    bench = ["latentrt", "bench", model, "--steps", "1", "--runs", "1", "--threads", "1", "--cache", work / "bench-cache"]
    _run([*bench, "--systems", "latentrt", "--json", "bench.json", "--markdown", "bench.md"], cwd=work, venv=venv)
    report = json.loads((work / "bench.json").read_text())
    assert list(report["systems"]) == ["latentrt"]
    assert report["systems"]["latentrt"]["end_to_end"] > 0 and report["systems"]["latentrt"]["modules_imported"] == []
    assert report["roof"]["gemm"]["gflops"] > 0  # the GEMM model written without onnx
    assert "| latentrt |" in (work / "bench.md").read_text()
    # what a wheel cannot run: a clear error, before anything runs
    errors = {
        "optimum": "optimum runs in a virtual environment built from benchmarks/peers/, which only latentrt's source checkout",
        "diffusers": "diffusers needs torch, diffusers, transformers, not installed here: pip install 'latentrt[export]'",
    }
    diffusers_folder = work / "diffusers-folder"  # what the checks read first (a real one needs torch to make)
    diffusers_folder.mkdir()
    (diffusers_folder / "model_index.json").write_text("{}")
    for system, message in errors.items():
        bench[2] = diffusers_folder
        proc = _run([*bench, "--systems", f"latentrt,{system}"], cwd=work, venv=venv, check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    bench[2] = model
    proc = _run([*bench, "--systems", "latentrt,diffusers"], cwd=work, venv=venv, check=False)
    assert proc.returncode == 2 and "diffusers needs a diffusers folder as SRC" in proc.stderr, proc.stderr
