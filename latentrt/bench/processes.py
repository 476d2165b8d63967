"""The processes a benchmark starts: each system's worker (a fresh process per run, its interpreter and
environment), the GEMM roof, the time-to-first-image process, and the load cache they share."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from latentrt.bench.peers import PEERS, PeerEnv, clean_env, no_peers_message, peer_env, peers_available, tail
from latentrt.bench.settings import LATENTRT_PATHS, BenchError, read_json, row_name, slug

HERE = Path(__file__).resolve().parent
# system -> its worker script (one script serves several systems; the worker reads cfg["system"])
WORKERS = {
    name: HERE / "systems" / f"{module}_worker.py"
    for name, module in {
        "latentrt": "latentrt", "latentrt-openvino": "latentrt", "latentrt-int8": "latentrt", "latentrt-openvino-int8": "latentrt",
        "diffusers": "diffusers", "diffusers-bf16": "diffusers",
        "optimum": "optimum", "optimum-intel": "optimum_intel",
    }.items()
}
ROOF = HERE / "roof.py"
WORKER_TIMEOUT_S = 3600
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def run_logged(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None, timeout: float = WORKER_TIMEOUT_S) -> None:
    with open(log, "a") as fh:
        fh.write(f"\n$ {shlex.join(map(str, cmd))}\n")
        fh.flush()
        proc = subprocess.run(list(map(str, cmd)), stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                              check=False)
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(map(str, cmd[:4]))}... failed (exit {proc.returncode}); its output:\n{tail(log)}")


def require_peer(system: str) -> PeerEnv:
    """The PeerEnv of a system that runs in a peer's own virtual environment (from the source checkout)."""
    if not peers_available():
        raise BenchError(no_peers_message([system]))
    return peer_env(system)


def thread_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def interpreter(system: str) -> tuple[str, dict[str, str]]:
    if system in PEERS:
        env = require_peer(system)
        return str(env.python(env.ensure())), clean_env()
    return sys.executable, dict(os.environ)


def worker_env(system: str, threads: int, base_env: dict[str, str]) -> dict[str, str]:
    env = thread_env(threads, base_env)
    if system in LATENTRT_PATHS:  # the harness names the load cache itself (and OpenVINO's stays off)
        env.pop("LATENTRT_CACHE", None)
    return env


def run_worker(system: str, worker_cfg: dict, workdir: Path, tag: str) -> dict:
    python, base_env = interpreter(system)
    worker_cfg = {**worker_cfg, "system": system}
    mode, interval, vae = worker_cfg.get("mode", "default"), worker_cfg.get("cache_interval", 1), worker_cfg.get("vae", "full")
    stem = slug(system, mode, interval, vae)
    label = row_name(system, mode, interval, vae)
    cfg_path = workdir / f"{stem}-{tag}.config.json"
    out_path = workdir / f"{stem}-{tag}.json"
    cfg_path.write_text(json.dumps(worker_cfg, indent=1, default=str))
    out_path.unlink(missing_ok=True)
    log = workdir / f"{stem}.log"
    env = worker_env(system, worker_cfg["threads"], base_env)
    try:
        run_logged([python, WORKERS[system], cfg_path, out_path], log, env=env)
    except BenchError as exc:
        report = read_json(out_path) if out_path.is_file() else {}
        raise BenchError(f"{label} ({tag}) failed: {report.get('error') or exc}") from None
    report = read_json(out_path)
    if not report.get("ok"):
        raise BenchError(f"{label} ({tag}) failed: {report.get('error')}")
    return report


def uses_load_cache(system: str) -> bool:
    """The latentrt paths on ONNX Runtime's CPU provider: their loads read (and the first one writes) the load cache."""
    from latentrt.bench.systems.latentrt_worker import PATHS

    return system in PATHS and PATHS[system][0] == "cpu"


def read_through(folders: Sequence[Path]) -> None:
    """Read every file of the model folders once, so that the cold-cache loads do not wait for the disk."""
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                with open(path, "rb") as fh:
                    while fh.read(16 << 20):
                        pass


