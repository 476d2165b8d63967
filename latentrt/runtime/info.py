"""`latentrt info`: what a model folder holds and what this machine can run it with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort

from latentrt.runtime.auto_backend import CPU_KINDS, cpu_kind
from latentrt.runtime.backend import openvino_installed, resolve_backend
from latentrt.runtime.families import family_for
from latentrt.runtime.folder import REEXPORT_HINT, ModelFolder, ModelFolderError, file_sha256
from latentrt.runtime.schedulers import available_schedulers
from latentrt.runtime.session import OnnxModel, available_providers


def describe(path: Path, verify: bool = False) -> dict[str, Any]:
    folder = ModelFolder.open(path)
    family = family_for(folder)
    manifest = folder.manifest or {}
    networks = dict(folder.components)
    if folder.unet_controlnet is not None:  # the UNet taking ControlNet residuals (its weights: unet's file)
        networks["unet_controlnet"] = folder.unet_controlnet
    networks.update({files.name: files for files in folder.controlnets.values()})
    components = {name: _component(name, files, verify) for name, files in networks.items()}
    return {
        "path": str(folder.path),
        "format": manifest.get("format", "optimum/diffusers (no manifest)"),
        "source": manifest.get("source"),
        "exporter": manifest.get("exporter"),
        "opset": manifest.get("opset"),
        "precision": manifest.get("precision", "unknown (no manifest)"),
        "family": family.name,
        "tasks": _tasks(folder, family),
        "native_size": folder.unet.sample_size * folder.vae.scale_factor,
        "size_multiple": folder.size_multiple,
        "scheduler": folder.scheduler_config.get("_class_name"),
        "prediction_type": folder.scheduler_config.get("prediction_type", "epsilon"),
        "defaults": manifest.get("defaults"),
        "deepcache": folder.deepcache,  # None: no shallow UNet (`latentrt export --deepcache`)
        "tiny_vae": [name for name in ("vae_decoder_tiny", "vae_encoder_tiny") if name in folder.components],
        "controlnets": list(folder.controlnets),
        "components": components,
        "verified": verify and folder.manifest is not None,
        "schedulers": available_schedulers(),
        "providers_available": available_providers(),
        "onnxruntime": ort.__version__,
        "runtime": runtime_choices(folder),
    }


def _component(name: str, files, verify: bool) -> dict[str, Any]:
    """One network's inputs, outputs, file sizes and precision: from the manifest, or read from the graph."""
    entry = files.manifest
    if entry is None:  # optimum's or diffusers' folder: read the graph's declared IO
        model = OnnxModel(name, files.model, ["CPUExecutionProvider"])
        io = {
            "inputs": [{"name": t.name, "dtype": str(t.dtype), "axes": list(t.shape)} for t in model.inputs.values()],
            "outputs": [{"name": t.name, "dtype": str(t.dtype), "axes": list(t.shape)} for t in model.outputs.values()],
        }
        sizes = {p.name: p.stat().st_size for p in files.model.parent.glob(f"{files.model.name}*")}
        precision = "unknown (no manifest)"
    else:
        io = {"inputs": entry["inputs"], "outputs": entry["outputs"]}
        sizes = {k: v["bytes"] for k, v in entry["files"].items()}
        precision = entry.get("precision", "?")
        if verify:
            _verify(files.model.parent, entry)
    return {**io, "bytes": sizes, "precision": precision, **({"shares_weights_with": entry["shares_weights_with"]}
                                                           if entry and entry.get("shares_weights_with") else {})}


def _tasks(folder: ModelFolder, family) -> list[str]:
    """What `pipe(...)` can do with this folder: text to image needs no image (not a refiner, not a 9-channel
    inpainting UNet); image to image and inpainting need the VAE encoder."""
    inpaint_unet = folder.inpaint_unet
    encoder = "vae_encoder" in folder.components
    tasks = [] if inpaint_unet or family.is_refiner else ["txt2img"]
    if encoder:
        tasks += ["inpaint"] if inpaint_unet else ["img2img", "inpaint"]
    return tasks


