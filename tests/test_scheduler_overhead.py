"""The scheduler-overhead benchmark runs and reports every scheduler (the figures themselves are in
benchmarks/results/, measured on SD-sized latents). What it times is checked by counting calls, never by timing."""

from __future__ import annotations

import benchmarks.scheduler_overhead as overhead
from latentrt.runtime.schedulers import available_schedulers, create_scheduler


def test_reports_every_scheduler(tiny_sd1, tmp_path, monkeypatch):
    """One row per scheduler, in order; each timed sample (one warm-up + `--runs`) is one scale_model_input and one
    step on the same timestep, walking the schedule in order (a multistep scheduler stepped on one timestep over
    and over would time something else)."""
    runs = 3
    made, calls = {}, {}  # scheduler name -> the scheduler; -> [(method, timestep)] in call order

    def recording(name, config):
        sched = made[name] = create_scheduler(name, config)
        log = calls[name] = []
        for method in ("scale_model_input", "step"):
            def record(first, t, *rest, _real=getattr(sched, method), _method=method):
                log.append((_method, float(t)))
                return _real(first, t, *rest)

            setattr(sched, method, record)
        return sched

    monkeypatch.setattr(overhead, "create_scheduler", recording)
    out = tmp_path / "overhead.md"
    assert overhead.main([str(tiny_sd1[1]), "--runs", str(runs), "--unet-runs", "1", "--out", str(out)]) == 0

    assert list(calls) == available_schedulers()
    for name, sched in made.items():
        walked = [float(t) for t in sched.timesteps[: runs + 1]]
        assert calls[name] == [(m, t) for t in walked for m in ("scale_model_input", "step")], name
    rows = [line for line in out.read_text().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == available_schedulers()
    for row in rows:
        step_ms = float(row.split("|")[2])
        assert step_ms > 0
