"""Server RSS as requests arrive at new sizes (issue 24, row 3): OpenVINO compiles each network per shape, and the
compiled-shape bound (`--max-compiled-shapes`, default 8) must keep resident memory flat once it is reached.

    python -m benchmarks.compiled_shapes [MODEL_FOLDER] [--bounds default,1000] [--sizes 32:128:4] [--out FILE.md]

For each bound, `latentrt serve --provider openvino --max-batch 8` (the native size compiled at batch sizes 1-8 at
start, pinned) gets one txt2img request (A1111 route, 1 step) at each distinct square size in turn, the native size
left out; the server's RSS (VmRSS) is read after each answer. 1000 stands for no bound (the behaviour before it).
"""

from __future__ import annotations

import argparse
import platform
import time

import requests

from benchmarks.serve_load import free_port, start_server


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def run(folder: str | None, bound: str, sizes: list[int]) -> tuple[float, list[float]]:
    port = free_port()
    args = ([folder] if folder else []) + ["--provider", "openvino", "--max-batch", "8"]
    if bound != "default":
        args += ["--max-compiled-shapes", bound]
    server = start_server(args, port)
    try:
        url = f"http://127.0.0.1:{port}"
        start, after = rss_mb(server.pid), []
        for size in sizes:
            answer = requests.post(f"{url}/sdapi/v1/txt2img", timeout=600,
                                   json={"prompt": "a red circle", "width": size, "height": size, "steps": 1, "seed": 0})
            answer.raise_for_status()
            after.append(rss_mb(server.pid))
            print(f"bound {bound}: {size}x{size} -> {after[-1]:.0f} MB", flush=True)
        return start, after
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--bounds", default="default,1000", help="--max-compiled-shapes values; 'default' for none given")
    parser.add_argument("--sizes", default="32:128:4", help="first:last:step of the square sizes (native left out)")
    parser.add_argument("--native", type=int, default=64, help="the model's native size (left out: compiled at start)")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    ns = parser.parse_args()
    first, last, step = (int(x) for x in ns.sizes.split(":"))
    sizes = [s for s in range(first, last + 1, step) if s != ns.native]
    bounds = ns.bounds.split(",")
    results = {bound: run(ns.folder, bound, sizes) for bound in bounds}

    lines = [f"Server RSS (MB) after each request at a new size; {platform.machine()}, "
             f"{time.strftime('%Y-%m-%d')}, model: {ns.folder or 'the shipped model'}.", "",
             "| # | size | " + " | ".join(f"bound {b}" for b in bounds) + " |",
             "| ---: | --- | " + " | ".join("---:" for _ in bounds) + " |",
             "| 0 | (ready) | " + " | ".join(f"{results[b][0]:,.0f}" for b in bounds) + " |"]
    for i, size in enumerate(sizes):
        lines.append(f"| {i + 1} | {size}x{size} | " + " | ".join(f"{results[b][1][i]:,.0f}" for b in bounds) + " |")
    lines.append("")
    for b in bounds:
        after = results[b][1]
        if len(after) >= 24:
            lines.append(f"- bound {b}: {after[23] - after[11]:+,.0f} MB between the 12th and the 24th size "
                         f"({after[23] - results[b][0]:+,.0f} MB since ready)")
    text = "\n".join(lines)
    print(text)
    if ns.out:
        with open(ns.out, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
