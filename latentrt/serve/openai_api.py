"""POST /v1/images/generations: OpenAI's Images API (every OpenAI SDK, Open WebUI), with latentrt's fields as
extensions (`negative_prompt`, `steps`, `guidance_scale`, `scheduler`, `seed`, `cache_interval`, `vae`; the SDKs send
them with `extra_body`). Images come back inline (`b64_json`, PNG with the A1111 parameters chunk), as gpt-image-1 answers.

ControlNet (a folder exported with `--controlnet`): the extension field `controlnet`, a list of
{"name", "image" (base64), "scale", "start", "end", "preprocess", "low_threshold", "high_threshold"} (name may be left
out when the folder has one ControlNet), and `guess_mode`; the answer then carries `control_images`, the maps that
conditioned the images ({"name", "b64_json"} per entry)."""

from __future__ import annotations

import base64
import re
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from latentrt.runtime.images import png_bytes
from latentrt.runtime.request import Request as GenerationRequest

from .controlnet import map_b64, openai_units, unit_names
from .generation import make_seeds, run_job
from .inputs import Text
from .jobs import Job
from .state import ApiError, ServerState, model_name, server_state

router = APIRouter()

_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*$")


class ControlNetEntry(BaseModel):
    """One ControlNet of the `controlnet` extension field (diffusers' argument names in short)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silently ignored setting

    name: Text | None = None  # one of the folder's ControlNets; None: the folder's only one
    image: str = Field(min_length=1)  # base64 (a data: URL prefix allowed)
    scale: float = Field(1.0, allow_inf_nan=False)  # controlnet_conditioning_scale
    start: float = Field(0.0, ge=0, le=1)  # control_guidance_start, a fraction of the steps
    end: float = Field(1.0, ge=0, le=1)  # control_guidance_end
    preprocess: Text | None = None  # "canny", "none" (None: the image is the control map)
    low_threshold: float = Field(100, ge=0, allow_inf_nan=False)  # canny's
    high_threshold: float = Field(200, ge=0, allow_inf_nan=False)


class ImageGenerationRequest(BaseModel):
    # OpenAI's fields latentrt has no use for (quality, style, user, background, ...) are accepted and ignored
    model_config = ConfigDict(extra="ignore")

    prompt: Annotated[Text, Field(min_length=1)]
    model: Text | None = None  # the served model's name (or none): another is 404
    n: int = Field(1, ge=1)
    size: Text | None = None  # "WxH"; None or "auto": the model's native size
    response_format: Literal["b64_json", "url"] | None = None
    negative_prompt: Text | None = None
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0, allow_inf_nan=False)
    scheduler: Text | None = None
    seed: int | None = Field(None, ge=-1)
    cache_interval: int = Field(1, ge=1)  # DeepCache: one full UNet call in N (a folder exported with --deepcache)
    vae: Literal["full", "tiny"] | None = None  # None: the server's --vae
    controlnet: list[ControlNetEntry] | None = Field(None, min_length=1)  # a folder exported with --controlnet
    guess_mode: bool = False  # with controlnet: diffusers' guess mode


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    """(width, height) of "WxH"; (None, None) for None or "auto"."""
    if size is None or size.strip().lower() == "auto":
        return None, None
    match = _SIZE.match(size)
    if not match:
        raise ApiError(422, "validation", f"size must be 'WIDTHxHEIGHT' (for example '512x512') or 'auto', got {size!r}")
    return int(match.group(1)), int(match.group(2))


def check_model(state: ServerState, model: str | None) -> str:
    """The served model's name; 404 (OpenAI's model_not_found) for another name, which is not repeated back."""
    state.ready()
    name = model_name(state)
    if model and model != name:
        raise ApiError(404, "model_not_found", f"this server serves one model, {name!r}: send \"model\": "
                       f"\"{name}\" or leave model out")
    return name


@router.post("/v1/images/generations")
async def generations(body: ImageGenerationRequest, request: Request) -> dict:
    state = server_state(request)
    name = check_model(state, body.model)
    if body.response_format == "url":
        raise ApiError(400, "unsupported_response_format",
                       "latentrt returns images inline and stores none: use response_format 'b64_json'")
    width, height = parse_size(body.size)
    control = openai_units(body.controlnet, body.guess_mode, state.pipe)
    job = Job(GenerationRequest(body.prompt, body.negative_prompt, width=width, height=height, steps=body.steps,
                                guidance_scale=body.guidance_scale, scheduler=body.scheduler,
                                cache_interval=body.cache_interval, vae=body.vae, **control.request_fields()),
              seeds=make_seeds(request, body.seed, body.n))
    result = await run_job(request, job, "/v1/images/generations")
    data = [{"b64_json": base64.b64encode(png_bytes(image, parameters)).decode("ascii"), "revised_prompt": body.prompt}
            for image, parameters in zip(result.images, result.parameters)]
    answer = {"created": int(time.time()), "model": name, "data": data,
              "output_format": "png", "size": f"{result.images[0].width}x{result.images[0].height}"}
    if control.images:
        maps = getattr(result, "control_images", None) or []
        answer["control_images"] = [{"name": n, "b64_json": map_b64(m)} for n, m in zip(unit_names(control, state.pipe), maps)]
    return answer
