"""Shared fixtures: tiny Stable Diffusion pipelines built from configs, exported once per session."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """{"sd1": (diffusers folder, onnx folder), "sd2": (...)} with random weights."""
    from latentrt.export.exporter import export_pipeline
    from latentrt.export.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny")
    models = {}
    for family in ("sd1", "sd2"):
        src, out = root / f"{family}-diffusers", root / f"{family}-onnx"
        build_tiny_pipeline(src, family=family, seed=0)
        export_pipeline(src, out, report=logging.getLogger("test-export").info)
        models[family] = (src, out)
    return models


@pytest.fixture(scope="session")
def tiny_sd1(tiny_models) -> tuple[Path, Path]:
    return tiny_models["sd1"]


@pytest.fixture(scope="session")
def tiny_sd2(tiny_models) -> tuple[Path, Path]:
    return tiny_models["sd2"]


@pytest.fixture(scope="session")
def optimum_sd1(tiny_sd1, tmp_path_factory) -> tuple[Path, Path]:
    """(diffusers folder, the ONNX folder optimum's own exporter wrote from it), in optimum's venv."""
    return _optimum_export(tiny_sd1[0], tmp_path_factory.mktemp("optimum") / "sd1-optimum")


@pytest.fixture(scope="session")
def optimum_sdxl(tiny_sdxl, tmp_path_factory) -> tuple[Path, Path]:
    """(SDXL diffusers folder, the ONNX folder optimum's own exporter wrote from it), in optimum's venv."""
    return _optimum_export(tiny_sdxl[0], tmp_path_factory.mktemp("optimum") / "sdxl-optimum")


def _optimum_export(src: Path, out: Path) -> tuple[Path, Path]:
    from benchmarks.peers.optimum.env import ensure_env, run_worker

    ensure_env()
    run_worker(["export", str(src), str(out)], timeout=900)  # no tokenizer.json, scalar timestep
    return src, out


def _tiny_family(tmp_path_factory, family: str) -> tuple[Path, Path]:
    """(diffusers folder, onnx folder) of one tiny family, built and exported when a test first asks."""
    from latentrt.export.exporter import export_pipeline
    from latentrt.export.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp(f"tiny-{family}")
    src, out = root / f"{family}-diffusers", root / f"{family}-onnx"
    build_tiny_pipeline(src, family=family, seed=0)
    export_pipeline(src, out, report=logging.getLogger("test-export").info)
    return src, out


def _family_fixture(family: str, doc: str):
    fixture = lambda tmp_path_factory: _tiny_family(tmp_path_factory, family)  # noqa: E731
    fixture.__doc__ = doc
    return pytest.fixture(scope="session", name=f"tiny_{family.replace('-', '_')}")(fixture)


tiny_sdxl = _family_fixture("sdxl", "StableDiffusionXLPipeline: two text encoders, text_embeds + 6 time ids.")
tiny_sdxl_refiner = _family_fixture(
    "sdxl-refiner", "StableDiffusionXLImg2ImgPipeline: text_encoder_2 only, 5 time ids, requires_aesthetics_score."
)
tiny_lcm = _family_fixture("lcm", "LatentConsistencyModelPipeline: the UNet takes timestep_cond (LCMScheduler).")
tiny_sd_turbo = _family_fixture("sd-turbo", "SD 2.x shapes with sd-turbo's trailing Euler scheduler.")
tiny_sdxl_turbo = _family_fixture("sdxl-turbo", "SDXL shapes with sdxl-turbo's trailing Euler Ancestral scheduler.")
