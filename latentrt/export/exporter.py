"""diffusers Stable Diffusion / SDXL / LCM pipeline folder -> ONNX model folder (atomic, validated).

The source's model_index.json `_class_name` says which parts it must have (`SOURCE_CLASSES`); the UNet's
config says which extra inputs its graph takes (SDXL's text_embeds and time_ids, LCM's timestep_cond).

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from latentrt import __version__
from latentrt.export.compact import store_exact_fp16
from latentrt.export.flops import component_flops
from latentrt.export.fuse_attention import fuse_attention
from latentrt.export.folder_io import EXTERNAL_DATA_NAME, save_component_model, staged_folder
from latentrt.export import controlnet as cn
from latentrt.export import deepcache, fp16
from latentrt.export.specs import (VAE_COMPONENTS, ComponentSpec, controlnet_spec, residual_channels,
                                   residual_downsamples, text_encoder_spec, to_torch, unet_controlnet_spec,
                                   unet_shallow_spec, unet_spec)
from latentrt.export.torch_models import load_component
from latentrt.export.validate import Comparison, validate_component
from latentrt.export.weight_map import fingerprint, locate, rename_compacted, weight_map
from latentrt.runtime.folder import file_sha256
from latentrt.runtime.lora import LORA_COMPONENTS  # the networks LoRAs adapt: their weight maps

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17


@dataclass(frozen=True)
class SourceKind:
    """What a source pipeline class holds and what the exported folder is called."""

    label: str  # how messages name such a folder
    parts: tuple[str, ...]  # subfolders it must have
    text_encoders: tuple[tuple[str, str, bool], ...]  # (text encoder, its tokenizer, with projection), in order
    ort_class: str  # the exported model_index.json's _class_name (optimum's)
    xl: bool = False


_SD = SourceKind(
    "a StableDiffusionPipeline folder",
    ("text_encoder", "tokenizer", "unet", "vae", "scheduler"),
    (("text_encoder", "tokenizer", False),),
    "ORTStableDiffusionPipeline",
)
# SDXL: text_encoder + tokenizer are optional (the refiner has neither), as a pair
_SDXL = SourceKind(
    "an SDXL folder",
    ("text_encoder_2", "tokenizer_2", "unet", "vae", "scheduler"),
    (("text_encoder", "tokenizer", False), ("text_encoder_2", "tokenizer_2", True)),
    "ORTStableDiffusionXLPipeline",
    xl=True,
)
SOURCE_CLASSES: dict[str, SourceKind] = {
    "StableDiffusionPipeline": _SD,
    "StableDiffusionImg2ImgPipeline": _SD,
    "StableDiffusionInpaintPipeline": _SD,
    "LatentConsistencyModelPipeline": replace(_SD, ort_class="ORTLatentConsistencyModelPipeline"),
    "StableDiffusionXLPipeline": _SDXL,
    "StableDiffusionXLImg2ImgPipeline": replace(_SDXL, ort_class="ORTStableDiffusionXLImg2ImgPipeline"),
}
REQUIRED_SOURCE_PARTS = {name: kind.parts for name, kind in SOURCE_CLASSES.items()}


class ExportError(RuntimeError):
    """The source folder cannot be exported; the message says why and what to do."""


@dataclass
class ExportReport:
    out: Path
    seconds: float
    comparisons: dict[str, list[Comparison]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


def check_source(src: Path) -> dict:
    """Read and check SRC's model_index.json against its class's parts (`SOURCE_CLASSES`); return it."""
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
    class_name = index.get("_class_name") or "StableDiffusionPipeline"
    kind = SOURCE_CLASSES.get(class_name)
    if kind is None:
        missing = [p for p in _SD.parts if not _present(src, index, p)]
        lacking = f" (it lacks {', '.join(missing)} of a StableDiffusionPipeline folder)" if missing else ""
        raise ExportError(
            f"{src} holds a {class_name} (model_index.json's _class_name), which latentrt does not export{lacking}: "
            f"the supported classes are {', '.join(SOURCE_CLASSES)}"
        )
    missing = [p for p in kind.parts if not _present(src, index, p)]
    for encoder, tokenizer, _ in kind.text_encoders:  # optional ones come in pairs
        if _present(src, index, encoder) != _present(src, index, tokenizer):
            missing += [p for p in (encoder, tokenizer) if not _present(src, index, p) and p not in missing]
    if missing:
        raise ExportError(
            f"{src} lacks {', '.join(missing)}: {kind.label} needs {', '.join(kind.parts)}"
            + (" (and text_encoder with tokenizer, or neither)" if kind.xl else "")
            + f" (class found: {index.get('_class_name')})"
        )
    _check_text_widths(src, index, kind)
    return index


def _present(src: Path, index: dict, part: str) -> bool:
    """In model_index.json with a class (a missing component is [null, null] there) and on disk."""
    entry = index.get(part)
    named = not isinstance(entry, (list, tuple)) or (len(entry) > 0 and entry[0] is not None)
    return part in index and named and (src / part).is_dir()


def _config(src: Path, part: str) -> dict:
    path = src / part / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path} ({exc}): SRC's {part} must be a diffusers/transformers model folder") from exc


def _text_encoders(src: Path, index: dict, kind: SourceKind) -> list[tuple[str, str, bool]]:
    return [t for t in kind.text_encoders if _present(src, index, t[0])]


def _check_text_widths(src: Path, index: dict, kind: SourceKind) -> None:
    """The UNet's cross-attention takes the text encoders' hidden states side by side (SDXL: both)."""
    encoders = _text_encoders(src, index, kind)
    widths = {name: int(_config(src, name).get("hidden_size", 0)) for name, _, _ in encoders}
    expected = _config(src, "unet").get("cross_attention_dim")
    if isinstance(expected, int) and sum(widths.values()) != expected:
        raise ExportError(
            f"{src}'s UNet attends to {expected} text features but its text encoders give "
            f"{' + '.join(f'{w} ({n})' for n, w in widths.items())}: {kind.label} needs the text encoders the UNet "
            "was trained with" + (" (an SDXL base needs text_encoder as well as text_encoder_2)" if kind.xl else "")
        )


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
    cache_branch: int | None = None,
    precision: str = "fp32",
    tiny_vae: Path | None = None,
    controlnets: list | None = None,
) -> ExportReport:
    """Export ``src`` to ``out``.

    ``fused_attention`` replaces the exported attention with ONNX Runtime's MultiHeadAttention
    (see fuse_attention.py: half the peak memory at 512x512); off, the graphs use standard ops only.
    ``compact_weights`` stores weights that are exact in fp16 as fp16 (lossless, see compact.py).
    ``defaults`` ({"steps", "guidance_scale", "scheduler"}) are the generation defaults written in the
    manifest, which the runtime uses when a call leaves them out.
    ``precision`` "fp16": the text encoders and the UNet are converted to fp16 after their fp32 validation, with
    fp32 islands and a float32 interface, and validated again against fp16 thresholds (see fp16.py); the VAE
    too unless its config says force_upcast.
    ``tiny_vae``: a local diffusers AutoencoderTiny folder (TAESD, TAESDXL) exported beside the VAE as
    vae_decoder_tiny/ and vae_encoder_tiny/ (tiny_vae.py; always fp32: it is 1.2 M parameters per half).
    ``controlnets``: local diffusers ControlNetModel folders, each ``"NAME=DIR"``, ``DIR`` or ``(name, DIR)``
    (controlnet.py): each exported as controlnet/<name>/, and the UNet also as unet/model_controlnet.onnx (its
    residual inputs) over the same weights file as unet/model.onnx.
    """
    src, out = Path(src), Path(out)
    index = check_source(src)
    kind = SOURCE_CLASSES[index.get("_class_name") or "StableDiffusionPipeline"]
    defaults = check_defaults(defaults)
    try:
        fp16.check_precision(precision)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if precision == "fp16" and compact_weights:
        raise ExportError("--compact-weights is for fp32 folders: an fp16 export already stores its weights in fp16")
    if cache_branch is not None and (isinstance(cache_branch, bool) or not isinstance(cache_branch, int) or cache_branch < 0):
        raise ExportError(f"the DeepCache branch must be a whole number >= 0 (0: the shallowest split), got {cache_branch!r}")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists: choose another OUT or pass --force to replace it")
    tiny = _check_tiny_source(src, tiny_vae) if tiny_vae is not None else None  # before any work
    sources = _check_controlnet_sources(src, controlnets or [])
    started = time.perf_counter()
    with staged_folder(out) as tmp:
        tmp.mkdir()
        result = ExportReport(out=out, seconds=0.0)
        rewrites = {"fused_attention": fused_attention, "compact_weights": compact_weights}
        manifest = _build(src, tmp, index, kind, opset, validate, rewrites, result, report, cache_branch, precision,
                          sources)
        if defaults:
            manifest["defaults"] = defaults
        if tiny is not None:
            entries = export_tiny_components(tiny, tmp, opset, validate, report, result.comparisons)
            manifest["components"].update(entries)
            result.sizes.update({name: sum(f["bytes"] for f in e["files"].values()) for name, e in entries.items()})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    result.seconds = time.perf_counter() - started
    return result


def _check_controlnet_sources(src: Path, requested: list) -> list[cn.ControlNetSource]:
    """The --controlnet folders checked against SRC's UNet and VAE before any work (controlnet.py)."""
    if not requested:
        return []
    from latentrt.runtime.tiling import vae_scale_factor

    vae = _config(src, "vae")
    try:
        return cn.check_controlnets(requested, _config(src, "unet"), int(vae.get("latent_channels", 4)),
                                    vae_scale_factor(vae.get("block_out_channels") or [0, 0, 0, 0]))
    except cn.ControlNetError as exc:
        raise ExportError(str(exc)) from exc


