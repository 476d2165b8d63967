"""latentrt against the PyTorch reference (diffusers) and what a user would pick instead, side by side.

    latentrt bench SRC [--steps N --height H --width W --runs R --guidance G --scheduler S --threads T
                        --systems latentrt,diffusers,optimum --modes default,low_memory --cache-interval 3,5
                        --task txt2img|img2img|inpaint --strength S
                        --json PATH --markdown PATH --plot PATH]     (latentrt bench --help: every option)
    python -m latentrt.bench.harness SRC ...      (the same command)

This module runs a benchmark (run_bench) with the others of latentrt/bench/: settings.py (systems, BenchConfig,
resolve_settings), exports.py (the cached exports), processes.py (workers, roof, time to first image), peers.py
(the peers' venvs), machine.py, report.py (figures, markdown, files); the command is cli.py, and harness.py
gathers the names a caller needs.

Systems (settings.SYSTEMS; each names its worker in processes.WORKERS):
- latentrt paths: `latentrt` (ONNX Runtime fp32), `latentrt-openvino` (the OpenVINO backend, precision
  "auto"), `latentrt-int8` (ONNX Runtime on the folder `latentrt quantize` writes from latentrt's export),
  `latentrt-openvino-int8` (the OpenVINO backend, precision "auto", on that int8 folder).
- PyTorch: `diffusers` (fp32, the reference for image agreement) and `diffusers-bf16` (the same pipeline
  under `torch.autocast("cpu", dtype=torch.bfloat16)`).
- Peers in virtual environments of their own, built from a source checkout's benchmarks/peers/ (an
  installed wheel has none: asking for a peer is then a clear error): `optimum` (ORTStableDiffusionPipeline on
  optimum's ONNX export) and `optimum-intel` (OVStableDiffusionPipeline on `optimum-cli export openvino`,
  reshaped to the benchmark's static shapes and compiled, bf16 by OpenVINO's default where the CPU has it).

Method (issue 5):
- SRC is a diffusers folder. latentrt's export of it (and optimum's, optimum-intel's and latentrt's int8
  folder, for those rows) is made once into a cache keyed by SRC's resolved path and its files' latest
  mtime, then reused. SRC may instead be a latentrt model folder (ONNX, e.g. the shipped model): the
  latentrt paths run it as it is (no export, no torch needed); the other systems need a diffusers folder.
- Every system gets the same prompt, negative prompt, initial latents (drawn here from --seed and saved
  to latents.npy), scheduler, steps, guidance, size and thread count (ORT intra-op threads, inter-op 1;
  torch.set_num_threads; OMP/MKL variables).
- Each system runs in a process of its own, a fresh one per run (latentrt/bench/systems/*_worker.py): it
  imports its libraries, loads the pipeline (timed: `load`), warms each component up once (untimed, same
  shapes), then times one whole generation to uint8 images (`end_to_end`) with the pipeline's own stage
  functions wrapped by timers: `text_encoder` (tokenize + encode the prompt and, with CFG, the negative
  prompt), `unet_step` (the median of the denoising loop's UNet calls, each on the CFG batch) and
  `vae_decode`; it reports its peak RSS (ru_maxrss). Only the diffusers and peer workers import torch;
  the latentrt worker's report lists the heavy modules it imported (none).
- A warm-up round (load only: fills the OS file cache) is discarded; then R runs, systems interleaved
  A/B within each run and the order rotated from run to run. Medians are quoted with min–max.
- The roof: ONNX Runtime's fp32 GEMM throughput (latentrt/bench/roof.py), one sample per run, interleaved
  with the systems. The UNet's FLOPs come from the export's manifest (counted once at export time by
  latentrt/export/flops.py) or are counted here at the benchmark's size; achieved GFLOP/s = FLOPs of one
  UNet call / its median time.
- Image agreement: PSNR and max abs difference of each system's uint8 image against diffusers'.
- Ratios: every latentrt path against every other system; and the issue-9 figures for the fastest
  latentrt path present (lowest end to end) against PyTorch fp32, PyTorch bf16 and optimum-intel.

Tasks (`--task`, TASKS; issue 11): `txt2img` (the default: everything above) or the image tasks, one img2img or
one inpainting call per run:
- `img2img`: `pipe(prompt, image=..., strength=...)` for latentrt, StableDiffusionImg2ImgPipeline (from_pretrained
  of the same folder) for diffusers; `inpaint`: with `mask_image=...` too, StableDiffusionInpaintPipeline, on the
  plain 4-channel UNet (after every step the unmasked region is the image's latents noised to the next timestep; a
  9-channel inpainting UNet is refused). Both workers keep the same prompt, steps, guidance and scheduler.
- The inputs, made deterministically (settings.task_inputs) and saved beside latents.npy in the run folder: init.png,
  a synthetic picture (gradient sky, ground, sun, house, a little texture) rendered at the bench's size, and for
  inpaint mask.png, a centred rectangle of half the width and height (white = repaint). latents.npy is not used.
- `--strength` (default: the pipeline's, diffusers' defaults: 0.8 for img2img, 1.0 for inpaint; the committed
  image-task results ran both at 0.75, so that the same --steps give both the same UNet calls): int(steps x
  strength) of the steps run, as diffusers' get_timesteps. Refused with txt2img, outside (0, 1], or when it leaves no step.
- Noise: latentrt draws the VAE posterior sample and the noise from NumPy with --seed; the diffusers worker
  replaces diffusers' randn_tensor (in the VAE's module and the pipeline's) by draws from the same seeded NumPy
  generator in call order, so the images agree as for txt2img (PSNR against diffusers).
- Stages: `vae_encode` (the VAE encoder's calls, median; latentrt's `_encode_image`, diffusers' `vae.encode`)
  is timed and warmed up with the others, and the report gives each row's `vae_encode_calls_per_image` (diffusers'
  inpainting encodes the masked image too, for a 4-channel UNet unused; latentrt skips it). latentrt's `load`
  does not open the VAE encoder (neither Pipeline() nor compile() does): its first use, in the untimed warm-up,
  does (`info.vae_encoder_first_call_s`).
- Only IMAGE_TASK_SYSTEMS run them: the latentrt paths, diffusers, diffusers-bf16; asking a peer (optimum,
  optimum-intel) for an image task is a clear error. Time to first image is measured for txt2img only.

ControlNet (`--task controlnet --controlnet DIR`; CONTROLNET_SYSTEMS): text to image with one ControlNet at scale 1
over every step, guess mode off, CFG on both halves as diffusers runs it:
- latentrt's export of SRC with `--controlnet NAME=DIR` (NAME: DIR's folder name) in a folder of its own
  (latentrt-controlnet-NAME: a folder with ControlNets runs the UNet graph that takes their residuals); the latentrt
  paths call `pipe(..., control_image=..., controlnet=NAME)`. diffusers loads StableDiffusionControlNetPipeline with
  ControlNetModel.from_pretrained(DIR). latentrt's int8 folders and the peers have no ControlNet row.
- The control map: the canny edges (latentrt's NumPy cv2.Canny, thresholds 100/200) of the image tasks' synthetic
  picture at the bench's size (control.png in the run folder); every system gets the same map, already made (the
  preprocessor is not timed).
- Stages: `controlnet_step` (the median of the ControlNet's calls: the observer's "controlnet/NAME" network events,
  diffusers' controlnet.forward) beside `unet_step` (the UNet's calls, each taking the residuals); a ControlNet step
  costs their sum. Time to first image is not measured (text to image only).

SDXL (issue 12; SDXL_SYSTEMS): SRC may be a StableDiffusionXLPipeline folder (the family is read from the folder,
protocol.model_family: a UNet with addition_embed_type "text_time" or an XL pipeline class; settings["family"]).
- latentrt's export handles it (two text encoders; the UNet takes text_embeds and time_ids); the latents' shape
  comes from the folder (the UNet's in_channels, the VAE's downsampling factor), the native size from its
  sample_size (1024x1024 for SDXL base). The latentrt worker times the family's conditioning (both encoders) as
  `text_encoder` and the UNet with its conditioning dict.
- The diffusers worker loads StableDiffusionXLPipeline (img2img: StableDiffusionXLImg2ImgPipeline, inpaint:
  StableDiffusionXLInpaintPipeline, same NumPy noise as for SD) with add_watermarker=False; `text_encoder` = its
  encode_prompt (both encoders, pooled embeddings), the UNet calls with added_cond_kwargs (text_embeds, time_ids:
  original size, crop (0, 0), target size = the bench's), `vae_decode` its VAE decode (fp32 weights: the VAE's
  force_upcast only acts in fp16). diffusers-bf16 is the same under autocast.
- The peers (optimum, optimum-intel) are refused for SDXL in words (their workers load SD 1.x/2.x pipeline classes);
  so is text to image on an SDXL refiner folder (requires_aesthetics_score: image tasks only).
- FLOPs: the export's manifest formula (latentrt/export/flops.py counts the SDXL UNet with text_embeds and
  time_ids), else counted here with the same extra inputs.
- Guidance <= 1 (SDXL-Turbo's 0) runs no CFG in either system: UNet batch 1, no negative prompt encoded.
- W4 (SDXL architecture, random weights from the published configs, 1024x1024, 1-2 steps, against diffusers):
      latentrt bench <bench-cache>/sdxl-random --height 1024 --width 1024 --steps 2 --guidance 0 --runs 3 \
          --systems latentrt,latentrt-openvino,diffusers,diffusers-bf16 \
          --json <bench-cache>/w4.json --markdown <bench-cache>/w4.md --plot <bench-cache>/w4.png
  where <bench-cache>/sdxl-random is a StableDiffusionXLPipeline folder with random weights built from the
  published configs (SDXL base's scheduler, EulerDiscreteScheduler: deterministic, so the images compare; an
  ancestral scheduler draws torch noise in diffusers and NumPy noise in latentrt, and the images then differ after
  a first step that adds noise). tests/test_bench.py runs the same on the tiny SDXL folder.

Embedding (issue 10): load with a cold and a warm cache, time to first image, peak RSS, per mode:
- Modes (`--modes`, MODES): each latentrt path runs once per mode as its own row, `default` named as the path
  (`latentrt-openvino-int8`), the others with the mode (`latentrt-openvino-int8 (low_memory)`: Pipeline(...,
  low_memory=True), one network resident at a time). The other systems have no modes: one row each.
  `--cache-interval N` (ints, BenchConfig.cache_intervals) adds a row per N: the default mode with DeepCache, one
  full UNet call in N (`latentrt (cache interval N)`, its mode labelled cacheN in the report); the worker gets N as
  the int cfg["cache_interval"].
- The load cache: every latentrt row loads from a folder made for this run (a temporary folder, removed at the
  end: SD 1.5's UNet entry alone is about 4.5 GB), never the user's. `load_cold`: the row's first process, on an
  empty cache folder of its own, after the model's files were read into the OS file cache (the figure is the
  load cache's, not the disk's): ONNX Runtime optimizes each network and writes its optimized copy (a
  low_memory row then opens each network once, untimed, to fill the cache as the default mode does). `load`
  (= `load_warm`): every timed run, a new process on the cache that load filled. Both include
  `pipe.compile(H, W, batch, guidance)`. The OpenVINO rows use no load cache (its compiled-model cache is
  opt-in, left off as by default: $LATENTRT_CACHE is removed from their environment), so both of their loads
  compile.
- `ttfi`, time to first image (`--no-ttfi`: not measured): in every run, after each row's timed run, a fresh process that makes one image
  with the benchmark's settings and latents (seed) and writes the PNG, timed from its start (Popen) to its exit
  (the PNG checked): `latentrt generate ...` (the console script beside this interpreter) with the warm cache
  for latentrt rows, `diffusers_worker.py --first-image` (from_pretrained, one pipeline call, the PNG) for
  diffusers and diffusers-bf16; not measured for the peers. Its peak RSS (the child's ru_maxrss) is
  `ttfi_peak_rss_mb`; the PNG is compared with the row's timed image (`ttfi_psnr_vs_run_db`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from latentrt.bench.exports import cache_root, ensure_exports, source_key
from latentrt.bench.machine import harness_versions, machine_info
from latentrt.bench.processes import (interpreter, merge_cache, read_through, run_roof, run_ttfi, run_worker, ttfi_command,
                                      uses_load_cache, worker_env)
from latentrt.bench.report import (PSNR_CAP_DB, embedding_figures, fast_path_figures, json_default, save_png,
                                   speedup_ratios, summary, target_figures, tiny_vae_figures)
from latentrt.bench.settings import (LATENTRT_PATHS, REFERENCE, TTFI_SYSTEMS, BenchConfig, BenchError, bench_rows,
                                     is_model_folder, resolve_settings, row_modes, slug, task_inputs, task_metrics,
                                     unet_flops)

def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    import numpy as np

    from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr
    from latentrt.bench.roof import build_gemm_model

    started = time.time()
    settings = resolve_settings(cfg)
    rows = bench_rows(cfg.systems, cfg.modes, cfg.cache_intervals, cfg.vaes)
    modes = row_modes(cfg)  # a row's mode label -> its worker's mode, cache interval and VAE
    src = Path(cfg.src).resolve()
    key_dir = cache_root(cfg.cache) / source_key(src)
    folders = ensure_exports(cfg, key_dir)
    workdir = key_dir / "runs" / time.strftime("%Y%m%dT%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    latents = rng.standard_normal(settings["latent_shape"], dtype=np.float32)
    np.save(workdir / "latents.npy", latents)
    np.save(workdir / "ttfi-latents.npy", latents[:1])  # time to first image: one image, the seed's first latents
    roof_model = build_gemm_model(workdir / "gemm.onnx")
    flops = unet_flops(settings, src, folders.get("latentrt"), workdir / "flops.log")

    worker_cfg = {
        **{k: settings[k] for k in ("prompt", "negative", "steps", "guidance", "scheduler", "threads", "height", "width",
                                    "task", "strength", "seed", "family")},
        **task_inputs(settings, workdir),
        "source": str(src),
        "folders": {k: str(v) for k, v in folders.items()},
        "latents": str(workdir / "latents.npy"),
        "batch": settings["batch"],
        "warmup": 1,
        "optimum_intel_model_cache": cfg.optimum_intel_model_cache,
        "tiny_vae": str(Path(cfg.tiny_vae).resolve()) if cfg.tiny_vae is not None and "tiny" in cfg.vaes else None,
        # --task controlnet: the ControlNet's name in latentrt's folder, and its diffusers folder (diffusers' rows)
        "controlnet": settings["controlnet"],
        "controlnet_dir": str(Path(cfg.controlnet).resolve()) if cfg.controlnet is not None and not is_model_folder(src) else None,
    }
    load_before = os.getloadavg()
    first_loads: dict[str, float] = {}
    cold: dict[str, dict[str, Any]] = {}  # latentrt row -> its cold-cache load
    reports: dict[str, list[dict]] = {row: [] for row, _, _ in rows}
    # time to first image: text to image only (the image tasks' rows have none)
    ttfis: dict[str, list[dict]] = {row: [] for row, system, _ in rows
                                    if system in TTFI_SYSTEMS and cfg.task == "txt2img" and cfg.ttfi}
    ttfi_shown: dict[str, str] = {}
    roofs: list[dict] = []
    # The load cache of this run: a temporary folder, removed at the end whatever happens (GBs for SD 1.5)
    load_cache = Path(tempfile.mkdtemp(prefix="latentrt-bench-load-cache-"))
    warm = load_cache / "warm"
    try:
        if cfg.warmup_round:
            for row, system, mode in rows:
                if system in LATENTRT_PATHS:
                    continue  # their first process is the cold-cache load below
                cfg.progress(f"warm-up round: {system} (load only)")
                first_loads[row] = run_worker(system, {**worker_cfg, **modes[mode], "load_only": True}, workdir, "warmup")["load"]
                cfg.progress(f"warm-up round: {system:<17} load {first_loads[row]:.2f} s (first process, discarded)")
        latentrt_rows = [(row, system, mode) for row, system, mode in rows if system in LATENTRT_PATHS]
        if latentrt_rows:
            from latentrt.bench.systems.latentrt_worker import PATHS

            read_through(sorted({folders[PATHS[system][2]] for _, system, _ in latentrt_rows}))
        for row, system, mode in latentrt_rows:
            uses_cache = uses_load_cache(system)
            empty = load_cache / f"cold-{slug(system, mode)}"
            report = run_worker(system, {**worker_cfg, "load_only": True, **modes[mode], "fill_cache": uses_cache,
                                         "cache_dir": str(empty) if uses_cache else None}, workdir, "cold")
            written = merge_cache(empty, warm) if uses_cache else 0
            if uses_cache and not written:
                raise BenchError(f"{row}: its cold load wrote no load cache into {empty} (see {workdir / slug(system, mode)}.log)")
            cold[row] = {"load_cold": report["load"], "load_cache_written_mb": written / 2**20 if uses_cache else None,
                         "cache_fill_after_load_s": report.get("fill_cache_s") if modes[mode]["mode"] != "default" else None}
            cfg.progress(f"cold load cache: {row:<38} load {report['load']:.2f} s"
                         + (f" ({written / 2**20:,.0f} MB of cache written)" if uses_cache else " (no load cache)"))

        participants: list[tuple[str, str, str] | None] = [*rows, None]  # None: the GEMM roof
        for r in range(cfg.runs):
            order = participants[r % len(participants):] + participants[: r % len(participants)]  # rotate A/B order
            for entry in order:
                if entry is None:
                    roofs.append(run_roof(roof_model, settings["threads"], workdir, f"run{r}"))
                    cfg.progress(f"run {r + 1}/{cfg.runs}: GEMM roof {roofs[-1]['gflops']:.0f} GFLOP/s")
                    continue
                row, system, mode = entry
                stem = slug(system, mode)
                cache_dir = warm if uses_load_cache(system) else None
                row_cfg = {**worker_cfg, **modes[mode], **({"cache_dir": str(cache_dir) if cache_dir else None} if system in LATENTRT_PATHS else {})}
                image = workdir / f"{stem}-run{r}.npy"
                report = run_worker(system, {**row_cfg, "image_out": str(image), "run": r}, workdir, f"run{r}")
                report["image"] = str(image)
                reports[row].append(report)
                cfg.progress(
                    f"run {r + 1}/{cfg.runs}: {row:<17} load {report['load']:.2f} s, UNet {report['unet_step']:.3f} s, "
                    f"end to end {report['end_to_end']:.2f} s, peak RSS {report['peak_rss_mb']:.0f} MB"
                )
                if row not in ttfis:
                    continue
                ttfi_cfg = workdir / f"{stem}-ttfi.config.json"  # diffusers' script reads it; latentrt's CLI takes options
                ttfi_cfg.write_text(json.dumps({**row_cfg, "system": system, "latents": str(workdir / "ttfi-latents.npy")},
                                               indent=1, default=str))
                png = workdir / f"{stem}-ttfi-run{r}.png"
                cmd, shown = ttfi_command(system, settings, row_cfg, ttfi_cfg, png, cache_dir)
                ttfi_shown[row] = shlex.join(shown)
                env = worker_env(system, settings["threads"], interpreter(system)[1])
                measured = run_ttfi(cmd, env, png, workdir / f"{stem}-ttfi.log")
                measured["png"] = str(png)
                ttfis[row].append(measured)
                cfg.progress(f"run {r + 1}/{cfg.runs}: {row:<17} time to first image {measured['ttfi']:.2f} s, "
                             f"peak RSS {measured['ttfi_peak_rss_mb']:.0f} MB")
    finally:
        shutil.rmtree(load_cache, ignore_errors=True)
    load_after = os.getloadavg()

    systems: dict[str, dict[str, Any]] = {}
    metrics = task_metrics(cfg.task)
    for row, system, mode in rows:
        runs = reports[row]
        stats = {m: summary([run[m] for run in runs]) for m in metrics}
        rss = summary([run["peak_rss_mb"] for run in runs])
        systems[row] = {
            "system": system,
            "mode": mode,
            "vae": modes[mode]["vae"],
            **{m: stats[m]["median"] for m in metrics},
            "peak_rss_mb": rss["max"],
            "min": {**{m: stats[m]["min"] for m in metrics}, "peak_rss_mb": rss["min"]},
            "max": {**{m: stats[m]["max"] for m in metrics}, "peak_rss_mb": rss["max"]},
            "runs": {**{m: stats[m]["runs"] for m in metrics}, "peak_rss_mb": rss["runs"]},
            "import_s": statistics.median(run["import_s"] for run in runs),
            # the discarded warm-up round's load: a fresh process, the OS file cache cold (latentrt rows: load_cold)
            "first_load": first_loads.get(row),
            # latentrt rows: the load with an empty load cache (the row's first process) and with the filled one
            # (= load, the timed runs'); None for the systems without a load cache
            "load_cold": cold.get(row, {}).get("load_cold"),
            "load_warm": stats["load"]["median"] if row in cold else None,
            "load_cache_written_mb": cold.get(row, {}).get("load_cache_written_mb"),
            "cache_fill_after_load_s": cold.get(row, {}).get("cache_fill_after_load_s"),
            "ttfi": None,
            "ttfi_peak_rss_mb": None,
            "unet_calls_per_image": len(runs[-1]["stage_calls"]["unet_step"]),  # full UNet calls
            # DeepCache rows: the calls that ran only the shallow UNet on the cached feature
            "shallow_unet_calls_per_image": (runs[-1]["info"].get("unet_calls") or {}).get("shallow", 0),
            "vae_encode_calls_per_image": len(runs[-1]["stage_calls"].get("vae_encode", [])),
            "controlnet_calls_per_image": len(runs[-1]["stage_calls"].get("controlnet_step", [])),
            "modules_imported": runs[-1]["modules"],
            "info": runs[-1]["info"],
        }
        if ttfis.get(row):
            t = summary([x["ttfi"] for x in ttfis[row]])
            t_rss = summary([x["ttfi_peak_rss_mb"] for x in ttfis[row]])
            systems[row].update(ttfi=t["median"], ttfi_peak_rss_mb=t_rss["max"])
            for key, value in (("min", (t["min"], t_rss["min"])), ("max", (t["max"], t_rss["max"])), ("runs", (t["runs"], t_rss["runs"]))):
                systems[row][key].update(ttfi=value[0], ttfi_peak_rss_mb=value[1])
        if flops.get("unet"):
            systems[row]["unet_gflops"] = flops["unet"] / stats["unet_step"]["median"] / 1e9
        if flops.get("vae_decoder"):
            systems[row]["vae_decode_gflops"] = flops["vae_decoder"] / stats["vae_decode"]["median"] / 1e9

    # image agreement against the reference (the last run's images; each system is deterministic)
    agreement: dict[str, dict[str, float]] = {}
    images = {row: np.load(reports[row][-1]["image"]) for row, _, _ in rows}
    for row, _, _ in rows:
        runs_equal = all(np.array_equal(np.load(run["image"]), images[row]) for run in reports[row])
        systems[row]["deterministic_across_runs"] = bool(runs_equal)
        if REFERENCE in images and row != REFERENCE:
            ref = images[REFERENCE]
            psnr = image_psnr(images[row], ref)
            agreement[row] = {
                "psnr_db": min(psnr, PSNR_CAP_DB),  # identical images: inf, written as the cap
                "max_abs_diff": int(np.abs(images[row].astype(np.int16) - ref.astype(np.int16)).max()),
                "image_min_psnr_db": IMAGE_MIN_PSNR_DB,
            }
        if ttfis.get(row):  # the first image is the timed run's first image (same settings and latents)
            from PIL import Image

            firsts = [np.asarray(Image.open(x["png"]).convert("RGB")) for x in ttfis[row]]
            systems[row]["ttfi_psnr_vs_run_db"] = min(min(image_psnr(f, images[row][0]), PSNR_CAP_DB) for f in firsts)
    for row, image in images.items():
        save_png(image[0], workdir / f"{slug(systems[row]['system'], systems[row]['mode'])}.png")

    gemm = summary([r["gflops"] for r in roofs])
    roof = {
        "gemm": {"m": roofs[0]["m"], "k": roofs[0]["k"], "n": roofs[0]["n"], "threads": settings["threads"],
                 "gflops": gemm["median"], "gflops_min": gemm["min"], "gflops_max": gemm["max"],
                 "gflops_best_call": max(r["gflops_best"] for r in roofs), "runs": gemm["runs"]},
        "unet_flops_per_call": flops.get("unet"),
        "vae_decoder_flops_per_call": flops.get("vae_decoder"),
        "flops_source": flops.get("source"),
    }
    if "latentrt" in systems and flops.get("unet"):
        roof["latentrt_unet_gflops"] = systems["latentrt"]["unet_gflops"]
        roof["fraction_of_roof"] = systems["latentrt"]["unet_gflops"] / gemm["median"]
    for row in systems:
        if flops.get("unet"):
            systems[row]["fraction_of_roof"] = systems[row]["unet_gflops"] / gemm["median"]

    # every latentrt row (path and mode) against every other row; `fast_path` among the default-mode paths
    ratios_by_path = {row: speedup_ratios(systems, row) for row, system, _ in rows if system in LATENTRT_PATHS}
    ratios = ratios_by_path.get("latentrt", {})
    report = {
        "schema": "latentrt-bench/1",
        "systems": systems,
        "psnr_vs_reference_db": agreement.get("latentrt", {}).get("psnr_db"),
        "max_abs_diff": agreement.get("latentrt", {}).get("max_abs_diff"),
        "agreement_vs_reference": agreement,
        "reference": REFERENCE,
        "ratios": ratios,  # against `latentrt` (ONNX Runtime fp32)
        "ratios_by_latentrt_path": ratios_by_path,
        "fast_path": fast_path_figures(systems, ratios_by_path, cfg.fast_path),
        "tiny_vae": tiny_vae_figures(systems, cfg.fast_path),
        "embedding": embedding_figures(systems, ttfi_shown),
        "roof": roof,
        "targets": target_figures(ratios, roof),
        "settings": settings,
        "source": str(src),
        "folders": {k: str(v) for k, v in folders.items()},
        "machine": {**machine_info(), "threads": settings["threads"], "load_average_before": load_before,
                    "load_average_after": load_after},
        "versions": {"harness": harness_versions(), **{s: v["info"].get("versions") for s, v in systems.items()}},
        "command": cfg.command,
        "note": cfg.note,
        "workdir": str(workdir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": time.time() - started,
    }
    (workdir / "report.json").write_text(json.dumps(report, indent=1, default=json_default))
    return json.loads(json.dumps(report, default=json_default))  # plain JSON types only
