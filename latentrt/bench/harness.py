"""The bench's front: `python -m latentrt.bench.harness SRC ...` runs the `latentrt bench` command (every one of its
options), and `from latentrt.bench.harness import ...` gives what a caller of the bench needs. The method is
described in run.py; the code lives in the modules beside this one (settings, exports, processes, peers, machine,
report, run, cli)."""

from __future__ import annotations

from latentrt.bench.cli import main
from latentrt.bench.machine import machine_info
from latentrt.bench.report import render_markdown, write_outputs
from latentrt.bench.run import run_bench
from latentrt.bench.settings import DEFAULT_NEGATIVE, DEFAULT_PROMPT, SYSTEMS, BenchConfig, BenchError, bench_rows, resolve_settings

__all__ = ["DEFAULT_NEGATIVE", "DEFAULT_PROMPT", "SYSTEMS", "BenchConfig", "BenchError", "bench_rows", "machine_info",
           "main", "render_markdown", "resolve_settings", "run_bench", "write_outputs"]

if __name__ == "__main__":
    main()
