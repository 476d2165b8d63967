"""diffusers StableDiffusionPipeline folder -> ONNX model folder (atomic, validated).

The folder is built in a hidden temporary folder beside OUT and renamed into place only after
every component has been exported and validated, so a failure or Ctrl-C leaves no OUT behind
(and an existing OUT untouched).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from latentrt import __version__
from latentrt.export.compact import store_exact_fp16
from latentrt.export.flops import component_flops
from latentrt.export.fuse_attention import fuse_attention
from latentrt.export.folder_io import EXTERNAL_DATA_NAME, save_component_model, staged_folder
from latentrt.export.specs import COMPONENTS, ComponentSpec, to_torch
from latentrt.export.validate import Comparison, validate_component
from latentrt.runtime.folder import file_sha256

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
REQUIRED_SOURCE_PARTS = ("text_encoder", "tokenizer", "unet", "vae", "scheduler")


class ExportError(RuntimeError):
    """The source folder cannot be exported; the message says why and what to do."""


@dataclass
class ExportReport:
    out: Path
    seconds: float
    comparisons: dict[str, list[Comparison]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


def check_source(src: Path) -> dict:
    """Read and check SRC's model_index.json; return it."""
    src = Path(src)
    index_path = src / "model_index.json"
    if not src.is_dir():
        raise ExportError(f"{src} is not a folder: give a local diffusers StableDiffusionPipeline folder")
    if not index_path.is_file():
        raise ExportError(
            f"{src} is not a diffusers pipeline folder (no model_index.json): give the folder that "
            "StableDiffusionPipeline.save_pretrained() wrote"
        )
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{index_path} is not valid JSON ({exc})") from exc
    missing = [p for p in REQUIRED_SOURCE_PARTS if p not in index or not (src / p).is_dir()]
    if missing:
        raise ExportError(
            f"{src} lacks {', '.join(missing)}: a StableDiffusionPipeline folder needs "
            f"{', '.join(REQUIRED_SOURCE_PARTS)} (class found: {index.get('_class_name')})"
        )
    return index


def export_pipeline(
    src: Path,
    out: Path,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    validate: bool = True,
    report: Callable[[str], None] = logger.info,
    compact_weights: bool = False,
    defaults: dict | None = None,
    fused_attention: bool = True,
) -> ExportReport:
    """Export ``src`` to ``out``.

    ``fused_attention`` replaces the exported attention with ONNX Runtime's MultiHeadAttention
    (see fuse_attention.py: half the peak memory at 512x512); off, the graphs use standard ops only.
    ``compact_weights`` stores weights that are exact in fp16 as fp16 (lossless, see compact.py).
    ``defaults`` ({"steps", "guidance_scale", "scheduler"}) are the generation defaults written in the
    manifest, which the runtime uses when a call leaves them out.
    """
    src, out = Path(src), Path(out)
    index = check_source(src)
    defaults = check_defaults(defaults)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists: choose another OUT or pass --force to replace it")
    started = time.perf_counter()
    with staged_folder(out) as tmp:
        tmp.mkdir()
        result = ExportReport(out=out, seconds=0.0)
        rewrites = {"fused_attention": fused_attention, "compact_weights": compact_weights}
        manifest = _build(src, tmp, index, opset, validate, rewrites, result, report)
        if defaults:
            manifest["defaults"] = defaults
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    result.seconds = time.perf_counter() - started
    return result


