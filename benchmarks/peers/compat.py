"""Diffusers folders saved by latentrt's main environment, read by a peer's older libraries.

The main venv saves with transformers 5 (at the time of writing 5.24). Peers pin older releases:
optimum's venv transformers 4.57, optimum-intel's transformers 5.5. Two differences are silent there:
`tokenizer/` without vocab.json + merges.txt (transformers 4's slow CLIPTokenizer needs them) and
`text_encoder/` weights without the `text_model.` prefix (transformers 4.57 and 5.5 load none of them,
warn, and export a randomly initialized text encoder). `shim_source` gives a view of the folder that
both read correctly; the source is never modified.

Also what every peer's export does the same way: `go_offline` (local folders only) and `export_atomically`
(OUT appears only when complete, from the shimmed view, recording the real source).

Runs inside the peers' venvs (standard library; safetensors when a text encoder is re-keyed), with the source
checkout on sys.path (each worker puts it there).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from latentrt.bench.peers import OFFLINE_ENV  # standard library only: fine in a peer's venv


def go_offline() -> None:
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)


def needs_slow_tokenizer_files(tok_dir: Path) -> bool:
    """True for a tokenizer folder saved by transformers 5: tokenizer.json only, no vocab.json/merges.txt.

    transformers 4.x (optimum's venv) loads `CLIPTokenizer` as the slow Python tokenizer, which reads
    vocab.json and merges.txt and fails on such a folder ("expected str ... not NoneType").
    """
    return (tok_dir / "tokenizer.json").is_file() and not (
        (tok_dir / "vocab.json").is_file() and (tok_dir / "merges.txt").is_file()
    )


def write_slow_tokenizer_files(tokenizer_json: Path, out_dir: Path) -> None:
    """vocab.json and merges.txt from a BPE tokenizer.json (the files a slow CLIPTokenizer reads)."""
    model = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]
    if model.get("type") != "BPE":
        raise SystemExit(f"{tokenizer_json}: expected a BPE tokenizer, got {model.get('type')!r}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out_dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")


def text_encoder_needs_prefix(te_dir: Path) -> bool:
    """True when a CLIPTextModel was saved by transformers 5 (keys `embeddings.*`, `encoder.*`, ...).

    transformers 4.x (and 5.5) expects `text_model.embeddings.*`: it would load nothing, warn, and export a
    text encoder with freshly initialized random weights. Checkpoints saved by transformers 4
    (every published SD folder) already have the prefix.
    """
    path = te_dir / "model.safetensors"
    if not path.is_file() or not (te_dir / "config.json").is_file():
        return False
    if json.loads((te_dir / "config.json").read_text()).get("architectures") != ["CLIPTextModel"]:
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        keys = list(f.keys())
    return bool(keys) and not any(k.startswith("text_model.") for k in keys)


def shim_source(src: Path, scratch: Path) -> Path:
    """`src` itself, or a view of it (symlinks) that an older transformers reads as transformers 5 meant.

    Two differences between a folder saved with transformers 5 and what a peer's older transformers
    reads: tokenizer/ without vocab.json + merges.txt, and text_encoder/ weights without the
    `text_model.` prefix. The view adds the tokenizer files and a re-keyed copy of the weights.
    """
    fix_tok = needs_slow_tokenizer_files(src / "tokenizer")
    fix_te = text_encoder_needs_prefix(src / "text_encoder")
    if not (fix_tok or fix_te):
        return src
    view = scratch / "src"
    view.mkdir(parents=True)
    for entry in src.iterdir():
        if (entry.name == "tokenizer" and fix_tok) or (entry.name == "text_encoder" and fix_te):
            (view / entry.name).mkdir()
            for sub in entry.iterdir():
                if not (fix_te and sub.name == "model.safetensors" and entry.name == "text_encoder"):
                    (view / entry.name / sub.name).symlink_to(sub.resolve())
        else:
            (view / entry.name).symlink_to(entry.resolve())
    if fix_tok:
        write_slow_tokenizer_files(src / "tokenizer" / "tokenizer.json", view / "tokenizer")
        print("note: tokenizer/ has tokenizer.json only; wrote vocab.json + merges.txt for transformers 4",
              file=sys.stderr)
    if fix_te:
        from safetensors.numpy import load_file, save_file

        tensors = load_file(str(src / "text_encoder" / "model.safetensors"))
        save_file({"text_model." + k: v for k, v in tensors.items()},
                  str(view / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
        print("note: text_encoder/ weights saved by transformers 5 (no `text_model.` prefix); "
              "re-keyed them with the `text_model.` prefix", file=sys.stderr)
    return view


def export_atomically(src: str | Path, out: str | Path, export: Callable[[Path, Path], None]) -> tuple[Path, float]:
    """`export(source_view, tmp)` into the sibling `OUT.partial`, renamed to OUT when it returns.

    `source_view` is `shim_source(src)` (see above); a failed export leaves no half folder behind; the
    written model_index.json records the real source as `_name_or_path`, not the temporary view.
    Returns (OUT, seconds).
    """
    src, out = Path(src).resolve(), Path(out).resolve()
    if not (src / "model_index.json").is_file():
        raise SystemExit(f"{src} is not a diffusers folder: model_index.json is missing")
    if out.exists():
        raise SystemExit(f"{out} already exists: remove it or choose another output folder")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="peer-export-"))
    try:
        export(shim_source(src, scratch), tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    index = tmp / "model_index.json"
    meta = json.loads(index.read_text())
    meta["_name_or_path"] = str(src)
    index.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tmp.rename(out)
    return out, time.perf_counter() - t0
