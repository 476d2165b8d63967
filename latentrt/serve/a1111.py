"""AUTOMATIC1111's /sdapi/v1 (Krita and GIMP plugins, chat front ends, scripts): txt2img, img2img, samplers,
sd-models, with A1111's field names and its sampler names mapped to latentrt's schedulers.

Differences from A1111, by design: width/height/steps/cfg_scale default to the model's own settings rather than
512/512/20/7; image i of a request uses seed + i as in A1111; `mask_blur` is ignored (the mask is binarised at 0.5,
as diffusers does); `resize_mode` is always "just resize"; hires fix, restore faces, scripts and alwayson_scripts
other than ControlNet are not run (accepted and ignored, like every field latentrt does not read).

ControlNet: the ControlNet extension's API (`alwayson_scripts.controlnet.args`, `GET /controlnet/model_list` and
`/controlnet/module_list`): serve/controlnet.py. As the extension does, each unit's control map (when a preprocessor
ran) is appended to `images` after the generated ones.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from latentrt.runtime.images import png_bytes
from latentrt.runtime.pipeline import PipelineResult
from latentrt.runtime.request import Request as GenerationRequest

from .controlnet import ControlUnits, a1111_units, folder_controlnets, map_b64
from .generation import make_seeds, run_job
from .inputs import Text, Upload
from .jobs import Job
from .state import ApiError, model_name, server_state

router = APIRouter()

# A1111's sampler name -> (latentrt scheduler, its name with A1111's "Karras" schedule or None), and A1111's aliases
SAMPLERS: dict[str, tuple[str | None, str | None, list[str]]] = {
    "DPM++ 2M": ("dpm++2m", "dpm++2m-karras", ["k_dpmpp_2m"]),
    "DPM++ 2M Karras": (None, "dpm++2m-karras", ["k_dpmpp_2m_ka"]),
    "DPM++ 2M SDE Karras": (None, "dpm++2m-sde-karras", ["k_dpmpp_2m_sde_ka"]),
    "DPM++ 2M SDE": (None, "dpm++2m-sde-karras", ["k_dpmpp_2m_sde"]),  # latentrt has the SDE variant with Karras only
    "Euler a": ("euler-a", None, ["k_euler_a"]),
    "Euler": ("euler", None, ["k_euler"]),
    "LMS": ("lms", None, ["k_lms"]),
    "Heun": ("heun", None, ["k_heun"]),
    "DDIM": ("ddim", None, ["ddim"]),
    "PLMS": ("pndm", None, ["plms"]),
    "UniPC": ("unipc", None, ["unipc"]),
    "LCM": ("lcm", None, ["lcm"]),
    "DDPM": ("ddpm", None, ["ddpm"]),
}
_BY_LOWER = {name.lower(): name for name in SAMPLERS} | {alias: name for name, (_, _, aliases) in SAMPLERS.items() for alias in aliases}


def scheduler_for(sampler_name: str | None, schedule: str | None) -> str | None:
    """latentrt's scheduler for A1111's sampler_name and scheduler ("Automatic", "Karras"); None: the model's own."""
    schedule = (schedule or "automatic").strip().lower()
    if schedule not in ("automatic", "karras"):
        raise ApiError(422, "unknown_sampler", f"scheduler {schedule!r} is not available: use 'Automatic' or 'Karras'")
    if not sampler_name:
        if schedule == "karras":
            raise ApiError(422, "unknown_sampler", "scheduler 'Karras' needs a sampler_name (for example 'DPM++ 2M')")
        return None
    from latentrt.runtime.schedulers import available_schedulers

    if sampler_name.strip().lower() in available_schedulers() and schedule == "automatic":
        return sampler_name.strip().lower()  # latentrt's own names work too
    a1111 = _BY_LOWER.get(sampler_name.strip().lower())
    if a1111 is None:
        raise ApiError(422, "unknown_sampler", f"unknown sampler {sampler_name!r}; available: {', '.join(SAMPLERS)} "
                       "(GET /sdapi/v1/samplers)")
    plain, karras, _ = SAMPLERS[a1111]
    chosen = karras if schedule == "karras" or plain is None else plain
    if chosen is None:
        raise ApiError(422, "unknown_sampler", f"sampler {a1111!r} has no 'Karras' schedule in latentrt; use 'Automatic'")
    return chosen


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: Text = ""
    negative_prompt: Text | None = None
    steps: int | None = Field(None, ge=1)
    cfg_scale: float | None = Field(None, ge=0, allow_inf_nan=False)
    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    seed: int = Field(-1, ge=-1)
    sampler_name: Text | None = None
    sampler_index: Text | None = None  # the older field for the same thing
    scheduler: Text | None = None
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    cache_interval: int = Field(1, ge=1)  # latentrt's extension: DeepCache, one full UNet call in N
    vae: Literal["full", "tiny"] | None = None  # latentrt's extension: the tiny autoencoder (None: the server's --vae)
    alwayson_scripts: dict[str, Any] | None = None  # the ControlNet extension's units ("controlnet"); others ignored


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(min_length=1)
    mask: str | None = None
    denoising_strength: float | None = Field(None, gt=0, le=1)  # None: the task's default (img2img 0.8, inpainting 1)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    inpaint_full_res: bool = False  # "Only masked"
    inpaint_full_res_padding: int = Field(32, ge=0)


