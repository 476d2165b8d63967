"""optimum-intel as a peer: its OpenVINO export, run INSIDE the optimum-intel virtual environment.

Never imported by latentrt: `ENV.run_worker([...])` (env.py) runs it with that venv's interpreter.

    worker.py export SRC OUT     `optimum-cli export openvino --model SRC --task text-to-image OUT`, with
                                 its defaults (fp32 IR; int8 weights only for a network over 1e9 parameters;
                                 tokenizers converted), atomically (OUT appears only when complete)
    worker.py versions           (JSON: library versions)

The bench system itself is latentrt/bench/systems/optimum_intel_worker.py (same venv).
Everything is local: HF_HUB_OFFLINE=1 is set before any Hugging Face import, so nothing is fetched.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# folders saved with transformers 5.24 (main venv) read by this venv's transformers 5.5
from benchmarks.peers.compat import export_atomically, go_offline  # noqa: E402
from latentrt.bench.systems.protocol import versions  # noqa: E402

go_offline()  # before any Hugging Face import

PACKAGES = ("optimum-intel", "optimum", "openvino", "openvino-tokenizers", "nncf", "torch", "diffusers",
            "transformers", "huggingface-hub", "tokenizers", "numpy")


def cmd_export(args: argparse.Namespace) -> None:
    def export(src: Path, tmp: Path) -> None:
        # the user's command, run by this venv's own entry point
        cli = Path(sys.executable).parent / "optimum-cli"
        cmd = [str(cli), "export", "openvino", "--model", str(src), "--task", "text-to-image", *args.extra, str(tmp)]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        if subprocess.run(cmd, check=False).returncode != 0:
            raise SystemExit("optimum-cli export openvino failed (its output is above)")
        if not (tmp / "unet" / "openvino_model.xml").is_file():
            raise SystemExit(f"optimum-cli export openvino wrote no unet/openvino_model.xml in {tmp}")

    out, seconds = export_atomically(args.src, args.out, export)
    print(json.dumps({"out": str(out), "seconds": round(seconds, 3), "versions": versions(*PACKAGES)}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="worker.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="optimum-cli export openvino of a local diffusers folder")
    e.add_argument("src")
    e.add_argument("out")
    e.add_argument("extra", nargs="*", help="more optimum-cli options, after `--` (default: none, its defaults)")
    e.set_defaults(fn=cmd_export)
    v = sub.add_parser("versions", help="library versions (JSON)")
    v.set_defaults(fn=lambda args: print(json.dumps(versions(*PACKAGES))))
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
