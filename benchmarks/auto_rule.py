"""The measurements behind `provider="auto"`: one UNet call per CPU path side by side, and the shipped model's
`latentrt generate` wall-clock per provider.

    python -m benchmarks.auto_rule unet <sd15-diffusers> <sd15-onnx> <sd15-int8> [--size 512] [--rounds 2] \
        [--calls 3] [--threads 2] [--systems ov-int8,ov-bf16,ort-int8,torch-bf16,torch-fp32] [--json out.json]
    python -m benchmarks.auto_rule generate [MODEL] [--runs 5] [--providers auto,cpu,openvino] [--json out.json]
    python -m benchmarks.auto_rule report unet.json generate.json --markdown benchmarks/results/auto_rule.md

`unet`: every system in a fresh process per round (rounds interleave the systems, their order rotated), each
process loads its UNet, makes one untimed call, then `--calls` timed calls on the same inputs (batch 2, the CFG
pair at `--size`, timestep 500, seeded random latents and text embeddings); the figure is the median over every
timed call of every round. Systems:

    ov-int8     latentrt's OpenVINO backend on the int8 folder, precision auto (int8 + bf16 on a bf16 CPU)
    ov-bf16     latentrt's OpenVINO backend on the fp32 folder, precision auto (bf16 on a bf16 CPU)
    ov-fp32     latentrt's OpenVINO backend on the fp32 folder, precision fp32
    ort-int8    ONNX Runtime's CPU provider on the int8 folder
    ort-fp32    ONNX Runtime's CPU provider on the fp32 folder
    torch-bf16  diffusers' UNet2DConditionModel under torch.autocast("cpu", dtype=torch.bfloat16)
    torch-fp32  diffusers' UNet2DConditionModel in fp32

`generate`: `latentrt generate` of the shipped model (or MODEL) at its defaults, a fresh process per run, the
providers interleaved: what a CLI user waits for (load, OpenVINO's compilation, the image, the PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEMS = ("ov-int8", "ov-bf16", "ov-fp32", "ort-int8", "ort-fp32", "torch-bf16", "torch-fp32")
DEFAULT_SYSTEMS = ("ov-int8", "ov-bf16", "ort-int8", "torch-bf16", "torch-fp32")
# system -> (provider, precision, folder key); torch systems read the diffusers folder
LATENTRT_SYSTEMS = {
    "ov-int8": ("openvino", "auto", "int8"), "ov-bf16": ("openvino", "auto", "fp32"),
    "ov-fp32": ("openvino", "fp32", "fp32"), "ort-int8": ("cpu", "fp32", "int8"), "ort-fp32": ("cpu", "fp32", "fp32"),
}
LABELS = {
    "ov-int8": "latentrt, OpenVINO on the int8 folder", "ov-bf16": "latentrt, OpenVINO on the fp32 folder",
    "ov-fp32": "latentrt, OpenVINO fp32", "ort-int8": "latentrt, ONNX Runtime on the int8 folder",
    "ort-fp32": "latentrt, ONNX Runtime fp32", "torch-bf16": "PyTorch bf16 autocast (diffusers)",
    "torch-fp32": "PyTorch fp32 (diffusers)",
}


def unet_inputs(size: int, latent_channels: int = 4, width: int = 768):
    import numpy as np

    rng = np.random.default_rng(0)
    side = size // 8
    return {
        "sample": rng.standard_normal((2, latent_channels, side, side), dtype=np.float32),
        "timestep": np.array([500.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, width), dtype=np.float32),
    }


def time_latentrt(system: str, folders: dict[str, str], size: int, calls: int, threads: int) -> dict:
    from latentrt.runtime.backend import resolve_backend
    from latentrt.runtime.folder import ModelFolder

    provider, precision, key = LATENTRT_SYSTEMS[system]
    folder = ModelFolder.open(folders[key])
    t0 = time.perf_counter()
    backend = resolve_backend(provider, precision, threads, use_cache=provider != "openvino", folder=folder)
    unet = backend.open(folder.components["unet"])
    feeds = unet_inputs(size, folder.unet.in_channels, folder.unet.cross_attention_dim)
    unet(**feeds)  # OpenVINO compiles for the shape here; ONNX Runtime's first call allocates
    first = time.perf_counter() - t0
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        unet(**feeds)
        times.append(time.perf_counter() - t)
    return {"system": system, "label": backend.label(folder), "load_and_first_call": first, "calls": times}


def time_torch(system: str, folders: dict[str, str], size: int, calls: int, threads: int) -> dict:
    import contextlib

    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(Path(folders["diffusers"]) / "unet").eval()
    feeds = {k: torch.from_numpy(v) for k, v in unet_inputs(size, unet.config.in_channels,
                                                             unet.config.cross_attention_dim).items()}
    bf16 = system == "torch-bf16"

    def call():
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            return unet(feeds["sample"], feeds["timestep"], encoder_hidden_states=feeds["encoder_hidden_states"]).sample

    call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return {"system": system, "label": "bf16 autocast" if bf16 else "fp32", "load_and_first_call": first, "calls": times}


def worker(args) -> None:
    folders = json.loads(args.folders)
    fn = time_latentrt if args.system in LATENTRT_SYSTEMS else time_torch
    print("RESULT " + json.dumps(fn(args.system, folders, args.size, args.calls, args.threads)), flush=True)


def thread_env(threads: int) -> dict[str, str]:
    return {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}


def run_unet(args) -> dict:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}: choose from {', '.join(SYSTEMS)}")
    folders = {"diffusers": str(Path(args.diffusers).resolve()), "fp32": str(Path(args.fp32).resolve()),
               "int8": str(Path(args.int8).resolve())}
    results: dict[str, list[dict]] = {s: [] for s in systems}
    for r in range(args.rounds):
        order = systems[r % len(systems):] + systems[:r % len(systems)]
        for system in order:
            cmd = [sys.executable, "-m", "benchmarks.auto_rule", "worker", system, json.dumps(folders),
                   "--size", str(args.size), "--calls", str(args.calls), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=thread_env(args.threads))
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                raise SystemExit(f"{system} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            res = json.loads(line[len("RESULT "):])
            results[system].append(res)
            print(f"round {r + 1} {system:<11} calls {', '.join(f'{t:.2f}' for t in res['calls'])} s "
                  f"(load + first call {res['load_and_first_call']:.1f} s)", flush=True)
    summary = {}
    for system, runs in results.items():
        calls = [t for run in runs for t in run["calls"]]
        summary[system] = {"label": runs[0]["label"], "median": statistics.median(calls), "min": min(calls),
                           "max": max(calls), "calls": calls,
                           "load_and_first_call": statistics.median(r["load_and_first_call"] for r in runs)}
    return {"kind": "unet", "size": args.size, "batch": 2, "threads": args.threads, "rounds": args.rounds,
            "calls_per_round": args.calls, "systems": summary, "command": "python -m benchmarks.auto_rule " +
            " ".join(sys.argv[1:])}


def run_generate(args) -> dict:
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    model = args.model
    walls: dict[str, list[float]] = {p: [] for p in providers}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs + 1):  # the first round warms the OS file cache and ONNX Runtime's cache
            order = providers[r % len(providers):] + providers[:r % len(providers)]
            for provider in order:
                cmd = [sys.executable, "-m", "latentrt.cli", "generate", "a red circle", "-o", f"{tmp}/{provider}.png",
                       "--provider", provider, "--threads", str(args.threads), "--force"] + (["-m", model] if model else [])
                t = time.perf_counter()
                proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=thread_env(args.threads))
                wall = time.perf_counter() - t
                if proc.returncode:
                    raise SystemExit(f"generate --provider {provider} failed:\n{proc.stdout}\n{proc.stderr}")
                if r:
                    walls[provider].append(wall)
                print(f"{'warm-up' if not r else f'run {r}'} --provider {provider}: {wall:.2f} s", flush=True)
    return {"kind": "generate", "model": model or "the shipped shapes model", "threads": args.threads,
            "runs": args.runs, "walls": walls,
            "median": {p: statistics.median(w) for p, w in walls.items()},
            "command": "python -m benchmarks.auto_rule " + " ".join(sys.argv[1:])}


def cpu_line() -> str:
    from latentrt.bench.machine import machine_info
    from latentrt.runtime.auto_backend import CPU_KINDS, cpu_kind

    m = machine_info()
    return (f"{m['cpu_model']}, {m['logical_cores']} logical cores, {m['memory_gb']} GB; flags {' '.join(m['cpu_flags'])}; "
            f"latentrt's CPU kind: {cpu_kind()} ({CPU_KINDS[cpu_kind()]})")


def load_line(data: dict) -> str:
    load = data.get("load_average")
    if not load:
        return ""
    return ("Load average (1, 5, 15 min) before / after: " + ", ".join(f"{x:.1f}" for x in load["before"]) + " / "
            + ", ".join(f"{x:.1f}" for x in load["after"]) + ".")


def report(paths: list[str], markdown: str | None) -> str:
    lines = ["# The auto rule's measurements on this CPU", "", f"**Machine.** {cpu_line()}", ""]
    for path in paths:
        data = json.loads(Path(path).read_text())
        if data["kind"] == "unet":
            s = data["systems"]
            lines += [f"## One UNet call, {data['size']}x{data['size']}, batch 2 (CFG), {data['threads']} threads", "",
                      (f"Fresh process per system and round, {data['rounds']} rounds x {data['calls_per_round']} "
                       "timed calls after one untimed call; median (min-max) of every timed call."), "",
                      "| system | precision | UNet call | vs PyTorch bf16 | vs PyTorch fp32 | load + first call |",
                      "| --- | --- | ---: | ---: | ---: | ---: |"]
            bf16 = s.get("torch-bf16", {}).get("median")
            fp32 = s.get("torch-fp32", {}).get("median")
            for name, r in sorted(s.items(), key=lambda kv: kv[1]["median"]):
                ratios = [f"{ref / r['median']:.2f}x" if ref else "–" for ref in (bf16, fp32)]
                lines.append(f"| {LABELS[name]} | {r['label']} | {r['median']:.2f} s ({r['min']:.2f}–{r['max']:.2f}) | "
                             f"{ratios[0]} | {ratios[1]} | {r['load_and_first_call']:.1f} s |")
            lines += ["", f"Command: `{data['command']}`. {load_line(data)}", ""]
        else:
            lines += [f"## `latentrt generate`, {data['model']}, fresh process per run", "",
                      f"{data['runs']} runs per provider after a warm-up round, interleaved; {data['threads']} threads.", "",
                      "| --provider | median wall | runs |", "| --- | ---: | --- |"]
            for p, med in sorted(data["median"].items(), key=lambda kv: kv[1]):
                lines.append(f"| {p} | {med:.2f} s | {', '.join(f'{w:.2f}' for w in data['walls'][p])} |")
            lines += ["", f"Command: `{data['command']}`. {load_line(data)}", ""]
    text = "\n".join(lines)
    if markdown:
        Path(markdown).write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    u = sub.add_parser("unet")
    u.add_argument("diffusers")
    u.add_argument("fp32")
    u.add_argument("int8")
    u.add_argument("--size", type=int, default=512)
    u.add_argument("--rounds", type=int, default=2)
    u.add_argument("--calls", type=int, default=3)
    u.add_argument("--threads", type=int, default=2)
    u.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS))
    u.add_argument("--json")
    g = sub.add_parser("generate")
    g.add_argument("model", nargs="?")
    g.add_argument("--runs", type=int, default=5)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--providers", default="auto,cpu,openvino")
    g.add_argument("--json")
    w = sub.add_parser("worker")
    w.add_argument("system")
    w.add_argument("folders")
    w.add_argument("--size", type=int, default=512)
    w.add_argument("--calls", type=int, default=3)
    w.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("report")
    r.add_argument("json", nargs="+")
    r.add_argument("--markdown")
    args = parser.parse_args()
    if args.command == "worker":
        return worker(args)
    if args.command == "report":
        print(report(args.json, args.markdown))
        return
    load_before = os.getloadavg()
    data = run_unet(args) if args.command == "unet" else run_generate(args)
    data["machine"] = cpu_line()
    data["load_average"] = {"before": load_before, "after": os.getloadavg()}  # other jobs on the machine
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
    print(json.dumps({k: v for k, v in data.items() if k not in ("systems", "walls")}, indent=1))


if __name__ == "__main__":
    main()
