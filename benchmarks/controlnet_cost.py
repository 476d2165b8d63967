"""What a ControlNet costs per denoising step, latentrt against diffusers, each CPU path, side by side in one run.

    python -m benchmarks.controlnet_cost measure <sd15-diffusers> <controlnet-diffusers> <sd15-controlnet-onnx> \
        [--name canny] [--size 512] [--rounds 2] [--calls 3] [--threads 2] [--systems ...] \
        [--json out.json] [--markdown benchmarks/results/controlnet_cost.md]
    python -m benchmarks.controlnet_cost report out.json --markdown benchmarks/results/controlnet_cost.md

<sd15-controlnet-onnx> is `latentrt export <sd15-diffusers> OUT --controlnet NAME=<controlnet-diffusers>`: it holds
the plain UNet graph (unet/model.onnx), the UNet graph that takes the residuals (unet/model_controlnet.onnx, the same
weights) and the ControlNet (controlnet/NAME). Every figure is one network call on the CFG batch (2) at --size, a
timestep of 500, seeded random latents, text embeddings and control image (the content does not change the cost):

    plain          the plain UNet (unet/model.onnx; diffusers: the UNet without residuals): a step without ControlNet
    zeros          latentrt: the residual UNet fed zero residuals, what a folder with ControlNets runs on a call
                   without control (the same image as the plain graph; its cost is the price of one graph for both)
    controlnet     the ControlNet
    with_residuals the residual UNet fed the ControlNet's outputs (latentrt: scaled in NumPy as the runtime does;
                   diffusers: down_block_additional_residuals / mid_block_additional_residual)
    step           controlnet + with_residuals: a step with one ControlNet

Systems, each in a fresh process per round (rounds interleave them, their order rotated; latentrt runs its plain
graph in a process of its own so that one UNet session is resident at a time, as the runtime keeps it):

    ort-fp32    latentrt's ONNX Runtime CPU provider, fp32
    ov-fp32     latentrt's OpenVINO backend, precision fp32
    ov-bf16     latentrt's OpenVINO backend, precision bf16 (AVX512-BF16 or AMX)
    torch-fp32  diffusers' UNet2DConditionModel and ControlNetModel, fp32
    torch-bf16  the same under torch.autocast("cpu", dtype=torch.bfloat16)

Each process loads its networks, makes one untimed call of each kind, then --calls rounds of timed calls, the kinds
interleaved; a figure is the median over every timed call of every round. Run it under
`flock /tmp/latentrt-measure.lock` so that no other measurement shares the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.auto_rule import cpu_line, load_line, thread_env

LATENTRT = {"ort-fp32": ("cpu", "fp32"), "ov-fp32": ("openvino", "fp32"), "ov-bf16": ("openvino", "bf16")}
TORCH = ("torch-fp32", "torch-bf16")
SYSTEMS = (*LATENTRT, *TORCH)
LABELS = {"ort-fp32": "latentrt, ONNX Runtime fp32", "ov-fp32": "latentrt, OpenVINO fp32",
          "ov-bf16": "latentrt, OpenVINO bf16", "torch-fp32": "diffusers, PyTorch fp32",
          "torch-bf16": "diffusers, PyTorch bf16 autocast"}
KINDS = ("plain", "zeros", "controlnet", "with_residuals")


def inputs(size: int, channels: int = 4, text_width: int = 768, factor: int = 8) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    side = size // factor
    return {"sample": rng.standard_normal((2, channels, side, side), dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, text_width), dtype=np.float32),
            "controlnet_cond": rng.random((2, 3, size, size), dtype=np.float32)}


def _timestep(network):
    """The timestep as the graph declares it: a scalar, or one per row."""
    import numpy as np

    spec = network.inputs["timestep"]
    if spec.rank == 0:
        return np.array(500.0, np.float32)
    rows = spec.shape[0] if isinstance(spec.shape[0], int) else 2
    return np.full((rows,), 500.0, np.float32)


def _timed(record: dict, kind: str, call):
    t = time.perf_counter()
    out = call()
    record.setdefault(kind, []).append(time.perf_counter() - t)
    return out


def time_latentrt(system: str, part: str, folder_path: str, name: str, size: int, calls: int, threads: int) -> dict:
    """`part` "plain": the plain UNet graph alone; "control": the residual UNet (zeros, and the ControlNet's outputs)
    and the ControlNet."""
    import numpy as np

    from latentrt.runtime.backend import resolve_backend
    from latentrt.runtime.controlnet import (
        DOWN_OUTPUT,
        MID_OUTPUT,
        residual_inputs,
        residual_shapes,
    )
    from latentrt.runtime.folder import ModelFolder

    provider, precision = LATENTRT[system]
    folder = ModelFolder.open(folder_path)
    backend = resolve_backend(provider, precision, threads, use_cache=False, folder=folder)
    feeds = inputs(size, folder.unet.in_channels, folder.unet.cross_attention_dim, folder.vae.scale_factor)
    text = {"encoder_hidden_states": feeds["encoder_hidden_states"]}
    times: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    if part == "plain":
        unet = backend.open(folder.components["unet"])
        args = {"sample": feeds["sample"], "timestep": _timestep(unet), **text}
        unet(**args)  # OpenVINO compiles for the shape here; ONNX Runtime's first call allocates
        first = time.perf_counter() - t0
        for _ in range(calls):
            _timed(times, "plain", lambda: unet(**args))
        return {"label": backend.label(folder), "load_and_first_calls": first, "calls": times}
    unet = backend.open(folder.unet_controlnet)
    controlnet = backend.open(folder.controlnets[name])
    names = residual_inputs(unet.inputs)
    shapes = residual_shapes(folder.components["unet"].config, 2, *feeds["sample"].shape[2:])
    zeros = {n: np.zeros(s, np.float32) for n, s in zip(names, shapes)}
    outputs = [f"{DOWN_OUTPUT}{k}" for k in range(len(names) - 1)] + [MID_OUTPUT]
    base = {"sample": feeds["sample"], "timestep": _timestep(unet), **text}
    control_feeds = {"sample": feeds["sample"], "timestep": _timestep(controlnet), **text,
                     "controlnet_cond": feeds["controlnet_cond"]}

    def residuals(out) -> dict:  # as ControlStep makes them: the outputs times the scale, contiguous float32
        return {n: np.ascontiguousarray(np.asarray(out[o]) * np.float32(1.0), dtype=np.float32)
                for n, o in zip(names, outputs)}

    unet(**base, **zeros)
    fed = residuals(controlnet(**control_feeds))
    unet(**base, **fed)
    first = time.perf_counter() - t0
    for _ in range(calls):
        _timed(times, "zeros", lambda: unet(**base, **zeros))
        out = _timed(times, "controlnet", lambda: residuals(controlnet(**control_feeds)))
        _timed(times, "with_residuals", lambda out=out: unet(**base, **out))
    return {"label": backend.label(folder), "load_and_first_calls": first, "calls": times}


def time_torch(system: str, diffusers_dir: str, controlnet_dir: str, size: int, calls: int, threads: int) -> dict:
    import contextlib

    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(Path(diffusers_dir) / "unet").eval()
    controlnet = ControlNetModel.from_pretrained(controlnet_dir).eval()
    vae = json.loads((Path(diffusers_dir) / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    feeds = {k: torch.from_numpy(v) for k, v in
             inputs(size, unet.config.in_channels, unet.config.cross_attention_dim, factor).items()}
    t = torch.tensor(500.0)
    bf16 = system == "torch-bf16"

    def mode():
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if bf16:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        return stack

    def plain():
        with mode():
            return unet(feeds["sample"], t, encoder_hidden_states=feeds["encoder_hidden_states"], return_dict=False)

    def control():
        with mode():
            return controlnet(feeds["sample"], t, encoder_hidden_states=feeds["encoder_hidden_states"],
                              controlnet_cond=feeds["controlnet_cond"], conditioning_scale=1.0, return_dict=False)

    def with_residuals(out):
        down, mid = out
        with mode():
            return unet(feeds["sample"], t, encoder_hidden_states=feeds["encoder_hidden_states"],
                        down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)

    plain()
    with_residuals(control())
    first = time.perf_counter() - t0
    times: dict[str, list[float]] = {}
    for _ in range(calls):
        _timed(times, "plain", plain)
        out = _timed(times, "controlnet", control)
        _timed(times, "with_residuals", lambda out=out: with_residuals(out))
    return {"label": "bf16 autocast" if bf16 else "fp32", "load_and_first_calls": first, "calls": times}


def worker(args) -> None:
    if args.system in LATENTRT:
        result = time_latentrt(args.system, args.part, args.onnx, args.name, args.size, args.calls, args.threads)
    else:
        result = time_torch(args.system, args.diffusers, args.controlnet, args.size, args.calls, args.threads)
    print("RESULT " + json.dumps(result), flush=True)


def processes(systems: list[str]) -> list[tuple[str, str]]:
    """(system, part) per process: latentrt's plain graph and its ControlNet graphs apart; diffusers in one."""
    return [(s, part) for s in systems for part in (("plain", "control") if s in LATENTRT else ("all",))]


def run(args) -> dict:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}: choose from {', '.join(SYSTEMS)}")
    paths = {k: str(Path(getattr(args, k)).resolve()) for k in ("diffusers", "controlnet", "onnx")}
    jobs = processes(systems)
    results: dict[str, dict] = {s: {"calls": {}, "first": [], "load": []} for s in systems}
    for r in range(args.rounds):
        order = jobs[r % len(jobs):] + jobs[:r % len(jobs)]
        for system, part in order:
            cmd = [sys.executable, "-m", "benchmarks.controlnet_cost", "worker", system, part, paths["diffusers"],
                   paths["controlnet"], paths["onnx"], "--name", args.name, "--size", str(args.size),
                   "--calls", str(args.calls), "--threads", str(args.threads)]
            results[system]["load"].append(os.getloadavg()[0])  # other jobs on the machine as the process starts
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=thread_env(args.threads))
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                raise SystemExit(f"{system} ({part}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            res = json.loads(line[len("RESULT "):])
            entry = results[system]
            entry["label"] = res["label"]
            entry["first"].append(res["load_and_first_calls"])
            for kind, values in res["calls"].items():
                entry["calls"].setdefault(kind, []).extend(values)
            shown = "; ".join(f"{k} {', '.join(f'{v:.2f}' for v in vs)}" for k, vs in res["calls"].items())
            print(f"round {r + 1} {system:<10} {part:<7} {shown} s", flush=True)
    summary = {system: summarize(entry["calls"]) | {"label": entry["label"], "load_and_first_calls": entry["first"],
                                                     "load_average_1min": entry["load"]}
               for system, entry in results.items()}
    return {"size": args.size, "batch": 2, "threads": args.threads, "rounds": args.rounds, "calls_per_round": args.calls,
            "controlnet": args.name, "systems": summary,
            "command": "flock /tmp/latentrt-measure.lock python -m benchmarks.controlnet_cost " + " ".join(
                _placeholders(sys.argv[1:], paths))}


def summarize(calls: dict[str, list[float]]) -> dict:
    """Each kind's median (min, max) over its calls, the step (ControlNet + UNet with residuals) and its ratios."""
    figures = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "calls": v} for k, v in calls.items()}
    step = figures["controlnet"]["median"] + figures["with_residuals"]["median"]
    return {**figures, "step": step, "step_over_plain": step / figures["plain"]["median"],
            "zeros_over_plain": figures["zeros"]["median"] / figures["plain"]["median"] if "zeros" in figures else None}


