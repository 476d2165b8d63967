"""The scheduler-overhead benchmark runs and reports every scheduler (the figures themselves are in
benchmarks/results/, measured on SD-sized latents)."""

from __future__ import annotations

from benchmarks.scheduler_overhead import main
from latentrt.runtime.schedulers import available_schedulers


def test_reports_every_scheduler(tiny_sd1, tmp_path):
    out = tmp_path / "overhead.md"
    assert main([str(tiny_sd1[1]), "--runs", "3", "--unet-runs", "1", "--out", str(out)]) == 0
    text = out.read_text()
    for name in available_schedulers():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        step_ms = float(row.split("|")[2])
        assert step_ms > 0