def merge_cache(cold: Path, warm: Path) -> int:
    """Move the entries a cold load wrote into the shared warm cache (those it lacks); returns the bytes written."""
    from latentrt.runtime.cache import cache_entries, folder_size

    written = folder_size(cold) if cold.is_dir() else 0
    for backend, entry, _ in cache_entries(cold) if cold.is_dir() else []:
        target = warm / backend / entry.name
        if not target.exists() and not entry.name.endswith(".tmp"):
            target.parent.mkdir(parents=True, exist_ok=True)
            entry.rename(target)
    shutil.rmtree(cold, ignore_errors=True)
    return written


def latentrt_command() -> list[str]:
    """How a user starts latentrt: the console script beside this interpreter (else the CLI module by -c)."""
    script = Path(sys.executable).with_name("latentrt")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'latentrt'; from latentrt.cli import app; app()"]


def ttfi_command(system: str, settings: dict, row_cfg: dict, cfg_path: Path, png: Path,
                 cache_dir: Path | None) -> tuple[list[str], list[str]]:
    """(the command, the same with placeholders for the report) that makes the row's first image into `png`."""
    if system in LATENTRT_PATHS:
        from latentrt.bench.systems.latentrt_worker import PATHS

        provider, precision, folder_key = PATHS[system]
        mode, interval = row_cfg["mode"], row_cfg["cache_interval"]
        folder = row_cfg["folders"][folder_key]
        options = ["--negative", settings["negative"], "--provider", provider, "--precision", precision or "auto",
                   "--threads", settings["threads"], "--seed", settings["seed"], "--steps", settings["steps"],
                   "--height", settings["height"], "--width", settings["width"], "--guidance", settings["guidance"],
                   "--scheduler", settings["scheduler"], *(["--low-memory"] if mode == "low_memory" else []),
                   *(["--cache-interval", interval] if interval > 1 else []),
                   *(["--vae", row_cfg["vae"]] if row_cfg.get("vae", "full") != "full" else [])]
        cache = ["--cache-dir", cache_dir] if cache_dir is not None else (["--no-cache"] if provider == "openvino" else [])
        cmd = [*latentrt_command(), "generate", settings["prompt"], "-m", folder, "-o", png, *options, *cache]
        shown = ["latentrt", "generate", settings["prompt"], "-m", f"<{folder_key} folder>", "-o", "<out>.png", *options,
                 *(["--cache-dir", "<load cache, filled>"] if cache_dir is not None else cache)]
        return [str(c) for c in cmd], [str(c) for c in shown]
    python, _ = interpreter(system)
    cmd = [python, WORKERS[system], "--first-image", cfg_path, png]
    shown = ["python", f"latentrt/bench/systems/{WORKERS[system].name}", "--first-image", f"<{system} config>.json",
             "<out>.png"]
    return [str(c) for c in cmd], shown


def run_ttfi(cmd: Sequence[str], env: dict[str, str], png: Path, log: Path, timeout: float = WORKER_TIMEOUT_S) -> dict[str, float]:
    """Time to first image: wall-clock from starting the process to its exit, the PNG checked; and its peak RSS."""
    png.unlink(missing_ok=True)
    with open(log, "a") as fh:
        fh.write(f"\n$ {shlex.join(map(str, cmd))}\n")
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(map(str, cmd)), stdout=fh, stderr=subprocess.STDOUT, env=env)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak RSS
        finally:
            killer.cancel()
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(map(str, cmd[:3]))}... failed (exit {proc.returncode}); its output:\n{tail(log)}")
    if not png.is_file() or png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise BenchError(f"{shlex.join(map(str, cmd[:3]))}... exited without writing the PNG {png}; its output:\n{tail(log)}")
    return {"ttfi": seconds, "ttfi_peak_rss_mb": usage.ru_maxrss / 1024.0}


def run_roof(model: Path, threads: int, workdir: Path, tag: str) -> dict:
    out = workdir / f"roof-{tag}.json"
    run_logged([sys.executable, ROOF, "measure", model, "--threads", threads, "--out", out], workdir / "roof.log",
                env=thread_env(threads))
    return read_json(out)
