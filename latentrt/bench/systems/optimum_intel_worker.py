"""optimum-intel's OVStableDiffusionPipeline (OpenVINO, CPU) on its own export: the peer a CPU user picks.

Runs with the interpreter of optimum-intel's virtual environment (benchmarks/peers/optimum_intel/env.py),
never in latentrt's, on the folder `optimum-cli export openvino` wrote from the benchmark's diffusers folder
(made once by the harness). The configuration optimum-intel's documentation gives for speed:

- `from_pretrained(folder, compile=False, ov_config={"INFERENCE_NUM_THREADS": threads})`: the benchmark's
  thread count (optimum-intel adds PERFORMANCE_HINT=LATENCY itself);
- `pipe.reshape(batch_size=B, height=H, width=W, num_images_per_prompt=1)` then `pipe.compile()`: every
  network compiled for the benchmark's static shapes. Load time includes reading, reshaping and compiling;
- OpenVINO's default precision (INFERENCE_PRECISION_HINT: bf16 where the CPU has bf16 instructions); the
  precision each compiled network got is in the report's info;
- no model cache: optimum-intel sets OpenVINO's CACHE_DIR only for GPU devices, so on CPU every process
  compiles from the IR (cold). The harness's `optimum_intel_model_cache` option sets CACHE_DIR to a folder
  beside the export, for the cached figure.

SDXL (cfg["family"] "sdxl"): OVStableDiffusionXLPipeline on the same kind of export (optimum-cli's default for a
network over 1e9 parameters, SDXL's UNet, is int8 weights), the stages timed as diffusers' SDXL ones.

The tiny VAE (cfg["vae"] "tiny"): as FastSD CPU wires TAESD into optimum-intel (its ov_load_taesd), the pipeline's
vae_decoder is replaced by an OVModelVaeDecoder over the tiny VAE's decoder IR (the harness's
`optimum-intel-tiny-vae` folder: vae_decoder/openvino_model.xml + config.json, converted offline from the
AutoencoderTiny folder by the peer's `export-tiny-vae`), before the reshape and compile; the pipeline then divides
the latents by that config's scaling factor (1.0), as diffusers does with AutoencoderTiny.

`--first-image CONFIG.json OUT.png`: the time-to-first-image process (diffusers_worker.first_image with this class).

The pipeline is diffusers' StableDiffusionPipeline code over OpenVINO networks, so the stages are timed
where diffusers' are: `encode_prompt`, the UNet wrapper's `forward` (what `pipe.unet(...)` calls), and
`vae.decode`; the warm-up and the scheduler set-up are DiffusersSystem's.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # holds the latentrt package: importable where not installed (a peer's venv)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latentrt.bench.systems.diffusers_worker import DiffusersSystem, first_image_main  # noqa: E402
from latentrt.bench.systems.protocol import System, run, versions  # noqa: E402


class OptimumIntelSystem(DiffusersSystem):
    name = "optimum-intel"

    def __init__(self, cfg):
        System.__init__(self, cfg)
        import numpy as np
        import torch
        from optimum.intel import OVStableDiffusionPipeline, OVStableDiffusionXLPipeline

        torch.set_num_threads(cfg["threads"])  # the pipeline's scheduler math and guidance run in torch
        self.family = cfg.get("family", "sd")
        self.np, self.torch = np, torch
        self.cls = OVStableDiffusionXLPipeline if self.family == "sdxl" else OVStableDiffusionPipeline
        self.task = "txt2img"  # what DiffusersSystem reads; the harness refuses the image tasks for peers

    def load(self) -> None:
        cfg = self.cfg
        folder = Path(cfg["folders"]["optimum-intel"])
        ov_config = {"INFERENCE_NUM_THREADS": int(cfg["threads"])}
        if cfg.get("optimum_intel_model_cache"):
            ov_config["CACHE_DIR"] = str(folder.parent / "optimum-intel-model-cache")
        pipe = self.cls.from_pretrained(str(folder), compile=False, device="CPU", ov_config=ov_config)
        if cfg.get("vae", "full") == "tiny":
            self.swap_tiny_vae_decoder(pipe, Path(cfg["folders"]["optimum-intel-tiny-vae"]) / "vae_decoder")
        batch = int(cfg.get("batch", 1))
        pipe.reshape(batch_size=batch, height=cfg["height"], width=cfg["width"], num_images_per_prompt=1)
        if cfg["guidance"] <= 1.0:
            # optimum-intel's reshape always doubles the UNet batch for classifier-free guidance; without
            # CFG the pipeline sends batch B, which a static batch-2B UNet refuses
            unet = pipe.unet.model
            shapes = {}
            for port in unet.inputs:
                shape = port.get_partial_shape()
                if port.get_any_name() != "timestep" and shape.rank.get_length() > 0:
                    shape[0] = batch
                shapes[port] = shape
            unet.reshape(shapes)
        pipe.compile()
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe

    @staticmethod
    def swap_tiny_vae_decoder(pipe, decoder_dir: Path) -> None:
        """FastSD CPU's ov_load_taesd for this optimum-intel: an OVModelVaeDecoder over the tiny decoder's IR whose
        config is read from decoder_dir (an absolute model name: the part's folder is the pipeline's / it), and the
        pipeline's VAE wrapper rebuilt around it."""
        import openvino
        from optimum.intel.openvino import modeling_diffusion as parts

        model = openvino.Core().read_model(str(decoder_dir / "openvino_model.xml"))
        pipe.vae_decoder = parts.OVModelVaeDecoder(model, pipe, str(decoder_dir.resolve()))
        pipe.vae = parts.OVModelVae(decoder=pipe.vae_decoder, encoder=pipe.vae_encoder)

    def info(self):
        pipe = self.pipe
        compiled = {"text_encoder": pipe.text_encoder, "unet": pipe.unet, "vae_decoder": pipe.vae_decoder}
        # what each compiled network runs in: OpenVINO's element type name ("bf16", "f32")
        precisions = {name: part.request.get_property("INFERENCE_PRECISION_HINT").get_type_name()
                      for name, part in compiled.items()}
        return {
            "versions": versions("optimum-intel", "optimum", "openvino", "torch", "diffusers", "transformers", "numpy"),
            "precision": {"f32": "fp32", "f16": "fp16"}.get(precisions["unet"], precisions["unet"]),
            "inference_precision": precisions,
            "inference_num_threads": {name: int(part.request.get_property("INFERENCE_NUM_THREADS")) for name, part in compiled.items()},
            "performance_hint": str(pipe.unet.request.get_property("PERFORMANCE_HINT")),
            "static_shapes": not pipe.is_dynamic,
            "unet_input_shapes": {p.get_any_name(): str(p.get_partial_shape()) for p in pipe.unet.model.inputs},
            "model_cache": pipe.ov_config.get("CACHE_DIR") or "none (optimum-intel sets CACHE_DIR only for GPU devices)",
            "scheduler": type(pipe.scheduler).__name__,
            "vae": "tiny VAE decoder IR (FastSD CPU's wiring)" if self.cfg.get("vae", "full") == "tiny" else "the export's",
            "vae_scaling_factor": pipe.vae.config.scaling_factor,
        }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--first-image"]:
        first_image_main(sys.argv[0], {"optimum-intel": OptimumIntelSystem})
    else:
        run(OptimumIntelSystem)