def _check_tiny_source(src: Path, tiny_vae: Path):
    """The --tiny-vae folder checked against SRC's VAE and UNet (latent channels, pixels per latent pixel)."""
    from latentrt.export.tiny_vae import TinyVaeError, check_tiny_vae, load_tiny_vae
    from latentrt.runtime.tiling import vae_scale_factor

    vae = _config(src, "vae")
    try:
        source = check_tiny_vae(tiny_vae, int(vae.get("latent_channels", 4)),
                                vae_scale_factor(vae.get("block_out_channels") or [0, 0, 0, 0]),
                                int(_config(src, "unet").get("in_channels", 4)), where=str(src))
        load_tiny_vae(source)  # its weights readable (1.2 M parameters: cheap), before the long export
        return source
    except TinyVaeError as exc:
        raise ExportError(f"--tiny-vae: {exc}") from exc


def export_tiny_components(source, folder: Path, opset: int, validate: bool = True,
                           report: Callable[[str], None] = logger.info, comparisons: dict | None = None) -> dict[str, dict]:
    """Trace, save and validate both tiny components into ``folder``/vae_decoder_tiny and vae_encoder_tiny (which
    must not exist); return their manifest entries. ``comparisons`` collects the validation per component."""
    from latentrt.export.tiny_vae import TINY_CLASS, TINY_VAE_SPECS, load_tiny_vae

    model = load_tiny_vae(source)
    entries = {}
    for spec in TINY_VAE_SPECS:
        module = spec.wrap(model).eval()
        reference = _torch_reference(spec, module) if validate else None
        t0 = time.perf_counter()
        target = Path(folder) / spec.name
        _trace_component(spec, module, target, opset)
        files, _ = _rewrite_and_save(target, {})
        seconds = time.perf_counter() - t0
        shutil.copyfile(source.path / "config.json", target / "config.json")
        checked = validate_component(spec, reference, target / "model.onnx") if validate else []
        entry = _manifest_entry(spec, target, files, opset)
        entry["export_seconds"] = round(seconds, 2)
        entry["source"] = {"path": str(source.path.resolve()), "class_name": TINY_CLASS}
        if validate:
            entry["validation"] = [c.as_dict() for c in checked]
            if comparisons is not None:
                comparisons[spec.name] = checked
            for c in checked:
                report(f"  {c}")
        size = sum(f["bytes"] for f in entry["files"].values())
        report(f"{spec.name}: exported in {seconds:.1f} s, {size / 1e6:.2f} MB")
        entries[spec.name] = entry
    return entries


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


