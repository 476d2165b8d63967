"""latentrt: the system under test, one worker for each selectable CPU path. Never imports torch (the report says so).

    latentrt            ONNX Runtime, CPU provider, on latentrt's export (fp32)
    latentrt-openvino   the OpenVINO backend, precision="auto" (bf16 where the CPU runs it natively), same folder
    latentrt-int8       ONNX Runtime on the int8 folder `latentrt quantize` wrote from that export
    latentrt-openvino-int8  the OpenVINO backend, precision="auto", on that int8 folder

Any family the folder holds (SD 1.x/2.x, SDXL: the Pipeline reads it from the folder): `text_encoder` times the
family's conditioning (SDXL: both text encoders, the pooled embeddings and time ids), `unet_step` the UNet with that
conditioning dict; guidance <= 1 (SDXL-Turbo's 0) runs no CFG (UNet batch 1), as the pipeline does.

Load = `Pipeline.from_folder` + `Pipeline.compile(height, width, batch, guidance)`, what a server does after
loading (OpenVINO compiles each network for the call's static shapes; nothing to do on ONNX Runtime). No
compiled-model cache, as by default: importing a cached SD 1.5 UNet measured slower than compiling it (README).

The config's `mode` ("default" or "low_memory": `Pipeline(low_memory=True)`, one network resident at a time, none
opened at load) and `cache_dir` (ONNX Runtime's load cache: the harness gives an empty folder for the cold load
and the filled one after; None for OpenVINO, whose only cache is the opt-in compiled-model one, left off) are the
harness's; `task` controlnet calls the pipeline with the harness's control map (`control_image`) and
`controlnet` (the name of the folder's ControlNet) and times the ControlNet's calls as `controlnet_step`; `task` img2img / inpaint calls the pipeline with the harness's `image` (and `mask`), `strength` and
`seed` (the pipeline draws the VAE posterior sample and the noise from NumPy with it) and times the VAE encoder's calls
as `vae_encode`; `fill_cache` (a load-only run) opens each network once after the timed load, so that low_memory's
cold load leaves the cache as filled as the default mode's. `vae` "tiny": `Pipeline(..., vae="tiny")`, the folder's
tiny autoencoder as the pipeline's default (load and compile open it, not the full decoder); the decode stage and
the generation run with it.

The GPU benchmark (benchmarks/gpu/bench.py) runs the `latentrt` path on its fp16 folder with two more keys: `provider`
(in place of the path's: "cuda") and `pipeline_options` (Pipeline's io_binding, cuda_graph).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # holds the latentrt package: importable where not installed (a peer's venv)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latentrt.bench.systems.protocol import System, run, versions  # noqa: E402


# system name -> (provider, precision, the harness's folder key); precision None: the backend's only one
PATHS = {
    "latentrt": ("cpu", None, "latentrt"),
    "latentrt-openvino": ("openvino", "auto", "latentrt"),
    "latentrt-int8": ("cpu", None, "latentrt-int8"),
    "latentrt-openvino-int8": ("openvino", "auto", "latentrt-int8"),
}
MODES = ("default", "low_memory")  # Pipeline(low_memory=...); DeepCache is cfg["cache_interval"], an int


def preload_cuda_libraries() -> None:
    """onnxruntime-gpu's CUDA provider finds the CUDA and cuDNN libraries of pip's nvidia-* wheels only once they are
    loaded (torch does it on import; this worker never imports torch): `onnxruntime.preload_dlls()` (ORT >= 1.21)."""
    import onnxruntime

    if hasattr(onnxruntime, "preload_dlls"):
        onnxruntime.preload_dlls()


class LatentrtSystem(System):
    name = "latentrt"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.name = cfg.get("system", "latentrt")
        if self.name not in PATHS:
            raise SystemExit(f"unknown latentrt path {self.name!r}: one of {', '.join(PATHS)}")
        self.provider, self.precision, self.folder_key = PATHS[self.name]
        self.provider = cfg.get("provider") or self.provider
        self.pipeline_options = dict(cfg.get("pipeline_options") or {})
        self.mode = cfg.get("mode", "default")
        if self.mode not in MODES:
            raise SystemExit(f"unknown mode {self.mode!r}: one of {', '.join(MODES)}")
        self.cache_interval = int(cfg.get("cache_interval", 1))  # DeepCache: one full UNet call in N (1: none)
        # the tiny VAE's rows name it; the full VAE's pass nothing (the pipeline's default)
        self.vae_option = {"vae": cfg["vae"]} if cfg.get("vae", "full") != "full" else {}
        self.controlnet = cfg.get("controlnet") if cfg.get("task") == "controlnet" else None  # its name in the folder
        import numpy as np

        from latentrt import Pipeline

        if self.provider in ("cuda", "tensorrt"):
            preload_cuda_libraries()
        self.np = np
        self.Pipeline = Pipeline

    def load(self) -> None:
        cfg = self.cfg
        options = {**self.pipeline_options, **({} if self.precision is None else {"precision": self.precision})}
        if cfg.get("cache_dir"):
            options["cache_dir"] = cfg["cache_dir"]
        elif self.provider == "openvino":  # the harness gives OpenVINO rows no load cache: none read or written
            options["use_cache"] = False
        self.pipe = self.Pipeline.from_folder(cfg["folders"][self.folder_key], provider=self.provider,
                                              threads=cfg["threads"], low_memory=self.mode == "low_memory",
                                              **options, **self.vae_option)
        self.pipe.compile(cfg["height"], cfg["width"], int(cfg.get("batch", 1)), cfg["guidance"],  # low_memory: nothing
                          controlnet=self.controlnet)

    def fill_cache(self) -> None:
        for name in self.pipe.networks:  # opened (building its cache entry where there is none) and, with low_memory, released
            with self.pipe.network(name):
                pass

    def prepare(self) -> None:
        from latentrt.runtime.request import Request

        np, cfg = self.np, self.cfg
        self.latents = np.load(cfg["latents"])  # (B, 4, H/8, W/8)
        self.task = cfg.get("task", "txt2img")
        if self.task in ("img2img", "inpaint"):
            from PIL import Image

            self.image = Image.open(cfg["image"]).convert("RGB")
            self.mask = Image.open(cfg["mask"]).convert("L") if self.task == "inpaint" else None
            self.pixels = self.pipe.prepare_image(self.image, cfg["height"], cfg["width"])  # the encoder's input, (1, 3, H, W)
        # the generation's own checked request: its conditioning and the UNet batch its loop sends
        self.plan = self.pipe.check(Request(cfg["prompt"], cfg["negative"], height=cfg["height"], width=cfg["width"],
                                            steps=cfg["steps"], guidance_scale=cfg["guidance"], scheduler=cfg["scheduler"]))
        from latentrt.runtime.schedulers import create_scheduler

        scheduler = create_scheduler(self.plan.scheduler, self.pipe.folder.scheduler_config)
        scheduler.set_timesteps(cfg["steps"])
        self.t = scheduler.timesteps[0]
        x = self.latents * np.float32(scheduler.init_noise_sigma)
        x = np.concatenate([x, x]) if self.plan.do_cfg else x  # (2B, 4, h, w): the batch the loop sends
        self.x_in = scheduler.scale_model_input(x, self.t).astype(np.float32)
        self.conditioning = self.text_encoder()
        if self.task == "controlnet":  # the harness's control map, and one ControlNet call's feeds (the UNet's batch)
            from PIL import Image

            from latentrt.runtime.controlnet import control_array

            self.control = Image.open(cfg["control_image"]).convert("RGB")
            rows = self.x_in.shape[0]
            self.control_feeds = {**self.conditioning, "sample": self.x_in,
                                  "timestep": np.full((rows,), self.t, np.float32),
                                  "controlnet_cond": np.repeat(control_array(self.control), rows, axis=0)}

    # warm-up: the pipeline's own stages (Pipeline.encode_prompt, denoiser, decode, encode_image), one at a time
    def text_encoder(self):
        return self.pipe.encode_prompt(self.plan)  # tokenize + one call of each text encoder for both halves

    def unet_step(self) -> None:
        with self.pipe.denoiser(self.conditioning) as unet:
            unet(self.x_in, self.t)

    def vae_decode(self) -> None:
        self.pipe.decode(self.latents, **self.vae_option)

    def controlnet_step(self) -> None:
        name = "controlnet/" + self.controlnet
        with self.pipe.network(name) as network:
            feeds = {k: v for k, v in self.control_feeds.items() if k in network.inputs}
        self.pipe.run_network(name, feeds)

    def vae_encode(self) -> None:
        import time

        t0 = time.perf_counter()
        self.pipe.encode_image(self.pixels, self.np.random.default_rng(0))  # a throwaway generator
        if not hasattr(self, "first_vae_encode_s"):  # neither load nor compile() opens the VAE encoder: its first call does
            self.first_vae_encode_s = time.perf_counter() - t0

    def end_to_end(self):
        cfg = self.cfg
        if self.task == "txt2img":
            inputs = {"latents": self.latents}
        elif self.task == "controlnet":
            inputs = {"latents": self.latents, "control_image": self.control, "controlnet": self.controlnet}
        else:  # the pipeline draws the posterior sample and the noise from the seed
            inputs = {"image": self.image, "strength": cfg["strength"], "seed": cfg["seed"],
                      **({"mask_image": self.mask} if self.mask is not None else {})}
        result = self.pipe(
            cfg["prompt"], negative_prompt=cfg["negative"], steps=cfg["steps"], guidance_scale=cfg["guidance"],
            scheduler=cfg["scheduler"], height=cfg["height"], width=cfg["width"], cache_interval=self.cache_interval,
            **inputs, **self.vae_option,
        )
        self.timings = result.timings
        self.unet_calls = result.unet_calls
        return result.arrays  # uint8 (B, H, W, 3)

    # what the generation's stages are timed by: the pipeline's observer events (no method is wrapped)
    METRICS = {("stage", "text_encoder"): "text_encoder", ("network", "unet"): "unet_step",
               ("stage", "vae_decode"): "vae_decode", ("network", "vae_encoder"): "vae_encode"}

    def stage_timing(self, record):
        metrics = dict(self.METRICS)
        if self.controlnet is not None:
            metrics[("network", "controlnet/" + self.controlnet)] = "controlnet_step"

        def observer(event) -> None:
            metric = metrics.get((event.kind, event.name))
            if metric is not None:
                record(metric, event.seconds)

        return self.pipe.observe(observer)

    def info(self):
        return {
            "versions": versions("latentrt", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy", "tokenizers"),
            "provider": self.provider,
            "mode": self.mode,
            "vae": getattr(self.pipe, "vae", "full"),
            "low_memory": self.pipe.low_memory,
            "load_cache": "onnxruntime" if self.pipe.backend.cache is not None else None,
            "compiled_model_cache": self.pipe.backend.compiled_cache is not None,
            "precision": self.pipe.precision,  # what the pipeline actually runs: "fp32", "bf16", "int8+fp32"
            "folder": self.cfg["folders"][self.folder_key],
            "providers": getattr(self.pipe.unet, "providers", None),
            "pipeline_options": self.pipeline_options,
            "intra_op_threads": self.cfg["threads"],
            "pipeline_timings": getattr(self, "timings", None),
            "cache_interval": self.cache_interval,
            "unet_calls": getattr(self, "unet_calls", None),  # {"full": n, "shallow": m}: what the generation ran
            "task": self.cfg.get("task", "txt2img"),
            "controlnet": self.controlnet,
            "vae_encoder_first_call_s": getattr(self, "first_vae_encode_s", None),  # opens (OpenVINO: compiles) it
        }


if __name__ == "__main__":
    run(LatentrtSystem)
