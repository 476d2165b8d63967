"""PNG of a benchmark report: time per component per system (median, min–max bars) and peak memory.

    python -m latentrt.bench.plot REPORT.json OUT.png [--title T]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = (
    ("load", "load (s)"),
    ("text_encoder", "text encoder (s)"),
    ("unet_step", "one UNet call (s)"),
    ("vae_decode", "VAE decode (s)"),
    ("end_to_end", "end to end (s)"),
    ("peak_rss_mb", "peak RSS (MB)"),
)
COLORS = {"latentrt": "#1b9e77", "latentrt-openvino": "#0b6e4f", "latentrt-int8": "#66c2a5", "latentrt-openvino-int8": "#004d33",
          "diffusers": "#d95f02", "diffusers-bf16": "#fc8d62", "optimum": "#7570b3", "optimum-intel": "#e7298a"}


def plot(report: dict, out: Path, title: str | None = None, panels: tuple[tuple[str, str], ...] = PANELS,
         subtitle: str | None = None) -> Path:
    """`panels`: (metric, label) per panel; `subtitle`: the settings line (default: the CPU harness's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = report["systems"]
    names = list(systems)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.6))
    for ax, (metric, label) in zip(axes, panels):
        med = [systems[n][metric] for n in names]
        lo = [systems[n][metric] - systems[n]["min"][metric] for n in names]
        hi = [systems[n]["max"][metric] - systems[n][metric] for n in names]
        bars = ax.bar(range(len(names)), med, yerr=[lo, hi], capsize=3,
                      color=[COLORS.get(systems[n].get("system", n), "#999999") for n in names])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        for bar, value in zip(bars, med):
            text = f"{value:,.0f}" if metric.endswith("_mb") else (f"{value:.3g}")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.margins(y=0.15)
    s, m = report["settings"], report["machine"]
    heading = title or " vs ".join(names)
    subtitle = subtitle or (f"{s['height']}x{s['width']}, {s['steps']} steps {s['scheduler']}, CFG {s['guidance']:g}, "
                            f"fp32 weights, {s['threads']} threads, {m['cpu_model']}")
    fig.suptitle(f"{heading}\n{subtitle}; median of {s['runs']} runs, bars min–max", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m latentrt.bench.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    print(plot(json.loads(args.report.read_text()), args.out, args.title))


if __name__ == "__main__":
    main()
