"""Writing model folders: a component's graph as model.onnx (plus ONE model.onnx_data past 2 GB), and the
atomic rename of a finished folder into place.

Torch-free (onnx only): the exporter and the int8 quantizer both write folders this way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

EXTERNAL_DATA_THRESHOLD = 2_000_000_000  # protobuf's hard limit is 2 GiB; stay under it
EXTERNAL_DATA_NAME = "model.onnx_data"


def tensor_bytes(tensor) -> int:
    """Bytes of an initializer's data, wherever it is stored (raw, typed fields or external)."""
    import onnx

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return next((int(e.value) for e in tensor.external_data if e.key == "length"), 0)
    if tensor.raw_data:
        return len(tensor.raw_data)
    return tensor.ByteSize()


def save_component_model(model, folder: Path) -> list[str]:
    """Write ``model`` (an onnx.ModelProto with its weights loaded) as ``folder/model.onnx``, with every
    weight in ONE ``model.onnx_data`` beside it when the weights pass 2 GB. Returns the file names."""
    import onnx

    folder = Path(folder)
    target = folder / "model.onnx"
    weights = sum(tensor_bytes(t) for t in model.graph.initializer)
    if weights > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(
            model,
            str(target),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=EXTERNAL_DATA_NAME,
            size_threshold=1024,
        )
        return ["model.onnx", EXTERNAL_DATA_NAME]
    onnx.save_model(model, str(target))
    return ["model.onnx"]


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Build a folder in a hidden temporary path beside ``out`` (not yet created) and rename it into place when
    the block ends; any error (or Ctrl-C) removes it and leaves ``out`` as it was."""
    tmp = partial_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def partial_folder(out: Path) -> Path:
    """The hidden temporary folder beside ``out`` that a folder is built in."""
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def replace_folder(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
