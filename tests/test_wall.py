"""The wall: a generation needs no torch, diffusers or transformers."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys
from latentrt import Pipeline
pipe = Pipeline.from_folder(sys.argv[1], provider="cpu")
result = pipe("a red circle", steps=3, guidance_scale=7.5, scheduler="ddim", seed=1)
banned = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "diffusers", "transformers"})
print(json.dumps({"banned": banned, "size": list(result.images[0].size)}))
"""


def test_generation_imports_no_torch(tiny_sd1):
    _, onnx_dir = tiny_sd1
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(onnx_dir)], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["size"] == [64, 64]
    assert report["banned"] == []


def test_runtime_sources_do_not_import_torch_side():
    """Static check as well: no runtime module has an import (even a lazy one) of the export-side libraries."""
    import ast
    from pathlib import Path

    import latentrt.runtime

    root = Path(latentrt.runtime.__file__).parent
    banned = {"torch", "diffusers", "transformers", "optimum", "onnx"}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in banned, f"{path}:{node.lineno} imports {name}"