def one_round(data: dict, number: int) -> dict:
    """The report's data restricted to round `number` (1-based): each kind's calls of that round only (every
    process appends its --calls timed calls per kind, round after round)."""
    n = data["calls_per_round"]
    part = slice((number - 1) * n, number * n)
    systems = {name: r | summarize({k: r[k]["calls"][part] for k in KINDS if k in r}) for name, r in data["systems"].items()}
    return {**data, "systems": systems, "shown_round": number}


def _placeholders(argv: list[str], paths: dict[str, str]) -> list[str]:
    """The command line with the machine's paths as <placeholders> (committed results name no local path)."""
    names = {paths["diffusers"]: "<sd15-diffusers>", paths["controlnet"]: "<controlnet-diffusers>",
             paths["onnx"]: "<sd15-controlnet-onnx>"}
    shown = []
    for a in argv:
        if not a.startswith("-") and Path(a).exists():
            a = names.get(str(Path(a).resolve()), a)
        shown.append(Path(a).name if os.path.isabs(a) else a)  # an output file: its name only
    return shown


def report(data: dict, markdown: str | None) -> str:
    s = data["systems"]
    ms = lambda f: f"{f['median']:.2f} s ({f['min']:.2f}–{f['max']:.2f})"
    lines = [
        "# The cost of a ControlNet step, latentrt against diffusers", "",
        (f"SD 1.5 architecture (random weights) with one ControlNet made from its UNet (random weights, "
        f"`ControlNetModel.from_unet`), {data['size']}x{data['size']}, batch {data['batch']} (the CFG pair), "
        f"{data['threads']} threads. One network call each; fresh process per system and round, {data['rounds']} rounds "
        f"x {data['calls_per_round']} timed calls after one untimed call of each; median (min–max) of every timed call"
        + (f" of round {data['shown_round']} alone." if data.get("shown_round") else ".")), "",
        ("| system | plain UNet call | residual UNet fed zeros | ControlNet call | UNet call with residuals | "
        "ControlNet step | step / plain step | step / call without control, same process |"),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in s.items():
        zeros = f"{ms(r['zeros'])}, {r['zeros_over_plain']:.2f}x" if r.get("zeros") else "–"
        # the call without control that ran in the same process as the step, interleaved with it call by call:
        # latentrt's residual graph fed zeros, diffusers' plain UNet
        alone = r["zeros"]["median"] if r.get("zeros") else r["plain"]["median"]
        lines.append(f"| {LABELS[name]} | {ms(r['plain'])} | {zeros} | {ms(r['controlnet'])} | {ms(r['with_residuals'])} | "
                     f"{r['step']:.2f} s | {r['step_over_plain']:.2f}x | {r['step'] / alone:.2f}x |")
    refs = {k: s[k]["step"] for k in TORCH if k in s}
    if refs:
        lines += ["", "A ControlNet step, diffusers' time / latentrt's (> 1: latentrt faster):", "",
                  "| latentrt path | " + " | ".join(f"vs {LABELS[k]}" for k in refs) + " |",
                  "| --- | " + " | ".join("---:" for _ in refs) + " |"]
        for name in (n for n in s if n in LATENTRT):
            lines.append(f"| {LABELS[name]} | " + " | ".join(f"{ref / s[name]['step']:.2f}x" for ref in refs.values()) + " |")
    lines += ["", ("- `ControlNet step` = ControlNet call + UNet call with residuals (the medians' sum); `step / plain step` "
              "divides it by the plain UNet call of the same system: what one ControlNet adds to a step. The last column "
              "divides it by the call without control that ran in the same process, interleaved call by call with the "
              "step's calls (latentrt: the residual graph fed zeros, what a folder with ControlNets runs without "
              "control; diffusers: its plain UNet): the ratio least moved by other jobs on the machine."),
              ("- `residual UNet fed zeros` is what a folder exported with `--controlnet` runs on a call without control "
              "(it opens only the graph that takes the residuals; the image is the plain graph's); the ratio is its "
              "cost over the plain graph's."),
              ("- latentrt's residuals are the ControlNet's outputs scaled in NumPy (as the runtime's step modifier does), "
              "included in `ControlNet call`; diffusers' are passed as `down_block_additional_residuals` / "
              "`mid_block_additional_residual`."), "",
              *(["- Load average (1 min) as each process started: " + "; ".join(
                  f"{LABELS[n]} {', '.join(f'{x:.1f}' for x in r['load_average_1min'])}" for n, r in s.items()) + "."]
                if all(r.get("load_average_1min") for r in s.values()) else []),
              "",
              f"**Machine.** {data.get('machine', cpu_line())}", "",
              f"Command: `{data['command']}`. {load_line(data)}", ""]
    text = "\n".join(lines)
    if markdown:
        Path(markdown).write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    for name in ("diffusers", "controlnet", "onnx"):
        m.add_argument(name)
    w = sub.add_parser("worker")
    w.add_argument("system")
    w.add_argument("part")
    for name in ("diffusers", "controlnet", "onnx"):
        w.add_argument(name)
    for p in (m, w):
        p.add_argument("--name", default="canny")
        p.add_argument("--size", type=int, default=512)
        p.add_argument("--calls", type=int, default=3)
        p.add_argument("--threads", type=int, default=2)
    m.add_argument("--rounds", type=int, default=2)
    m.add_argument("--systems", default=",".join(SYSTEMS))
    m.add_argument("--json")
    m.add_argument("--markdown")
    r = sub.add_parser("report")
    r.add_argument("json")
    r.add_argument("--markdown")
    r.add_argument("--round", type=int, help="the figures of this round alone (1-based)")
    args = parser.parse_args()
    if args.command == "worker":
        return worker(args)
    if args.command == "report":
        data = json.loads(Path(args.json).read_text())
        print(report(one_round(data, args.round) if args.round else data, args.markdown))
        return
    load_before = os.getloadavg()
    data = run(args)
    data["machine"] = cpu_line()
    data["load_average"] = {"before": load_before, "after": os.getloadavg()}
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
    print(report(data, args.markdown))


if __name__ == "__main__":
    main()