def _build(src, tmp, index, kind, opset, validate, rewrites, result, report, cache_branch=None, precision="fp32",
           controlnets: list[cn.ControlNetSource] = ()) -> dict:
    from latentrt.export.tokenizer import export_tokenizer

    encoders = _text_encoders(src, index, kind)
    projections = {name: projection for name, _, projection in encoders}
    text_embeds = next((int(_config(src, n)["projection_dim"]) for n, _, p in encoders if p), None)
    unet_config = _config(src, "unet")
    vae_force_upcast = bool(_config(src, "vae").get("force_upcast", True))  # diffusers' default: True
    try:
        specs = [text_encoder_spec(name, _config(src, name), projection) for name, _, projection in encoders]
        # DeepCache's shallow UNet first: the torch UNet is freed after the last component that reads it (SDXL)
        specs += [unet_shallow_spec(unet_config, text_embeds, cache_branch)] if cache_branch is not None else []
        specs += [unet_spec(unet_config, text_embeds, cache_branch), *VAE_COMPONENTS]
        residual_spec = unet_controlnet_spec(unet_config, text_embeds, cache_branch) if controlnets else None
    except (KeyError, ValueError) as exc:
        raise ExportError(f"{src}: {exc}") from exc
    time_ids = next((t.axes[-1] for t in specs[len(encoders)].inputs if t.name == "time_ids"), None)
    _check_aesthetics_score(src, index, time_ids)

    loaded: dict = {}
    components = {}
    split_info = None
    prints_of: dict = {}  # one fingerprint per source model (the UNet serves unet and unet_shallow)
    for i, spec in enumerate(specs):
        if spec.source not in loaded:
            loaded.clear()  # one source model in memory at a time (the VAE serves two components)
            prints_of.clear()
            loaded[spec.source] = load_component(src, spec.source, projections.get(spec.source, False))
        model = loaded[spec.source]
        try:
            module = spec.wrap(model).eval()
        except ValueError as exc:  # a DeepCache branch this UNet does not have
            raise ExportError(f"{src}: {exc}") from exc
        if spec.name == "unet_shallow":
            split_info = _deepcache_entry(module.split)
        flops = component_flops(spec.name, model, text_embeds)  # {"flops": ...} for unet, vae_decoder
        reference = _torch_reference(spec, module) if validate else None  # validation's torch side, run now
        residual = residual_spec.wrap(model).eval() if spec.name == "unet" and residual_spec is not None else None
        residual_reference = _torch_reference(residual_spec, residual) if residual is not None and validate else None
        t0 = time.perf_counter()
        folder = tmp / spec.name
        # with ControlNets the UNet is traced WITH its residual inputs; the plain graph is derived from that one
        _trace_component(residual_spec if residual is not None else spec, residual or module, folder, opset)
        files = spec.extra_files(folder, model) if spec.extra_files is not None else []
        prints = None
        if spec.name in LORA_COMPONENTS:  # the LoRA map, matched after the trace
            prints = prints_of[spec.source] = prints_of.get(spec.source) or fingerprint(model)
        if all(s.source != spec.source for s in specs[i + 1 :]):
            # Memory: everything that reads the torch model is done, so free it before the ONNX copy of its
            # weights is loaded and before ONNX Runtime validates. The weights are then never held twice
            # (torch + ONNX), which is what lets SDXL's 10 GB fp32 UNet export on a 24 GB machine
            # (benchmarks/results/full_size_exports.md).
            del model, module, residual
            loaded.clear()
            prints_of.clear()
        save = _shared_unet_saver(residual_spec) if spec.name == "unet" and residual_spec is not None else None
        saved, rewritten = _rewrite_and_save(folder, rewrites, prints, save)
        files = saved + files
        seconds = time.perf_counter() - t0
        shutil.copyfile(src / spec.source / "config.json", folder / "config.json")
        comparisons = validate_component(spec, reference, folder / "model.onnx") if validate else []
        residual_check = (residual_spec, residual_reference, folder / cn.RESIDUAL_GRAPH)
        residual_comparisons = validate_component(*residual_check) if save is not None and validate else []
        fp32_comparisons, islands = None, None
        if precision == "fp16" and fp16.converts(spec.name, vae_force_upcast):
            fp32_comparisons, residual_fp32 = comparisons, residual_comparisons
            upcast = spec.source == "unet" and bool(unet_config.get("upcast_attention"))  # SD 2.x
            files, islands = _convert_fp16(folder, files, rewritten, upcast, save)
            comparisons = validate_component(spec, reference, folder / "model.onnx", precision="fp16") if validate else []
            if save is not None and validate:
                residual_comparisons = validate_component(*residual_check, precision="fp16")
        if save is not None:  # the residual graph: its own entry, the same data file
            files = [f for f in files if f != cn.RESIDUAL_GRAPH]
            figures = (residual_comparisons, residual_fp32 if fp32_comparisons is not None else None) if validate else None
            components["unet_controlnet"] = _residual_entry(residual_spec, folder, opset, rewritten, islands, figures,
                                                            result, report)
        entry = _manifest_entry(spec, folder, files, opset, "fp16" if islands is not None else "fp32")
        entry.update(rewritten)
        if islands is not None:
            entry["fp32_islands"] = islands  # nodes kept fp32 per island (fp16.py)
        elif precision == "fp16":
            entry["kept_fp32"] = "the VAE's config says force_upcast: it overflows fp16"
        entry["export_seconds"] = round(seconds, 2)
        entry.update(flops)
        if validate:
            result.comparisons[spec.name] = comparisons
            entry["validation"] = [c.as_dict() for c in comparisons]
            if fp32_comparisons is not None:  # the same export before the fp16 conversion
                entry["validation_fp32"] = [c.as_dict() for c in fp32_comparisons]
            for c in comparisons:
                report(f"  {c}")
        size = sum(f["bytes"] for f in entry["files"].values())
        result.sizes[spec.name] = size
        report(f"{spec.name}: exported in {seconds:.1f} s, {size / 1e6:.1f} MB")
        components[spec.name] = entry
    loaded.clear()
    if controlnets:
        from latentrt.runtime.tiling import vae_scale_factor

        vae_scale = vae_scale_factor(_config(src, "vae").get("block_out_channels") or [0, 0, 0, 0])
    for source in controlnets:
        entry = _export_controlnet(source, tmp, unet_config, text_embeds, vae_scale, opset, validate, rewrites, result,
                                   report)
        if precision == "fp16":
            entry["kept_fp32"] = "ControlNets are exported in fp32 (their residuals are float32 inputs either way)"
        components[f"controlnet/{source.name}"] = entry

    for _, tokenizer, _ in encoders:
        export_tokenizer(src / tokenizer, tmp / tokenizer)
    (tmp / "scheduler").mkdir()
    shutil.copyfile(src / "scheduler" / "scheduler_config.json", tmp / "scheduler" / "scheduler_config.json")
    _write_model_index(tmp, index, kind, [name for name, _, _ in encoders])
    manifest = {
        "format": "latentrt-onnx/1",
        "exporter": _versions(),
        "source": {"path": str(src.resolve()), "class_name": index.get("_class_name")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "opset": opset,
        "precision": precision,
        "rewrites": rewrites,
        "components": components,
    }
    if split_info is not None:
        manifest["deepcache"] = split_info
    return manifest


def _shared_unet_saver(residual_spec: ComponentSpec) -> Callable:
    """save_component_model's replacement for a UNet traced with residual inputs: model_controlnet.onnx, model.onnx
    (the plain UNet derived from it) and ONE model.onnx_data that both read."""
    names = [t.name for t in residual_spec.inputs if "_additional_residual" in t.name]
    return lambda model, folder: cn.save_shared_unet(model, folder, names)


def _residual_entry(spec: ComponentSpec, folder: Path, opset: int, rewritten: dict, islands: dict | None,
                    figures: tuple | None, result: ExportReport, report: Callable[[str], None]) -> dict:
    """The manifest's `unet_controlnet`: the residual graph, with its validation against PyTorch (random residuals;
    ``figures``: (comparisons, the fp32 ones before an fp16 conversion or None), or None without validation)."""
    files = [cn.RESIDUAL_GRAPH, EXTERNAL_DATA_NAME]
    entry = _manifest_entry(spec, folder, files, opset, "fp16" if islands is not None else "fp32", file=cn.RESIDUAL_GRAPH)
    entry["shares_weights_with"] = "unet"  # the same model.onnx_data: the weights are stored once
    entry.update({k: v for k, v in rewritten.items() if k != "weights"})  # LoRA's map: the unet entry's (same file)
    if islands is not None:
        entry["fp32_islands"] = islands  # the same conversion: the plain graph is derived from it
    if figures is not None:
        comparisons, fp32 = figures
        result.comparisons[spec.name] = comparisons
        entry["validation"] = [c.as_dict() for c in comparisons]
        if fp32 is not None:
            entry["validation_fp32"] = [c.as_dict() for c in fp32]
        for c in comparisons:
            report(f"  {c}")
    return entry


def _export_controlnet(source: cn.ControlNetSource, tmp: Path, unet_config: dict, text_embeds: int | None, vae_scale: int,
                       opset: int, validate: bool, rewrites: dict, result: ExportReport,
                       report: Callable[[str], None]) -> dict:
    """One ControlNet as controlnet/<name>/ (model.onnx + its config.json), validated against PyTorch."""
    import torch
    from diffusers import ControlNetModel

    spec = controlnet_spec(source.name, source.config, unet_config, text_embeds, vae_scale)
    model = ControlNetModel.from_pretrained(source.path, torch_dtype=torch.float32).eval()
    module = spec.wrap(model).eval()
    reference = _torch_reference(spec, module) if validate else None
    if reference is not None:
        _check_residual_shapes(source, unet_config, reference)
    t0 = time.perf_counter()
    folder = tmp / "controlnet" / source.name
    _trace_component(spec, module, folder, opset)
    del model, module
    files, rewritten = _rewrite_and_save(folder, rewrites)
    seconds = time.perf_counter() - t0
    shutil.copyfile(source.path / "config.json", folder / "config.json")
    entry = _manifest_entry(spec, folder, files, opset)
    entry.update(rewritten)
    entry["export_seconds"] = round(seconds, 2)
    entry["source"] = {"path": str(source.path.resolve()), "class_name": cn.CONTROLNET_CLASS}
    if validate:
        comparisons = validate_component(spec, reference, folder / "model.onnx")
        result.comparisons[spec.name] = comparisons
        entry["validation"] = [c.as_dict() for c in comparisons]
        for c in comparisons:
            report(f"  {c}")
    size = sum(f["bytes"] for f in entry["files"].values())
    result.sizes[spec.name] = size
    report(f"{spec.name}: exported in {seconds:.1f} s, {size / 1e6:.1f} MB")
    return entry


def _check_residual_shapes(source: cn.ControlNetSource, unet_config: dict, reference) -> None:
    """The ControlNet's outputs have the UNet's skip samples' channels and sides (the configs were checked; this is
    the same fact on real tensors)."""
    channels, mid = residual_channels(unet_config)
    halvings = residual_downsamples(unet_config) + [len(unet_config["block_out_channels"]) - 1]
    side = reference.sample_inputs["sample"].shape[2:]
    for i, (tensor, c, times) in enumerate(zip(reference.outputs, channels + [mid], halvings)):
        expected = [c, *(_halve(s, times) for s in side)]
        if list(tensor.shape[1:]) != expected:
            raise ExportError(f"ControlNet {source.name!r} ({source.path}) gives residual {i} of shape "
                              f"{list(tensor.shape[1:])} where the UNet's skip sample is {expected}")


def _halve(side: int, times: int) -> int:
    for _ in range(times):
        side = (side + 1) // 2
    return side


def _deepcache_entry(split: deepcache.Split) -> dict:
    """The manifest's `deepcache`: what the runtime needs to run and compile the shallow UNet."""
    return {
        "shallow": "unet_shallow",
        "feature": deepcache.FEATURE,
        "branch": split.branch,
        "branches": split.branches,
        "feature_channels": split.channels,
        "feature_downsamples": split.downsamples,  # each halves the latent's sides, rounding up
    }


def _check_aesthetics_score(src: Path, index: dict, time_ids: int | None) -> None:
    """diffusers builds 5 time ids (with an aesthetic score) when requires_aesthetics_score, else 6: the
    model_index the runtime reads must agree with the UNet."""
    if time_ids is None:
        return
    wants = bool(index.get("requires_aesthetics_score", False))
    if time_ids != (5 if wants else 6):
        raise ExportError(
            f"{src}'s UNet takes {time_ids} time ids but model_index.json has requires_aesthetics_score={wants} "
            f"({5 if wants else 6} ids): fix requires_aesthetics_score (true for a refiner, which takes 5)"
        )


@contextlib.contextmanager
def _quiet_export():
    """The TorchScript exporter warns about every traced Python branch; they are expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _export_component(spec: ComponentSpec, module, folder: Path, opset: int, rewrites: dict) -> tuple[list[str], dict]:
    """Trace to a scratch folder, rewrite (``rewrites``: fused_attention, compact_weights), then save
    as model.onnx (+ ONE model.onnx_data when > 2 GB). Returns the files and what the rewrites did."""
    _trace_component(spec, module, folder, opset)
    return _rewrite_and_save(folder, rewrites)


def _trace_component(spec: ComponentSpec, module, folder: Path, opset: int) -> None:
    """torch.onnx.export into ``folder``/.scratch (weights as external files when > 2 GB)."""
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


def _rewrite_and_save(folder: Path, rewrites: dict, prints: dict | None = None,
                      save: Callable | None = None) -> tuple[list[str], dict]:
    """Load the traced graph from ``folder``/.scratch, rewrite it and save it into ``folder``; with ``prints``
    (weight_map.fingerprint of the torch model), also map its weights to their initializers (``weights``);
    ``save`` (model, folder) -> file names replaces save_component_model (the UNet with ControlNet residuals)."""
    import onnx

    scratch = folder / ".scratch"
    model = onnx.load(str(scratch / "model.onnx"), load_external_data=True)
    shutil.rmtree(scratch)  # disk: the traced weights are in memory now; never on disk twice (SDXL: 10 GB)
    rewritten = {}
    weights = weight_map(model, prints) if prints is not None else None
    if rewrites.get("fused_attention"):
        rewritten["fused_attention"] = fuse_attention(model)
    if rewrites.get("compact_weights"):
        rewritten["fp16_stored_weights"] = store_exact_fp16(model)
    if weights is not None:
        weights = rename_compacted(weights, model)
    files = (save or save_component_model)(model, folder)
    del model
    if weights is not None:
        rewritten["weights"] = locate(folder, weights)  # where each weight's bytes are: the runtime reads no protobuf
    return files, rewritten


def _convert_fp16(folder: Path, files: list[str], rewritten: dict, upcast_attention: bool,
                  save: Callable | None = None) -> tuple[list[str], dict]:
    """Replace the validated fp32 graph in ``folder`` by its fp16 conversion (fp16.py); returns the files and the
    islands. The LoRA weight map (``rewritten["weights"]``) is located again in the new file, now float16.
    ``save`` (the UNet with ControlNet residuals): the residual graph is converted and both graphs written again
    over one data file (the plain one derived from it, as in the fp32 export)."""
    import onnx

    model = onnx.load(str(folder / (cn.RESIDUAL_GRAPH if save is not None else "model.onnx")), load_external_data=True)
    islands = fp16.convert_to_fp16(model, upcast_attention)
    saved = [name for name in files if name.startswith("model.onnx") or name == cn.RESIDUAL_GRAPH]
    for name in saved:
        (folder / name).unlink()
    new = (save or save_component_model)(model, folder)
    if "weights" in rewritten:
        stored = {init.name: init.data_type for init in model.graph.initializer}
        found = {param: [name, layout, "float16" if stored.get(name) == onnx.TensorProto.FLOAT16 else dtype]
                 for param, (name, layout, dtype, *_) in rewritten["weights"].items()}
        rewritten["weights"] = locate(folder, found)
    del model
    return new + [name for name in files if name not in saved], islands


class _RecordedOutputs:
    """What `validate_component` needs of a component's torch wrapper, without the torch model: the sample inputs
    and the outputs on them, computed before the model was freed."""

    def __init__(self, config, inputs, outputs):
        self.model = SimpleNamespace(config=config)
        self.sample_inputs = inputs
        self.outputs = outputs

    def __call__(self, *inputs):
        return self.outputs


def _torch_reference(spec: ComponentSpec, module, seed: int = 0) -> _RecordedOutputs:
    """The torch side of `validate_component(spec, module, ..., seed)`: the same sample inputs, run now.

    DeepCache's shallow UNet is held to the FULL torch UNet's output: its sample inputs carry the feature the
    full UNet computed from the same inputs, and with it the shallow graph must reproduce that output."""
    import torch

    inputs = spec.sample_inputs(module.model, np.random.default_rng(seed))
    with torch.no_grad():
        if spec.name == "unet_shallow":
            plain = {name: value for name, value in inputs.items() if name != deepcache.FEATURE}
            outputs = module.full_unet()(*to_torch(plain))
        else:
            outputs = module(*to_torch(inputs))
    return _RecordedOutputs(module.model.config, inputs, outputs)


def _manifest_entry(spec: ComponentSpec, folder: Path, files: list[str], opset: int, precision: str = "fp32",
                    file: str = "model.onnx") -> dict:
    import onnx

    # the graph's own inputs: the tracer drops one the graph does not use (a shallow UNet with no attention)
    taken = {i.name for i in onnx.load(str(folder / file), load_external_data=False).graph.input}
    return {
        "file": file,
        "external_data": EXTERNAL_DATA_NAME if EXTERNAL_DATA_NAME in files else None,
        "files": {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)} for name in files},
        "inputs": [{"name": t.name, "dtype": t.dtype, "axes": list(t.axes)} for t in spec.inputs if t.name in taken],
        "outputs": [{"name": t.name, "dtype": t.dtype, "axes": list(t.axes)} for t in spec.outputs],
        "opset": opset,
        "precision": precision,  # of the graph's computation; its inputs and outputs are float32 either way
    }


def _write_model_index(tmp: Path, index: dict, kind: SourceKind, encoders: list[str]) -> None:
    """The layout optimum's and diffusers' ONNX pipelines read (components as [library, class]); SDXL's also
    carries force_zeros_for_empty_prompt and requires_aesthetics_score (diffusers' defaults: true, false)."""
    model_index = {"_class_name": kind.ort_class, "_diffusers_version": index.get("_diffusers_version")}
    if not kind.xl:
        model_index.update(requires_safety_checker=False, safety_checker=[None, None])
    model_index["feature_extractor"] = [None, None]
    model_index["scheduler"] = ["diffusers", index["scheduler"][1]]
    for encoder, tokenizer, _ in kind.text_encoders:
        present = encoder in encoders
        model_index[tokenizer] = ["transformers", "CLIPTokenizer"] if present else [None, None]
        model_index[encoder] = ["optimum", "ORTModelTextEncoder"] if present else [None, None]
    model_index.update(
        unet=["optimum", "ORTModelUnet"],
        vae_decoder=["optimum", "ORTModelVaeDecoder"],
        vae_encoder=["optimum", "ORTModelVaeEncoder"],
    )
    if kind.xl:
        model_index["force_zeros_for_empty_prompt"] = bool(index.get("force_zeros_for_empty_prompt", True))
        model_index["requires_aesthetics_score"] = bool(index.get("requires_aesthetics_score", False))
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
