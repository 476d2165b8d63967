"""`latentrt export SRC OUT --int8`: export, then quantize the UNet (as `latentrt quantize` does) into OUT, in one
command.

The fp32 export is written to a hidden folder beside OUT (`.OUT.fp32-PID`), validated against PyTorch as every
export is, calibrated and quantized into OUT (built beside OUT too and renamed into place), and removed at the end,
whatever happens: a failure at any step leaves no OUT (an existing OUT, replaced only with `force`, stays as it was)
and no fp32 folder. OUT holds only the int8 UNet: an fp32 copy would add the UNet's full size (3.4 GB for SD 1.5)
to every folder for LoRAs alone, and the runtime runs one UNet per folder; to use LoRAs, export without --int8
(docs/int8.md).
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentrt.export.quantize import QuantizeReport, quantize_folder


@dataclass
class Int8ExportReport:
    out: Path
    seconds: float
    export_seconds: float
    quantize: QuantizeReport


def fp32_folder(out: Path) -> Path:
    """The hidden folder beside OUT that the fp32 export is written to (removed at the end)."""
    return out.parent / f".{out.name}.fp32-{os.getpid()}"


def export_int8(src: str | Path, out: str | Path, *, force: bool = False, report: Callable[[str], None] = print,
                export_options: dict[str, Any] | None = None,
                quantize_options: dict[str, Any] | None = None) -> Int8ExportReport:
    """Export ``src`` (export_pipeline with ``export_options``) and quantize it into ``out`` (quantize_folder with
    ``quantize_options``); see the module docstring."""
    from latentrt.export.exporter import export_pipeline

    src, out = Path(src), Path(out)
    export_options = dict(export_options or {})
    if export_options.get("precision", "fp32") != "fp32":
        raise ValueError(f"--int8 quantizes an fp32 export: leave out --precision {export_options['precision']} "
                         "(fp16 folders are for GPUs, int8 for CPUs)")
    if export_options.get("controlnets"):
        raise ValueError("--int8 does not combine with --controlnet yet (a ControlNet folder runs its residual UNet, which "
                         "latentrt quantize does not quantize): export without --int8, or without --controlnet")
    if out.exists() and not force:  # fail before minutes of export
        raise FileExistsError(f"{out} already exists: choose another OUT or pass --force to replace it")
    started = time.perf_counter()
    fp32 = fp32_folder(out)
    shutil.rmtree(fp32, ignore_errors=True)
    try:
        report(f"step 1/2: exporting {src} at fp32 into a temporary folder beside {out.name} (removed at the end)")
        exported = export_pipeline(src, fp32, report=report, **export_options)
        report(f"step 1/2 done: exported and validated in {exported.seconds:.1f} s")
        gc.collect()  # the PyTorch pipeline the export loaded is garbage now: free it before calibration
        report("step 2/2: calibrating on the folder's own generations and quantizing the UNet to int8 "
               "(as `latentrt quantize`)")
        quantized = quantize_folder(fp32, out, force=force, report=report,
                                    recorded_source=f"latentrt export --int8 of {src.resolve()} (fp32 export not kept)",
                                    **(quantize_options or {}))
        report(f"step 2/2 done: calibration {quantized.calibration_seconds:.1f} s, quantization "
               f"{quantized.quantize_seconds:.1f} s")
    finally:
        shutil.rmtree(fp32, ignore_errors=True)
    return Int8ExportReport(out, time.perf_counter() - started, exported.seconds, quantized)


__all__ = ["Int8ExportReport", "export_int8", "fp32_folder"]
