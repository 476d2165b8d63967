"""optimum's ORTStableDiffusionPipeline (ONNX Runtime, CPU) on optimum's own export: the peer.

Runs with the interpreter of optimum's virtual environment (benchmarks/peers/optimum/env.py), never in
latentrt's. The pipeline is loaded by the peer's own `load_pipeline` (benchmarks/peers/optimum/worker.py),
so the tokenizer shims and session options are the ones that peer's tests check.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # holds the latentrt package: importable where not installed (a peer's venv)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latentrt.bench.systems.protocol import System, diffusers_scheduler, run, to_uint8, versions  # noqa: E402

PEER = ROOT / "benchmarks" / "peers" / "optimum" / "worker.py"


def _peer():
    spec = importlib.util.spec_from_file_location("optimum_peer_worker", PEER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # sets HF_HUB_OFFLINE etc. before any Hugging Face import
    return module


class OptimumSystem(System):
    name = "optimum"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.peer = _peer()
        import numpy as np
        import torch
        from optimum.onnxruntime import ORTStableDiffusionPipeline  # noqa: F401  (import cost counted here)

        torch.set_num_threads(cfg["threads"])  # optimum's pipeline does its scheduler math in torch
        self.np, self.torch = np, torch

    def load(self) -> None:
        self.pipe = self.peer.load_pipeline(self.cfg["folders"]["optimum"], None, self.cfg["threads"])

    def prepare(self) -> None:
        torch, cfg = self.torch, self.cfg
        self.pipe.scheduler = diffusers_scheduler(cfg["scheduler"], self.pipe.scheduler.config)
        self.latents = torch.from_numpy(self.np.load(cfg["latents"]))
        self.cfg_on = cfg["guidance"] > 1.0
        scheduler = self.pipe.scheduler
        scheduler.set_timesteps(cfg["steps"])
        self.t = scheduler.timesteps[0]
        x = self.latents * scheduler.init_noise_sigma
        x = torch.cat([x, x]) if self.cfg_on else x
        self.x_in = scheduler.scale_model_input(x, self.t)
        self.embeddings = self._encode()

    def _encode(self):
        cond, uncond = self.pipe.encode_prompt(self.cfg["prompt"], "cpu", self.latents.shape[0], self.cfg_on,
                                               self.cfg["negative"])
        return self.torch.cat([uncond, cond]) if self.cfg_on else cond

    def text_encoder(self) -> None:
        self._encode()

    def unet_step(self) -> None:
        self.pipe.unet(self.x_in, self.t, encoder_hidden_states=self.embeddings, return_dict=False)

    def vae_decode(self) -> None:
        self.pipe.vae.decode(self.latents / self.pipe.vae.config.scaling_factor, return_dict=False)

    def end_to_end(self):
        cfg = self.cfg
        _, _, h, w = self.latents.shape
        scale = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        out = self.pipe(
            prompt=cfg["prompt"], negative_prompt=cfg["negative"], num_inference_steps=cfg["steps"],
            guidance_scale=cfg["guidance"], latents=self.latents.clone(), height=h * scale, width=w * scale,
            output_type="np",
        )
        return to_uint8(out.images)

    def stages(self):
        p = self.pipe
        return [(p, "encode_prompt", "text_encoder"), (p.unet, "forward", "unet_step"), (p.vae, "decode", "vae_decode")]

    def info(self):
        return {
            "versions": versions("optimum", "optimum-onnx", "onnxruntime", "diffusers", "transformers", "torch", "numpy"),
            "precision": "fp32",
            "providers": self.pipe.unet.session.get_providers(),
            "intra_op_threads": self.cfg["threads"],
            "scheduler": type(self.pipe.scheduler).__name__,
        }


if __name__ == "__main__":
    run(OptimumSystem)
