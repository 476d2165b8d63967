"""Adding the tiny autoencoder (TAESD, TAESDXL) to an existing model folder: `latentrt add-tiny-vae MODEL DIR`.

Both tiny components are exported and validated (exporter.export_tiny_components) into a hidden folder inside
MODEL, moved into place, and manifest.json is then replaced by its updated copy in one rename: a failure leaves
MODEL as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from latentrt.export.exporter import DEFAULT_OPSET, export_tiny_components
from latentrt.export.tiny_vae import TINY_COMPONENTS, TinyVaeError, check_tiny_vae

logger = logging.getLogger(__name__)


def add_tiny_vae(model: Path, tiny_vae: Path, opset: int | None = None, force: bool = False, validate: bool = True,
                 report: Callable[[str], None] = logger.info) -> dict[str, dict]:
    """Add vae_decoder_tiny/ and vae_encoder_tiny/ to the model folder ``model`` (returns their manifest entries).

    Both are built and validated in a hidden folder inside ``model``, then moved into place, then manifest.json is
    replaced by its updated copy in one rename (a folder without one, optimum's or a legacy one, gets a manifest.json
    that lists the tiny components only: its other graphs are still read as they are). Any failure removes what was
    built and leaves ``model`` as it was; existing tiny components are replaced only with ``force``."""
    from latentrt.runtime.folder import ModelFolder, ModelFolderError

    model = Path(model)
    try:
        folder = ModelFolder.open(model)
    except ModelFolderError as exc:
        raise TinyVaeError(str(exc)) from exc
    source = check_tiny_vae(tiny_vae, folder.vae.latent_channels, folder.vae.scale_factor, folder.unet.in_channels,
                            where=str(model))
    present = [name for name in TINY_COMPONENTS if (model / name).exists()]
    if present and not force:
        raise FileExistsError(f"{model} already has {', '.join(present)}: pass --force to replace the tiny VAE")
    opset = opset or int((folder.manifest or {}).get("opset") or DEFAULT_OPSET)
    staging = model / f".tiny-vae.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    moved: list[tuple[Path, Path | None]] = []  # (component now in place, the old one moved aside or None)
    try:
        entries = export_tiny_components(source, staging, opset, validate, report)
        manifest = json.loads(json.dumps(folder.manifest)) if folder.manifest is not None else {}
        manifest.setdefault("components", {}).update(entries)
        new_manifest = staging / "manifest.json"
        new_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        for name in TINY_COMPONENTS:
            target, old = model / name, None
            if target.exists():
                old = model / f".{name}.old-{os.getpid()}"
                target.rename(old)
            (staging / name).rename(target)
            moved.append((target, old))
        os.replace(new_manifest, model / "manifest.json")  # the one step that makes the folder list them
    except BaseException:
        for target, old in reversed(moved):  # put back what was there
            shutil.rmtree(target, ignore_errors=True)
            if old is not None:
                old.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for _, old in moved:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return entries
