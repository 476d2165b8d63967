"""optimum-intel as a peer: its OpenVINO export, run INSIDE the optimum-intel virtual environment.

Never imported by latentrt: `ENV.run_worker([...])` (env.py) runs it with that venv's interpreter.

    worker.py export SRC OUT     `optimum-cli export openvino --model SRC --task text-to-image OUT`, with
                                 its defaults (fp32 IR; int8 weights only for a network over 1e9 parameters;
                                 tokenizers converted), atomically (OUT appears only when complete)
    worker.py export-tiny-vae TINY OUT
                                 the decoder of a diffusers AutoencoderTiny folder (TAESD, TAESDXL) as OpenVINO IR,
                                 OUT/vae_decoder/openvino_model.xml + config.json (input latent_sample, output
                                 sample, dynamic batch and size, fp32 weights): the folder FastSD CPU downloads
                                 (deinferno/taesd-openvino, made with optimum's exporter), made here offline
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


def cmd_export_tiny_vae(args: argparse.Namespace) -> None:
    import shutil
    import time

    import openvino as ov
    import torch
    from diffusers import AutoencoderTiny

    out = Path(args.out).resolve()
    if out.exists():
        raise SystemExit(f"{out} already exists: remove it or choose another output folder")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    taesd = AutoencoderTiny.from_pretrained(args.tiny).eval()
    channels = int(taesd.config.latent_channels)

    class Decoder(torch.nn.Module):  # what optimum's VaeDecoderOnnxConfig exports: decode(latent_sample).sample
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):
            return self.vae.decode(latent_sample).sample

    try:
        with torch.no_grad():
            model = ov.convert_model(Decoder(taesd), example_input=torch.zeros(1, channels, 64, 64),
                                     input=[ov.PartialShape([-1, channels, -1, -1])])
        model.inputs[0].get_tensor().set_names({"latent_sample"})
        model.outputs[0].get_tensor().set_names({"sample"})
        (tmp / "vae_decoder").mkdir(parents=True)
        ov.save_model(model, tmp / "vae_decoder" / "openvino_model.xml", compress_to_fp16=False)
        taesd.save_config(tmp / "vae_decoder")  # scaling_factor 1.0: the pipeline divides the latents by it
        taesd.save_config(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(out)
    print(json.dumps({"out": str(out), "seconds": round(time.perf_counter() - t0, 3), "versions": versions(*PACKAGES)}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="worker.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="optimum-cli export openvino of a local diffusers folder")
    e.add_argument("src")
    e.add_argument("out")
    e.add_argument("extra", nargs="*", help="more optimum-cli options, after `--` (default: none, its defaults)")
    e.set_defaults(fn=cmd_export)
    t = sub.add_parser("export-tiny-vae", help="a diffusers AutoencoderTiny's decoder as OpenVINO IR (FastSD CPU's TAESD folder)")
    t.add_argument("tiny")
    t.add_argument("out")
    t.set_defaults(fn=cmd_export_tiny_vae)
    v = sub.add_parser("versions", help="library versions (JSON)")
    v.set_defaults(fn=lambda args: print(json.dumps(versions(*PACKAGES))))
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
