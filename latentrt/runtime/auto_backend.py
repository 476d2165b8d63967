"""What `provider="auto"` runs a folder on: a rule measured on the CPUs latentrt runs on, checked by CPU flags.

The rule (docs/backends.md, "auto"; measurements in benchmarks/results/auto_rule.md):

    openvino extra missing                            ONNX Runtime (cpu)
    small UNet (< SMALL_UNET_GFLOP per image at the   ONNX Runtime: the time of a generation is OpenVINO's
      folder's native size)                           compilation (the shipped shapes model, tiny test folders)
    CPU with bf16 (AMX, AVX512-BF16)                  OpenVINO at bf16, fp32 and int8 folders alike (Zen 4: UNet
                                                      call 4.75 s against ONNX Runtime fp32 8.46 s; int8 folder
                                                      3.17 s against ONNX Runtime int8 4.27 s)
    no bf16 (AVX2 only, AVX-512 without bf16, other)  ONNX Runtime (AVX2 EPYC, per step: fp32 11-12 s against
                                                      OpenVINO fp32 11-13 s; int8 folder 6.7 s against 7.9 s;
                                                      and it compiles nothing at load)

AMX Xeons get the bf16 row without an OpenVINO measurement of their own (the only Xeon runs are fp32): AMX runs
OpenVINO's bf16 and int8 matrix work on the units that made Zen 4's AVX512-BF16 path the fastest, so the row is
kept; docs/backends.md says so. The kind of CPU comes from its flags (/proc/cpuinfo, as the caches read them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from latentrt.runtime.cache import cpu_signature
from latentrt.runtime.folder import ModelFolder

# A UNet below this many GFLOP per image (one sample, native size) runs in milliseconds: OpenVINO's compilation
# (seconds) is most of a generation there. The shipped shapes model is 0.18, SD 1.x/2.x 800 (512x512), SDXL 3,000+.
SMALL_UNET_GFLOP = 50.0
# Without a FLOP count in the manifest (optimum's or diffusers' folders): the UNet's files, bytes
SMALL_UNET_BYTES = 200e6

CPU_KINDS = {
    "amx": "Intel AMX (bf16 and int8 matrix units)",
    "avx512-bf16": "AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake)",
    "avx512": "AVX-512 without bf16",
    "avx2": "AVX2 without AVX-512",
    "other": "no AVX2 (or not x86)",
}
BF16_KINDS = ("amx", "avx512-bf16")


def cpu_flags() -> frozenset[str]:
    """This CPU's instruction-set flags (the same read as the caches' `cpu_signature`)."""
    return frozenset(cpu_signature().rsplit("|", 1)[-1].split())


def cpu_kind(flags: Iterable[str] | None = None) -> str:
    """One of CPU_KINDS, from the CPU's flags (this CPU's unless given: tests simulate the others)."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "other"


def unet_size(folder: ModelFolder) -> tuple[bool, str]:
    """(the UNet is small, in words why): its GFLOP per image at the native size, else its files' bytes."""
    unet = folder.components["unet"]
    entry = unet.manifest or {}
    formula = entry.get("flops")
    if formula and all(k in formula for k in ("a", "b", "c")):
        side = folder.unet.sample_size
        n = side * side
        gflop = (formula["c"] + formula["a"] * n + formula["b"] * n * n) / 1e9
        small = gflop < SMALL_UNET_GFLOP
        return small, (f"UNet {gflop:,.1f} GFLOP per image at {side * folder.vae.scale_factor}px "
                       f"({'<' if small else '>='} {SMALL_UNET_GFLOP:g})")
    size = sum(p.stat().st_size for p in unet.model.parent.glob("*") if p.is_file())
    small = size < SMALL_UNET_BYTES
    return small, f"UNet files {size / 1e6:,.0f} MB ({'<' if small else '>='} {SMALL_UNET_BYTES / 1e6:,.0f} MB)"


@dataclass(frozen=True)
class AutoChoice:
    provider: str  # "openvino" or "cpu"
    reason: str  # one line: what was measured to decide it


def auto_choice(folder: ModelFolder | None, openvino: bool, bf16: bool | Callable[[], bool],
                flags: Iterable[str] | None = None) -> AutoChoice:
    """The provider `auto` picks for `folder` (None: a full-size fp32 folder) on a CPU with `flags`.

    `openvino`: the extra is installed; `bf16`: OpenVINO's CPU plugin runs bf16 here, or a function that says so,
    called only when the answer matters (it imports OpenVINO: 0.2 s that a small model's generation would pay).
    Both come from the caller, so tests can simulate any CPU."""
    kind = cpu_kind(flags)
    int8 = folder is not None and any(c.quantized for c in folder.components.values())
    what = "int8 folder" if int8 else "float folder"
    if not openvino:
        return AutoChoice("cpu", 'ONNX Runtime: the openvino extra is not installed (pip install "latentrt[openvino]")')
    if folder is not None:
        small, size = unet_size(folder)
        if small:
            return AutoChoice("cpu", f"ONNX Runtime: small model ({size}): OpenVINO's compilation would be most of "
                                     "each generation")
    if kind not in BF16_KINDS:
        return AutoChoice("cpu", f"ONNX Runtime: {CPU_KINDS[kind]}, {what}: without bf16 OpenVINO was no faster "
                                 "(measured on AVX2) and compiles at load")
    if bf16() if callable(bf16) else bf16:
        return AutoChoice("openvino", f"OpenVINO bf16: {CPU_KINDS[kind]}, {what}: measured fastest per UNet call "
                                      "on a bf16 CPU")
    # the flags say bf16 and OpenVINO does not run it (a VM hiding it, an old plugin)
    return AutoChoice("cpu", f"ONNX Runtime: {CPU_KINDS[kind]} in the CPU flags, but OpenVINO runs no bf16 here")