def check_defaults(defaults: dict | None) -> dict | None:
    """The manifest's generation defaults, checked now rather than at a user's first call."""
    if not defaults:
        return None
    from latentrt.runtime.schedulers import available_schedulers

    unknown = set(defaults) - {"steps", "guidance_scale", "scheduler"}
    if unknown:
        raise ExportError(f"unknown generation defaults {sorted(unknown)}: use steps, guidance_scale, scheduler")
    checked = {}
    if defaults.get("steps") is not None:
        steps = defaults["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ExportError(f"default steps must be a positive integer, got {steps!r}")
        checked["steps"] = steps
    if defaults.get("guidance_scale") is not None:
        guidance = float(defaults["guidance_scale"])
        if not np.isfinite(guidance) or guidance < 0:
            raise ExportError(f"default guidance_scale must be a finite number >= 0, got {guidance!r}")
        checked["guidance_scale"] = guidance
    if defaults.get("scheduler") is not None:
        name = defaults["scheduler"]
        if name not in available_schedulers():
            raise ExportError(f"unknown default scheduler {name!r}: choose one of {', '.join(available_schedulers())}")
        checked["scheduler"] = name
    return checked or None


def _build(src, tmp, index, opset, validate, rewrites, result, report) -> dict:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from latentrt.export.tokenizer import export_tokenizer

    models = {
        "text_encoder": lambda: CLIPTextModel.from_pretrained(src / "text_encoder", torch_dtype=torch.float32),
        "unet": lambda: UNet2DConditionModel.from_pretrained(src / "unet", torch_dtype=torch.float32),
        "vae": lambda: AutoencoderKL.from_pretrained(src / "vae", torch_dtype=torch.float32),
    }
    loaded: dict[str, torch.nn.Module] = {}
    components = {}
    for spec in COMPONENTS:
        if spec.source not in loaded:
            loaded.clear()  # one source model in memory at a time (the VAE serves two components)
            loaded[spec.source] = models[spec.source]().eval()
        module = spec.wrap(loaded[spec.source]).eval()
        t0 = time.perf_counter()
        files, rewritten = _export_component(spec, module, tmp / spec.name, opset, rewrites)
        seconds = time.perf_counter() - t0
        shutil.copyfile(src / spec.source / "config.json", tmp / spec.name / "config.json")
        entry = _manifest_entry(spec, tmp / spec.name, files, opset)
        entry.update(rewritten)
        entry["export_seconds"] = round(seconds, 2)
        entry.update(component_flops(spec.name, loaded[spec.source]))  # {"flops": ...} for unet, vae_decoder
        if validate:
            comparisons = validate_component(spec, module, tmp / spec.name / "model.onnx")
            result.comparisons[spec.name] = comparisons
            entry["validation"] = [c.as_dict() for c in comparisons]
            for c in comparisons:
                report(f"  {c}")
        size = sum(f["bytes"] for f in entry["files"].values())
        result.sizes[spec.name] = size
        report(f"{spec.name}: exported in {seconds:.1f} s, {size / 1e6:.1f} MB")
        components[spec.name] = entry
    loaded.clear()

    export_tokenizer(src / "tokenizer", tmp / "tokenizer")
    (tmp / "scheduler").mkdir()
    shutil.copyfile(src / "scheduler" / "scheduler_config.json", tmp / "scheduler" / "scheduler_config.json")
    _write_model_index(src, tmp, index)
    return {
        "format": "latentrt-onnx/1",
        "exporter": _versions(),
        "source": {"path": str(src.resolve()), "class_name": index.get("_class_name")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "opset": opset,
        "precision": "fp32",
        "rewrites": rewrites,
        "components": components,
    }


@contextlib.contextmanager
def _quiet_export():
    """The TorchScript exporter warns about every traced Python branch; they are expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _export_component(spec: ComponentSpec, module, folder: Path, opset: int, rewrites: dict) -> tuple[list[str], dict]:
    """Trace to a scratch folder, rewrite (``rewrites``: fused_attention, compact_weights), then save
    as model.onnx (+ ONE model.onnx_data when > 2 GB). Returns the files and what the rewrites did."""
    import onnx
    import torch

    folder.mkdir(parents=True)
    scratch = folder / ".scratch"
    scratch.mkdir()
    inputs = spec.sample_inputs(module.model, np.random.default_rng(0))
    with torch.no_grad(), _quiet_export():
        torch.onnx.export(
            module,
            to_torch(inputs),
            str(scratch / "model.onnx"),
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_axes=spec.dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(scratch / "model.onnx"), load_external_data=True)
    rewritten = {}
    if rewrites.get("fused_attention"):
        rewritten["fused_attention"] = fuse_attention(model)
    if rewrites.get("compact_weights"):
        rewritten["fp16_stored_weights"] = store_exact_fp16(model)
    files = save_component_model(model, folder)
    del model
    shutil.rmtree(scratch)
    return files, rewritten


def _manifest_entry(spec: ComponentSpec, folder: Path, files: list[str], opset: int) -> dict:
    return {
        "file": "model.onnx",
        "external_data": EXTERNAL_DATA_NAME if EXTERNAL_DATA_NAME in files else None,
        "files": {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)} for name in files},
        "inputs": [{"name": t.name, "dtype": t.dtype, "axes": list(t.axes)} for t in spec.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "axes": list(t.axes)} for t in spec.outputs],
        "opset": opset,
        "precision": "fp32",
    }


def _write_model_index(src: Path, tmp: Path, index: dict) -> None:
    """The layout optimum's and diffusers' ONNX pipelines read (components as [library, class])."""
    model_index = {
        "_class_name": "ORTStableDiffusionPipeline",
        "_diffusers_version": index.get("_diffusers_version"),
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "scheduler": ["diffusers", index["scheduler"][1]],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["optimum", "ORTModelTextEncoder"],
        "unet": ["optimum", "ORTModelUnet"],
        "vae_decoder": ["optimum", "ORTModelVaeDecoder"],
        "vae_encoder": ["optimum", "ORTModelVaeEncoder"],
    }
    (tmp / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")


def _versions() -> dict[str, str]:
    import diffusers
    import onnx
    import torch
    import transformers

    return {
        "latentrt": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
    }
