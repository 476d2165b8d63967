"""Abuse test of `latentrt serve` on loopback: fifteen attacks a public server must survive, replayed one by one.

Starts `latentrt serve` (the shipped model, --provider auto, an API key) on a free 127.0.0.1 port and replays each
attack as one small function: oversized img2img, slow-header and idle sockets, many sizes, a decompression bomb,
a huge negative prompt, unbounded compute, cancelled queued requests, lone surrogates, huge guidance, information
leaks, error shapes, a non-ASCII API key, a foreign model name, half-closed clients and /docs behind a key. Per
attack: what the server answered and how long it took, its RSS before / after / peak (psutil on its pid), /health
latency while the attack ran (polled every 0.2 s without a key), and whether the expected behaviour held. Bounded:
small sizes and counts, every request with a time-out, about two minutes in all; connects only to 127.0.0.1.

    python benchmarks/serve_attack.py --out benchmarks/results/serve_attack.md --json benchmarks/results/serve_attack.json
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.serve_load import free_port, start_server  # noqa: E402

HOST = "127.0.0.1"  # the only address this script ever connects to
KEY = "attack-test-key"
PROMPT = "a red circle in the middle on a white background"
ONE_STEP = {"steps": 2, "denoising_strength": 0.5}  # img2img: int(steps x strength) = 1 step


class Server:
    """`latentrt serve ARGS` on a free loopback port; its stderr kept (last lines) so the pipe never fills."""

    def __init__(self, args: list[str]):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.process = start_server(args, self.port)
        self.log: collections.deque[str] = collections.deque(maxlen=2000)
        threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True).start()
        self.ps = psutil.Process(self.process.pid)

    def rss(self) -> float:
        """Resident MB of the server and any children."""
        try:
            return sum(p.memory_info().rss for p in [self.ps, *self.ps.children(recursive=True)]) / 2**20
        except psutil.NoSuchProcess:
            return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Probe:
    """While an attack runs: GET /health (no key) every 0.2 s, and the server's RSS every 0.1 s."""

    def __init__(self, server: Server):
        self.server, self.health, self.peak, self._stop = server, [], server.rss(), threading.Event()
        self._threads = [threading.Thread(target=self._poll_health, daemon=True),
                         threading.Thread(target=self._poll_rss, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _poll_health(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                status = session.get(f"{self.server.url}/health", timeout=5).status_code
            except requests.RequestException as error:
                status = type(error).__name__
            self.health.append((time.perf_counter() - start, status))
            self._stop.wait(0.2)

    def _poll_rss(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss())
            self._stop.wait(0.1)

    def stop(self) -> dict:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        bad = collections.Counter(str(s) for _, s in self.health if s != 200)
        return {"health_max_ms": 1000 * max((t for t, _ in self.health), default=float("nan")),
                "health_polls": len(self.health), "health_not_200": dict(bad), "rss_peak_mb": self.peak}


# --- requests ----------------------------------------------------------------------------------------------
def auth(key: str | bytes = KEY) -> dict:
    return {"Authorization": b"Bearer " + key if isinstance(key, bytes) else f"Bearer {key}"}


def call(server: Server, method: str, path: str, timeout: float = 120, key: str | bytes | None = KEY,
         headers: dict | None = None, **kwargs):
    """(status or the exception's name, seconds, response or None)."""
    url = f"{server.url}{path}"
    assert url.startswith(f"http://{HOST}:")
    headers = {**(auth(key) if key is not None else {}), **(headers or {})}
    start = time.perf_counter()
    try:
        answer = requests.request(method, url, timeout=timeout, headers=headers, **kwargs)
        return answer.status_code, time.perf_counter() - start, answer
    except requests.RequestException as error:
        return type(error).__name__, time.perf_counter() - start, None


def generate(server: Server, body: dict, timeout: float = 120, **kwargs):
    return call(server, "POST", "/v1/images/generations", timeout, json={"prompt": PROMPT, "steps": 1, **body}, **kwargs)


def raw_request(server: Server, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST /v1/images/generations HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


def connect(server: Server) -> socket.socket:
    return socket.create_connection((HOST, server.port), timeout=5)


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def brief(status, seconds: float) -> str:
    return f"{status} ({seconds:.2f} s)"


def reason(answer) -> str:
    """The error message of an answer, short."""
    if answer is None:
        return ""
    try:
        body = answer.json()
        text = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("detail") or body.get("error")
    except (ValueError, AttributeError, KeyError, TypeError):
        text = answer.text
    return str(text or "")[:90].replace("|", "/").replace("\n", " ")


def is_refusal(status) -> bool:
    return isinstance(status, int) and 400 <= status < 500


# --- the attacks, one function each: (what was sent, what came back, held?, note) --------------------------
def row1(s: Server):
    body = {"prompt": PROMPT, "init_images": [png_b64(Image.new("RGB", (64, 64), "white"))], "width": 8192,
            "height": 8192, **ONE_STEP}
    status, seconds, answer = call(s, "POST", "/sdapi/v1/img2img", json=body)
    return "img2img, a 64x64 PNG, width=height=8192", brief(status, seconds), is_refusal(status), reason(answer)


def _normal_clients(s: Server, seconds: float, tick: Callable[[], None]) -> collections.Counter:
    """A normal client during an attack: /health and a 1-step generation, over and over; tick() every 0.5 s."""
    seen: collections.Counter = collections.Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen[f"health {call(s, 'GET', '/health', 5, key=None)[0]}"] += 1
        seen[f"generate {generate(s, {}, 10)[0]}"] += 1
        tick()
        time.sleep(0.5)
    return seen


def _closed(sockets: list[socket.socket]) -> int:
    """How many of the sockets the server has closed (or answered)."""
    closed = 0
    for connection in sockets:
        connection.settimeout(0.01)
        try:
            connection.recv(1)
            closed += 1  # b"" (closed) or an answer
        except TimeoutError:
            pass
        except OSError:
            closed += 1
    return closed


def _counts(counter: collections.Counter) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counter.items()))


def row2(s: Server):
    slow, refused = [], 0
    for _ in range(130):
        try:
            slow.append(connect(s))
            slow[-1].sendall(b"G")
        except OSError:
            refused += 1
    rest, last = iter(b"ET /health HTTP/1.1\r\nHost: x\r\n"), [time.monotonic()]

    def one_byte_every_10_s() -> None:
        if time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            byte = bytes([next(rest)])
            for connection in slow:
                try:
                    connection.sendall(byte)
                except OSError:
                    pass

    seen = _normal_clients(s, 20, one_byte_every_10_s)
    closed = _closed(slow)
    for connection in slow:
        connection.close()
    idle = [connect(s) for _ in range(128)]
    seen_idle = _normal_clients(s, 8, lambda: None)
    closed_idle = _closed(idle)
    for connection in idle:
        connection.close()
    held = all(k.endswith(" 200") for k in [*seen, *seen_idle])
    return ("130 sockets sending headers 1 byte / 10 s for 20 s, then 128 idle sockets for 8 s; a normal client meanwhile",
            f"slow: {_counts(seen)}; idle: {_counts(seen_idle)}", held,
            f"server closed {closed}/{len(slow)} slow and {closed_idle}/128 idle sockets; {refused} connects refused")


def row3(s: Server):
    statuses: collections.Counter = collections.Counter()
    rss = {}
    for i in range(24):
        statuses[generate(s, {"size": f"{128 + 16 * i}x128"})[0]] += 1
        if i + 1 in (12, 24):
            rss[i + 1] = s.rss()
    n8, seconds, _ = generate(s, {"size": "128x128", "n": 8})
    growth = rss[24] - rss[12]
    return ("24 text-to-image sizes (128x128 .. 496x128, 1 step), then n=8",
            f"sizes: {dict(statuses)}; n=8: {brief(n8, seconds)}", growth <= 150,
            f"RSS after the 12th size {rss[12]:,.0f} MB, after the 24th {rss[24]:,.0f} MB ({growth:+.0f} MB)")


def row4(s: Server):
    image = Image.new("1", (10000, 10000), 1)  # compresses to a few KB
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode()
    body = {"prompt": PROMPT, "init_images": [data], **ONE_STEP}
    results: list = [None] * 4

    def send(i: int) -> None:
        results[i] = call(s, "POST", "/sdapi/v1/img2img", 60, json=body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = [r[0] for r in results]
    return (f"4 concurrent img2img, a {len(buffer.getvalue()) // 1024} KB PNG that decodes to 10000x10000",
            ", ".join(brief(r[0], r[1]) for r in results), all(map(is_refusal, statuses)), reason(results[0][2]))


def row5(s: Server):
    status, seconds, answer = generate(s, {"n": 8, "negative_prompt": "x" * (24 * 2**20)})
    size = len(answer.content) if answer is not None else 0
    return ("OpenAI, n=8, negative_prompt of 24 MiB", brief(status, seconds), is_refusal(status),
            f"a {size / 2**20:.1f} MB answer" if status == 200 else reason(answer))


def row6(s: Server):
    many, t1, a1 = generate(s, {"steps": 1000, "n": 8}, timeout=15)
    big, t2, a2 = generate(s, {"size": "2048x2048"}, timeout=15)
    return ("OpenAI steps=1000 n=8; then 2048x2048 (no limits given; the client gives up after 15 s)",
            f"{brief(many, t1)}; {brief(big, t2)}", is_refusal(many) and is_refusal(big),
            f"{reason(a1)} / {reason(a2)}")


def row7(s: Server):
    long = {}
    thread = threading.Thread(target=lambda: long.update(result=generate(s, {"steps": 150, "size": "256x256"}, 300)))
    thread.start()
    time.sleep(1.5)
    clients = []
    for i in range(64):
        connection = connect(s)
        connection.sendall(raw_request(s, {"prompt": PROMPT, "steps": 1, "seed": i}))
        clients.append(connection)
    time.sleep(1.5)
    for connection in clients:
        connection.close()
    time.sleep(1.5)  # the server notices a disconnect within 0.5 s
    running = thread.is_alive()
    status, seconds, answer = generate(s, {}, 300)
    thread.join()
    return ("a 150-step 256x256 job running, 64 clients submit and disconnect, then a real request",
            f"real request: {brief(status, seconds)}; long job: {long['result'][0]}", status == 200 and running,
            f"long job still running when the real request came: {'yes' if running else 'no'}; {reason(answer)}")


def row8(s: Server):
    before = sum("Traceback" in line for line in s.log)
    neg = generate(s, {"negative_prompt": "\ud800"})
    model = generate(s, {"model": "\ud800"})
    time.sleep(0.5)
    tracebacks = sum("Traceback" in line for line in s.log) - before
    return ('negative_prompt, then model = "\\ud800" (lone surrogate)', f"{brief(*neg[:2])}; {brief(*model[:2])}",
            is_refusal(neg[0]) and is_refusal(model[0]) and tracebacks == 0, f"{tracebacks} tracebacks in the log")


def row9(s: Server):
    status, seconds, answer = generate(s, {"guidance_scale": 1e308})
    return "guidance_scale=1e308", brief(status, seconds), status == 422, reason(answer)


def row10(s: Server):
    leaks = []
    pid = str(s.process.pid)
    checks = {
        "sd-models": call(s, "GET", "/sdapi/v1/sd-models", 10),
        "/health, no key": call(s, "GET", "/health", 10, key=None),
        "401": call(s, "GET", "/sdapi/v1/samplers", 10, key=None),
        "bad image": call(s, "POST", "/sdapi/v1/img2img", 30,
                          json={"prompt": PROMPT, "init_images": [base64.b64encode(b"GIF89a" + bytes(64)).decode()]}),
    }
    for name, (status, _, answer) in checks.items():
        if answer is None:
            continue
        text = answer.text + " " + " ".join(f"{k}: {v}" for k, v in answer.headers.items())
        if str(ROOT) in text or re.search(r'"/(?:home|work|tmp|usr|root)/', answer.text):
            leaks.append(f"{name}: absolute path")
        if re.search(r"\b0x[0-9a-f]{6,}", text):
            leaks.append(f"{name}: object address")
        if re.search(rf"\b{pid}\b", answer.text):
            leaks.append(f"{name}: pid")
        replica = answer.headers.get("x-latentrt-replica", "")
        if pid in replica or "vm:" in replica:
            leaks.append(f"{name}: the pid in x-latentrt-replica")
        if name == "/health, no key" and answer.headers.get("content-type", "").startswith("application/json"):
            extra = set(answer.json()) - {"status"}
            if extra:
                leaks.append(f"/health without a key says {', '.join(sorted(extra))}")
    return ("sd-models, /health without a key, a 401, a bad image", ", ".join(f"{k} {v[0]}" for k, v in checks.items()),
            not leaks, "; ".join(leaks) or "no path, pid or address")


def row11(s: Server):
    shapes = []
    for method, path in (("GET", "/v1/no-such-route"), ("GET", "/v1/images/generations"),
                         ("POST", "/v1/images/generations")):
        kwargs = {"data": b"{", "headers": {"content-type": "application/json"}} if method == "POST" else {}
        status, _, answer = call(s, method, path, 10, **kwargs)
        try:
            shape = "error" if isinstance(answer.json().get("error"), dict) else "detail"
        except (ValueError, AttributeError):
            shape = "text"
        shapes.append((status, shape))
    return ("/v1: an unknown route, a wrong method, broken JSON", ", ".join(f"{st} {{{sh}}}" for st, sh in shapes),
            all(sh == "error" for _, sh in shapes), "OpenAI's shape is {error: {message, ...}}")


def row12(s: Server):
    try:
        other = Server(["--provider", "cpu", "--max-batch", "1", "--api-key", "clé"])
    except RuntimeError as error:
        line = next((l for l in reversed(str(error).splitlines()) if l.strip()), str(error))
        return "--api-key 'clé' at start", "refused at start", True, line[:120].replace("|", "/")
    try:
        status, seconds, _ = call(other, "GET", "/sdapi/v1/samplers", 10, key="clé".encode())
    finally:
        other.stop()
    return ("--api-key 'clé', the client sends it as UTF-8", f"server started; {brief(status, seconds)}", status == 200, "")


def row13(s: Server):
    status, seconds, answer = generate(s, {"model": "/etc/passwd"})
    echoed = answer is not None and "/etc/passwd" in answer.text
    return ('OpenAI "model": "/etc/passwd"', brief(status, seconds), status == 404 and not echoed,
            ("echoed back; " if echoed else "not echoed; ") + reason(answer))


def row14(s: Server):
    start = time.perf_counter()
    with connect(s) as connection:
        connection.settimeout(60)
        connection.sendall(raw_request(s, {"prompt": PROMPT, "steps": 1}))
        connection.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := connection.recv(65536):
                reply += chunk
        except OSError:
            pass
    line = reply.split(b"\r\n", 1)[0].decode(errors="replace") or "empty reply"
    return ("a request, then shutdown(SHUT_WR) (half-close)", brief(line, time.perf_counter() - start),
            line.startswith("HTTP/1.1 200"), f"{len(reply):,} bytes" + ("" if reply else ": treated as a disconnect"))


def row15(s: Server):
    docs, _, page = call(s, "GET", "/docs", 10)
    schema, _, _ = call(s, "GET", "/openapi.json", 10, key=None)
    html = page.text if page is not None else ""
    works = docs == 200 and (schema == 200 or '"openapi"' in html)
    says = page is not None and "key" in html.lower()
    return ("/docs with an API key set (the page fetches its schema without a key)",
            f"/docs {docs}; /openapi.json without a key {schema}", works or says,
            "the page can load its schema" if works else ("the page says why" if says else "the page cannot load its schema"))


# attacks whose requests must be refused: how many, each allowed 50 MB of peak RSS growth
REFUSED = {1: 1, 4: 4, 5: 1, 6: 2}
ROWS = [row1, row2, row3, row4, row5, row6, row7, row8, row9, row10, row11, row12, row13, row14, row15]


def settle(s: Server, timeout: float = 120) -> None:
    """Wait until a 1-step request is answered 200 (the last attack's work drained)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and generate(s, {}, 10)[0] != 200:
        time.sleep(1)


def run(provider: str, rows: list[int]) -> dict:
    server = Server(["--provider", provider, "--api-key", KEY])
    health = call(server, "GET", "/health", 10)[2].json()
    report = {"provider": provider, "health": {k: v for k, v in health.items() if k in ("status", "provider", "max_batch")},
              "cpu": platform.processor() or platform.machine(), "cores": psutil.cpu_count(), "rows": []}
    try:
        for number in rows:
            row = ROWS[number - 1]
            settle(server)
            before = server.rss()
            probe = Probe(server)
            start = time.perf_counter()
            try:
                request, answer, held, note = row(server)
            except Exception as error:  # the attack itself broke (e.g. the server died): say so, go on
                request, answer, held, note = row.__name__, f"attack failed: {type(error).__name__}: {error}"[:160], False, ""
            seconds = time.perf_counter() - start
            measured, after = probe.stop(), server.rss()
            measured["rss_peak_mb"] = max(measured["rss_peak_mb"], after)  # the 0.1 s samples can miss the top
            if number in REFUSED and not measured["rss_peak_mb"] - before <= 50 * REFUSED[number]:
                held = False
                note = f"peak RSS +{measured['rss_peak_mb'] - before:,.0f} MB; {note}"
            record = {"row": number, "request": request, "answer": answer, "held": held, "note": note,
                      "seconds": seconds, "rss_before_mb": before, "rss_after_mb": after, **measured}
            report["rows"].append(record)
            print(json.dumps(record), flush=True)
            if server.process.poll() is not None:
                print("the server exited; restarting it", flush=True)
                server = Server(["--provider", provider, "--api-key", KEY])
    finally:
        server.stop()
    return report


def render(report: dict) -> str:
    lines = [
        "# latentrt serve: attacks on loopback", "",
        f"Each attack replayed against one `latentrt serve` process (the shipped model, --provider "
        f"{report['provider']} ({report['health'].get('provider', '?')}), an API key set, every other option at its "
        f"default: max batch {report['health'].get('max_batch', '?')} as measured at start), in order; {report['cpu']}, {report['cores']} cores. RSS: the server process before the attack, "
        f"after it and its peak while it ran (sampled every 0.1 s). /health: GET without a key every 0.2 s while the "
        f"attack ran, the slowest answer and any answer not 200.", "",
        "| # | attack | answer (status, time) | held | attack time | RSS before → after (peak) | /health during | note |",
        "| ---: | --- | --- | :---: | ---: | --- | --- | --- |",
    ]
    for r in report["rows"]:
        bad = ", ".join(f"{k} x{v}" for k, v in r["health_not_200"].items())
        lines.append(
            f"| {r['row']} | {r['request']} | {r['answer']} | {'yes' if r['held'] else '**no**'} | {r['seconds']:.1f} s | "
            f"{r['rss_before_mb']:,.0f} → {r['rss_after_mb']:,.0f} MB ({r['rss_peak_mb']:,.0f}) | "
            f"max {r['health_max_ms']:,.0f} ms{'; ' + bad if bad else ''} | {r['note']} |")
    slow = [str(r["row"]) for r in report["rows"] if not r["health_max_ms"] < 100]
    lines += ["", f"Held: {sum(r['held'] for r in report['rows'])} of {len(report['rows'])}. /health slower than "
              f"100 ms during attack {', '.join(slow) if slow else 'none'}. Wall time {report['wall_s']:.0f} s.", "",
              "Held means: 1, 4, 5, 6 refused (4xx) with at most 50 MB of peak RSS growth per refused request; 2 the "
              "normal client always answered 200; 3 at most 150 MB more RSS after the 24th size than after the 12th; "
              "7 the real request answered 200 while the long job still ran; 8 and 9 refused with no traceback in "
              "the log; 10 no absolute path, pid or object address in the answers and /health without the key says "
              "only its status; 11 OpenAI's error shape; 12 the key refused at start, or accepted as UTF-8; 13 a 404 "
              "that does not echo the name; 14 an answer; 15 /docs able to show its schema.", "",
              "Reproduce: `" + report["command"] + "`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default="auto")
    parser.add_argument("--rows", default="1-15", help="which attacks, e.g. 1,4,7 (default: all)")
    parser.add_argument("--out", type=Path, help="the Markdown table")
    parser.add_argument("--json", type=Path, help="the full report")
    args = parser.parse_args()
    wall = time.perf_counter()
    rows = sorted({n for part in args.rows.split(",") for n in (
        range(int(part.split("-")[0]), int(part.split("-")[1]) + 1) if "-" in part else [int(part)])})
    report = run(args.provider, rows)
    report["wall_s"] = time.perf_counter() - wall
    report["command"] = "python benchmarks/serve_attack.py " + " ".join(sys.argv[1:]).replace(str(ROOT) + "/", "")
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    report["cpu"] = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), report["cpu"])
    text = render(report)
    for path, content in ((args.json, json.dumps(report, indent=2) + "\n"), (args.out, text)):
        if path:
            path.write_text(content)
    print(text)


if __name__ == "__main__":
    main()
