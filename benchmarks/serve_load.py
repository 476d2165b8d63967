"""Load test of `latentrt serve` on loopback: 16 concurrent clients x 20 requests each on the shipped model.

Scenarios, each a fresh server process: batching off (--max-batch 1), batching on (--max-batch N), and --max-queue 4
(clients do not retry a 429). Per scenario: requests answered / lost (no answer) / errors by status, 429s, p50 and
p99 latency, images/s over the wall time, the server's RSS after the first 20 answers and at the end, and how many
images the shapes judge finds right (colour and shape as asked). Bounded: 320 requests per scenario, a 120 s
timeout per request, only 127.0.0.1.

    python benchmarks/serve_load.py --json benchmarks/results/serve_load.json --markdown benchmarks/results/serve_load.md
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training.shapes.judge import judge  # noqa: E402

COLORS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], port: int, timeout: float = 300, capture: bool = False) -> subprocess.Popen:
    """`latentrt serve ARGS --port PORT` in a child process, returned once GET /health answers 200. capture: its
    stdout and stderr together in `process.stdout` (the tests read what it printed); else stdout is discarded."""
    output = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT) if capture else dict(stdout=subprocess.DEVNULL,
                                                                                           stderr=subprocess.PIPE)
    process = subprocess.Popen([sys.executable, "-m", "latentrt.cli", "serve", *args, "--port", str(port)], cwd=ROOT,
                               text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"), **output)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {(process.stdout if capture else process.stderr).read()}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return process
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or too busy starting to answer
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the server did not become ready in {timeout:g} s"
                       + (f": {process.stdout.read()}" if capture else ""))


def scenario(name: str, args: list[str], clients: int, per_client: int) -> dict:
    port = free_port()
    server = start_server(args, port)
    url = f"http://127.0.0.1:{port}/v1/images/generations"
    proc = psutil.Process(server.pid)
    max_batch = requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json().get("max_batch")
    records: list[dict] = []
    lock = threading.Lock()
    rss_after_first: list[float] = []

    def client(index: int) -> None:
        rng = random.Random(index)
        session = requests.Session()
        for _ in range(per_client):
            color, shape = rng.choice(COLORS), rng.choice(SHAPES)
            body = {"prompt": f"a {color} {shape} in the middle on a white background", "seed": rng.randrange(2**31)}
            start = time.perf_counter()
            record = {"color": color, "shape": shape}
            try:
                answer = session.post(url, json=body, timeout=120)
                record |= {"status": answer.status_code, "seconds": time.perf_counter() - start}
                if answer.status_code == 200:
                    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["data"][0]["b64_json"])))
                    verdict = judge(np.asarray(image.convert("RGB")))
                    record["right"] = verdict.color == color and verdict.shape == shape
            except requests.RequestException as error:
                record |= {"status": None, "error": type(error).__name__}
            with lock:
                records.append(record)
                if len(records) == 20:
                    rss_after_first.append(proc.memory_info().rss / 2**20)

    wall = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - wall
    rss_end = proc.memory_info().rss / 2**20
    server.terminate()
    server.wait(120)

    ok = [r for r in records if r["status"] == 200]
    latencies = np.array([r["seconds"] for r in ok]) if ok else np.array([np.nan])
    statuses: dict[str, int] = {}
    for r in records:
        if r["status"] not in (200, 429):
            statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {
        "scenario": name, "server_args": args, "max_batch": max_batch, "requests": len(records), "expected": clients * per_client,
        "ok": len(ok), "lost": sum(r["status"] is None for r in records) + clients * per_client - len(records),
        "rejected_429": sum(r["status"] == 429 for r in records), "other_errors": statuses,
        "p50_s": float(np.percentile(latencies, 50)), "p99_s": float(np.percentile(latencies, 99)),
        "images_per_s": len(ok) / wall, "wall_s": wall,
        "rss_after_first_20_mb": rss_after_first[0] if rss_after_first else None, "rss_end_mb": rss_end,
        "rss_growth": (rss_end / rss_after_first[0] - 1) if rss_after_first else None,
        "judged_right": sum(bool(r.get("right")) for r in ok) / max(len(ok), 1),
    }


def render(report: dict) -> str:
    lines = [
        "# latentrt serve: load test on loopback", "",
        f"{report['clients']} concurrent clients x {report['per_client']} requests each (OpenAI endpoint, 1 image, "
        f"the shipped model at its defaults, random prompts and seeds), a fresh server per scenario; "
        f"provider {report['provider']}; {report['cpu']}, {report['cores']} cores.", "",
        "| scenario | max batch | answered 200 | lost | 429 | other errors | p50 latency | p99 latency | images/s | RSS after 20 | RSS at end | growth | judged right |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["scenarios"]:
        lines.append(
            f"| {r['scenario']} | {r['max_batch']} | {r['ok']}/{r['expected']} | {r['lost']} | {r['rejected_429']} | "
            f"{r['other_errors'] or 'none'} | {r['p50_s']:.2f} s | {r['p99_s']:.2f} s | {r['images_per_s']:.1f} | "
            f"{r['rss_after_first_20_mb']:,.0f} MB | {r['rss_end_mb']:,.0f} MB | {100 * r['rss_growth']:+.1f}% | "
            f"{100 * r['judged_right']:.0f}% |")
    off, on = report["scenarios"][0], report["scenarios"][1]
    lines += ["", f"Batching on / off, throughput: {on['images_per_s'] / off['images_per_s']:.2f}x; "
              f"p50 latency {on['p50_s'] / off['p50_s']:.2f}x.", "",
              "Lost = a request with no answer (a client error or time-out); the 429s are the bounded queue "
              "refusing, with Retry-After, and the clients do not retry. Growth = RSS at the end against RSS after "
              "the first 20 answers (the leak check). With batching on, OpenVINO holds a compiled copy of each "
              "network per batch size, compiled at start (hence the higher but flat RSS); `--max-batch 0`, the "
              "default, times 1- and 2-image calls at start and turns batching on when it pays (it does for the "
              "shipped model; a large UNet on a CPU is compute-bound and stays at 1).", "",
              "Reproduce: `" + report["command"] + "`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1:2] == ["--render"]:  # the markdown again from a JSON report
        print(render(json.loads(Path(sys.argv[2]).read_text())))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="--max-batch of the batching-on scenario")
    parser.add_argument("--provider", default="auto")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    common = ["--provider", args.provider]
    scenarios = [
        ("batching off (--max-batch 1)", [*common, "--max-batch", "1"]),
        (f"batching on (--max-batch {args.batch})", [*common, "--max-batch", str(args.batch)]),
        (f"--max-queue 4, --max-batch {args.batch}", [*common, "--max-batch", str(args.batch), "--max-queue", "4"]),
        ("the default (--max-batch 0: measured at start)", common),
    ]
    report = {
        "clients": args.clients, "per_client": args.per_client, "provider": args.provider,
        "cpu": platform.processor() or platform.machine(), "cores": psutil.cpu_count(),
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]).replace(str(ROOT) + "/", ""),
        "scenarios": [],
    }
    for name, server_args in scenarios:
        print(f"{name} ...", flush=True)
        report["scenarios"].append(scenario(name, server_args, args.clients, args.per_client))
        print(json.dumps(report["scenarios"][-1]), flush=True)
    try:
        report["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    text = render(report)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