def _controlnet(request: Request, body: Txt2ImgRequest, init_image: str | None = None) -> ControlUnits:
    """The request's enabled ControlNet units (none without alwayson_scripts.controlnet)."""
    if not body.alwayson_scripts:
        return ControlUnits([], [], [], [], [])
    state = server_state(request)
    state.ready()  # the units are matched against the loaded folder's ControlNets
    return a1111_units(body.alwayson_scripts, state.pipe, init_image)


def _job(request: Request, body: Txt2ImgRequest, control: ControlUnits, **image_task: Any) -> Job:
    generation = GenerationRequest(
        body.prompt, body.negative_prompt, width=body.width, height=body.height, steps=body.steps,
        guidance_scale=body.cfg_scale, scheduler=scheduler_for(body.sampler_name or body.sampler_index, body.scheduler),
        cache_interval=body.cache_interval, vae=body.vae, **control.request_fields(), **image_task)
    return Job(generation, seeds=make_seeds(request, body.seed, body.batch_size * body.n_iter))


def _control_maps(result: PipelineResult, control: ControlUnits) -> list[str]:
    """The control maps the extension returns after the images: those of units whose preprocessor ran."""
    maps = getattr(result, "control_images", None) or []
    return [map_b64(image) for image, keep in zip(maps, control.keep_maps or []) if keep]


def _response(request: Request, body: Txt2ImgRequest, result: PipelineResult, control: ControlUnits, **echo: Any) -> dict:
    state = server_state(request)
    p = result.parameters
    info = {
        "prompt": body.prompt, "all_prompts": [x.prompt for x in p],
        "negative_prompt": p[0].negative_prompt, "all_negative_prompts": [x.negative_prompt for x in p],
        "seed": p[0].seed, "all_seeds": [x.seed for x in p], "subseed": -1, "all_subseeds": [-1] * len(p),
        "width": p[0].width, "height": p[0].height, "sampler_name": p[0].sampler, "cfg_scale": p[0].guidance_scale,
        "steps": p[0].steps, "batch_size": body.batch_size, "denoising_strength": p[0].strength,
        "sd_model_name": model_name(state), "infotexts": [x.a1111() for x in p], "version": "latentrt",
    }
    return {
        "images": [base64.b64encode(png_bytes(image, parameters)).decode("ascii")
                   for image, parameters in zip(result.images, p)] + _control_maps(result, control),
        "parameters": body.model_dump(exclude={"alwayson_scripts"}) | echo,
        "info": json.dumps(info),
    }


@router.post("/sdapi/v1/txt2img")
async def txt2img(body: Txt2ImgRequest, request: Request) -> dict:
    control = _controlnet(request, body)
    result = await run_job(request, _job(request, body, control), "/sdapi/v1/txt2img")
    return _response(request, body, result, control)


@router.post("/sdapi/v1/img2img")
async def img2img(body: Img2ImgRequest, request: Request) -> dict:
    # decoded off the event loop once the request is admitted (their headers checked first): generation.admit
    image = Upload(body.init_images[0], "init_images[0]", "RGB")
    mask = None
    if body.mask is not None:
        mask = Upload(body.mask, "mask", "L", invert=bool(body.inpainting_mask_invert))
    elif body.inpaint_full_res:
        raise ApiError(422, "validation", "inpaint_full_res (only masked) needs a mask")
    control = _controlnet(request, body, init_image=body.init_images[0])  # a unit without image: the init image
    job = _job(request, body, control, image=image, mask_image=mask, strength=body.denoising_strength,
               padding_mask_crop=body.inpaint_full_res_padding if (mask is not None and body.inpaint_full_res) else None)
    result = await run_job(request, job, "/sdapi/v1/img2img")
    return _response(request, body, result, control, init_images=None, mask=None)  # A1111 does not echo the images back


@router.get("/sdapi/v1/samplers")
async def samplers() -> list[dict]:
    return [{"name": name, "aliases": aliases, "options": {}} for name, (_, _, aliases) in SAMPLERS.items()]


@router.get("/sdapi/v1/sd-models")
async def sd_models(request: Request) -> list[dict]:
    state = server_state(request)
    state.ready()
    folder = state.pipe.folder
    files = ((folder.components["unet"].manifest or {}).get("files") or {}).values()
    sha256 = next((f.get("sha256") for f in files if f.get("sha256")), None)
    short = sha256[:10] if sha256 else None
    return [{"title": f"{folder.name} [{short}]" if short else folder.name, "model_name": folder.name,
             "hash": short, "sha256": sha256, "filename": folder.name, "config": None}]  # a name, not a path


@router.get("/controlnet/model_list")
async def controlnet_model_list(request: Request) -> dict:
    """The ControlNet extension's model list: the served folder's ControlNet names (what a unit's `model` takes)."""
    state = server_state(request)
    state.ready()
    return {"model_list": folder_controlnets(state.pipe)}


@router.get("/controlnet/module_list")
async def controlnet_module_list() -> dict:
    """The ControlNet extension's preprocessor list (a unit's `module`)."""
    from latentrt.runtime.control_preprocess import PREPROCESSORS

    return {"module_list": list(PREPROCESSORS)}