def runtime_choices(folder: ModelFolder) -> dict[str, Any]:
    """What `provider="auto", precision="auto"` resolves to here, and what each backend would run at."""
    out: dict[str, Any] = {"openvino": None, "bf16": False}
    if openvino_installed():
        from latentrt.runtime.backends.openvino import supports_bf16, version

        out["openvino"] = version()
        out["bf16"] = supports_bf16()
    auto = resolve_backend("auto", "auto", folder=folder, use_cache=False)
    out["auto"] = {"provider": auto.provider, "precision": auto.label(folder)}
    out["auto_reason"] = auto.reason
    out["cpu_kind"] = cpu_kind()
    out["exact"] = {"provider": "cpu", "precision": resolve_backend("cpu", "fp32").label(folder)}
    return out


def _verify(folder: Path, entry: dict[str, Any]) -> None:
    for name, meta in entry["files"].items():
        if file_sha256(folder / name) != meta["sha256"]:
            raise ModelFolderError(f"{folder / name} does not match the manifest's sha256: it is corrupted; {REEXPORT_HINT}")


def render(d: dict[str, Any]) -> str:
    lines = [f"model folder  {d['path']}", f"format        {d['format']}"]
    if d["source"]:
        lines.append(f"exported from {d['source'].get('path')} ({d['source'].get('class_name')}), opset {d['opset']}")
    lines.append(f"precision     {d['precision']} (per component below)")
    lines.append(f"family        {d['family']}; tasks: {', '.join(d['tasks'])}")
    lines.append(f"native size   {d['native_size']}x{d['native_size']} (height/width multiples of {d['size_multiple']})")
    lines.append(f"scheduler     {d['scheduler']}, prediction {d['prediction_type']}")
    if d["defaults"]:
        lines.append(f"defaults      {d['defaults']}")
    if d.get("deepcache"):
        lines.append(f"DeepCache     split at skip branch {d['deepcache']['branch']} (unet_shallow): --cache-interval N runs "
                     "the full UNet on one call in N")
    else:
        lines.append("DeepCache     no (export with --deepcache for --cache-interval)")
    if d.get("tiny_vae"):
        lines.append(f"tiny VAE      {', '.join(d['tiny_vae'])}: --vae tiny (generate, serve), previews decoded by it")
    else:
        lines.append("tiny VAE      no (latentrt add-tiny-vae MODEL TAESD_DIR adds one; previews use a linear approximation)")
    if d.get("controlnets"):
        lines.append(f"ControlNet    {', '.join(d['controlnets'])} (controlnet/<name>/; the UNet as unet/model_controlnet.onnx "
                     "takes their residuals)")
    else:
        lines.append("ControlNet    no (export with --controlnet [NAME=]DIR)")
    lines.append("components")
    for name, c in d["components"].items():
        shared = c.get("shares_weights_with")
        mb = sum(size for file, size in c["bytes"].items() if not shared or not file.endswith("_data")) / 1e6
        note = f" (weights: {shared}'s file)" if shared else ""
        lines.append(f"  {name:<16} {mb:8.1f} MB  {c['precision']}  files: {', '.join(c['bytes'])}{note}")
        for kind in ("inputs", "outputs"):
            for t in c[kind]:
                axes = ", ".join(str(a) for a in t["axes"])
                lines.append(f"      {kind[:-1]:<6} {t['name']:<24} {t['dtype']:<8} ({axes})")
    if d["verified"]:
        lines.append("sha256        all files match the manifest")
    lines.append(f"schedulers    {', '.join(d['schedulers'])}")
    lines.append(f"providers     {', '.join(d['providers_available'])} (onnxruntime {d['onnxruntime']})")
    rt = d["runtime"]
    openvino = f"openvino {rt['openvino']} (bf16 {'yes' if rt['bf16'] else 'no'} on this CPU)" if rt["openvino"] else "openvino not installed (pip install \"latentrt[openvino]\")"
    lines.append(f"backends      {openvino}")
    lines.append(f"cpu           {CPU_KINDS.get(rt.get('cpu_kind'), rt.get('cpu_kind'))}")
    lines.append(f"auto here     {rt['auto']['provider']} {rt['auto']['precision']}; exact parity: --provider cpu --precision fp32")
    if rt.get("auto_reason"):
        lines.append(f"  why         {rt['auto_reason']}")
    return "\n".join(lines)
