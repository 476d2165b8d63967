"""ControlNet over HTTP, with real clients against a uvicorn server: AUTOMATIC1111's ControlNet extension API
(`alwayson_scripts.controlnet.args` as its clients send it, /controlnet/model_list and module_list) and the OpenAI
route's `controlnet` field give the images the pipeline gives for the same arguments, return the control maps, and
answer bad input with 422 in each API's error shape."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'latentrt[serve]'")
import requests
from controlnet_models import tiny_sd1_controlnet  # noqa: F401  (the session fixture)
from PIL import Image, ImageDraw
from test_serve import b64png, png, running_server

from latentrt import Pipeline
from latentrt.runtime.control_preprocess import canny

PROMPT = "a house in the woods"


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (64, 64), (200, 190, 170))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(0, 40, 2))
        draw.ellipse((x, y, x + 22, y + 18), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


@pytest.fixture(scope="module")
def pipe(tiny_sd1_controlnet):  # noqa: F811
    with Pipeline.from_folder(tiny_sd1_controlnet[1], provider="cpu") as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def server(pipe):
    with running_server(pipe, max_batch=2) as running:
        yield running


def same(image: Image.Image, expected: np.ndarray) -> bool:
    return np.abs(np.asarray(image.convert("RGB"), np.int16) - expected).max() <= 1


def test_a1111_controlnet_units_as_the_extension_takes_them(server, pipe):
    url, _ = server
    edges, other = picture(1), picture(2)
    units = [
        {"enabled": True, "image": b64png(edges), "module": "canny", "model": "Canny [d14c016b]", "weight": 0.8,
         "threshold_a": 60, "threshold_b": 140, "guidance_start": 0.0, "guidance_end": 0.75, "resize_mode": "Just Resize",
         "pixel_perfect": False, "control_mode": "Balanced"},
        {"input_image": b64png(other), "module": "none", "model": "depth", "weight": 0.5},  # older clients' field
        {"enabled": False, "image": "not even base64", "model": "nonsense"},  # disabled: ignored
    ]
    body = {"prompt": PROMPT, "steps": 3, "seed": 11, "cfg_scale": 5, "alwayson_scripts": {"ControlNet": {"args": units}}}
    answer = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    images = [png(b) for b in answer.json()["images"]]
    assert len(images) == 2  # the image, then the map of the one unit whose preprocessor ran
    # the server ran canny with the unit's own thresholds; the pipeline gets the map
    assert np.array_equal(np.asarray(images[1].convert("RGB")), np.asarray(canny(edges, 60, 140)))
    expected = pipe(PROMPT, steps=3, seed=11, guidance_scale=5, controlnet=["canny", "depth"],
                    control_image=[canny(edges, 60, 140), other], controlnet_conditioning_scale=[0.8, 0.5],
                    control_guidance_end=[0.75, 1.0])
    assert same(images[0], expected.arrays[0])
    assert "alwayson_scripts" not in answer.json()["parameters"]  # the images are not echoed back


def test_a1111_img2img_unit_without_image_uses_the_init_image_and_guess_mode(server, pipe):
    url, _ = server
    init = picture(3)
    unit = {"module": "none", "model": "canny", "control_mode": "ControlNet is more important", "save_detected_map": False}
    body = {"prompt": PROMPT, "steps": 4, "seed": 2, "init_images": [b64png(init)], "denoising_strength": 0.75,
            "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    answer = requests.post(f"{url}/sdapi/v1/img2img", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    images = answer.json()["images"]
    assert len(images) == 1
    expected = pipe(PROMPT, steps=4, seed=2, image=init, strength=0.75, controlnet="canny", control_image=init,
                    guess_mode=True)
    assert same(png(images[0]), expected.arrays[0])


def test_openai_route_controlnet_field_and_the_maps_in_the_answer(server, pipe):
    url, _ = server
    edges = picture(4)
    body = {"prompt": PROMPT, "size": "64x64", "n": 2, "seed": 3, "steps": 3, "guess_mode": False,
            "controlnet": [{"name": "canny", "image": b64png(edges), "scale": 0.6, "start": 0.25, "end": 1.0,
                            "preprocess": "canny"}]}
    answer = requests.post(f"{url}/v1/images/generations", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert [m["name"] for m in data["control_images"]] == ["canny"]
    control_map = png(data["control_images"][0]["b64_json"])
    assert np.array_equal(np.asarray(control_map.convert("RGB")), np.asarray(canny(edges)))
    for item, seed in zip(data["data"], (3, 4)):  # image i is seed + i's, each from the same control map
        expected = pipe(PROMPT, steps=3, seed=seed, controlnet="canny", control_image=edges, control_preprocess="canny",
                        controlnet_conditioning_scale=0.6, control_guidance_start=0.25)
        assert same(png(item["b64_json"]), expected.arrays[0])


def test_model_and_module_lists(server):
    url, _ = server
    assert requests.get(f"{url}/controlnet/model_list", timeout=10).json() == {"model_list": ["canny", "depth"]}
    assert requests.get(f"{url}/controlnet/module_list", timeout=10).json() == {"module_list": ["none", "canny"]}


def _a1111(url: str, unit: dict, route: str = "txt2img") -> requests.Response:
    body = {"prompt": PROMPT, "steps": 2, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    return requests.post(f"{url}/sdapi/v1/{route}", json=body, timeout=60)


def _openai(url: str, entry: dict, **extra) -> requests.Response:
    body = {"prompt": PROMPT, "steps": 2, "controlnet": [entry], **extra}
    return requests.post(f"{url}/v1/images/generations", json=body, timeout=60)


IMAGE = b64png(picture(5))


@pytest.mark.parametrize("unit, message", [
    ({"image": IMAGE, "model": "sketch"}, "unknown ControlNet 'sketch': this folder has canny, depth"),
    ({"image": IMAGE}, "alwayson_scripts.controlnet.args[0].model: name the ControlNet to use (this model's: canny, depth"),
    ({"image": IMAGE, "model": "canny", "module": "openpose"}, "unknown preprocessor 'openpose': use one of none, canny"),
    ({"image": IMAGE, "model": "canny", "weight": 3}, "args[0].weight must be in [0, 2]"),
    ({"image": IMAGE, "model": "canny", "guidance_start": 0.5, "guidance_end": 0.5},
     "control_guidance_start must be below control_guidance_end"),
    ({"image": "%%%", "model": "canny"}, "args[0].image is not base64"),
    ({"image": base64.b64encode(b"plain text").decode(), "model": "canny"}, "args[0].image is not an image PIL can read"),
    ({"model": "canny"}, "args[0].image: the unit has no image"),
    ({"image": IMAGE, "model": "canny", "control_mode": "Wild"}, "control_mode must be one of 'Balanced'"),
    ({"image": {"mask": IMAGE}, "model": "canny"}, "args[0].image: the unit has no image"),
])
def test_a1111_bad_units_are_422_in_a1111_shape(server, unit, message):
    url, _ = server
    answer = _a1111(url, unit)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["detail"] and answer.json()["error"] in ("validation", "bad_image")


@pytest.mark.parametrize("entry, extra, message", [
    ({"name": "sketch", "image": IMAGE}, {}, "unknown ControlNet 'sketch': this folder has canny, depth"),
    ({"image": IMAGE}, {}, "this folder has 2 ControlNets (canny, depth): say which"),
    ({"name": "canny", "image": IMAGE, "preprocess": "hed"}, {}, "unknown preprocessor 'hed'"),
    ({"name": "canny", "image": IMAGE, "scale": "inf"}, {}, "controlnet.0.scale"),
    ({"name": "canny", "image": IMAGE, "start": 0.9, "end": 0.1}, {}, "control_guidance_start must be below"),
    ({"name": "canny", "image": IMAGE, "strength": 1}, {}, "controlnet.0.strength: Extra inputs are not permitted"),
    ({"name": "canny", "image": "aGVsbG8="}, {}, "controlnet[0].image is not an image PIL can read"),
    ({"name": "canny", "image": IMAGE}, {"guess_mode": "sometimes"}, "guess_mode"),
])
def test_openai_bad_controlnet_is_422_in_openai_shape(server, entry, extra, message):
    url, _ = server
    answer = _openai(url, entry, **extra)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_the_openai_route_takes_control_images_larger_than_text_bodies(server):
    """The OpenAI route's 256 KiB text-only body limit is lifted for a model with ControlNets (an image per entry)."""
    url, _ = server
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (320, 320, 3), dtype=np.uint8))
    big = b64png(noise)
    assert len(big) > 256 * 1024
    answer = _openai(url, {"name": "canny", "image": big, "preprocess": "canny"}, size="64x64")
    assert answer.status_code == 200, answer.text


def test_the_output_takes_the_control_images_size_and_the_limits_see_it(server, pipe):
    """Without a size the output is the control image's size (diffusers' ControlNet pipelines), and --max-pixels
    is checked on that size from the upload's header, before anything is decoded."""
    url, _ = server
    wide = b64png(picture(6).resize((96, 64)))
    answer = _openai(url, {"name": "depth", "image": wide}, n=1, seed=1)
    assert answer.status_code == 200, answer.text
    assert answer.json()["size"] == "96x64" and png(answer.json()["data"][0]["b64_json"]).size == (96, 64)
    with running_server(pipe, max_batch=1, max_pixels=64 * 64) as (small_url, _):
        answer = _a1111(small_url, {"image": wide, "model": "depth"})
        assert answer.status_code == 422, answer.text
        assert "96x64 is 6,144 pixels, over this server's --max-pixels=4,096" in answer.json()["detail"]


def test_controlnet_on_a_model_without_controlnets(tiny_sd1):
    with Pipeline.from_folder(tiny_sd1[1], provider="cpu") as plain, running_server(plain, max_batch=1) as (url, _):
        answer = _openai(url, {"image": IMAGE})
        assert answer.status_code == 422
        assert "has no ControlNet" in answer.json()["error"]["message"]
        assert "--controlnet" in answer.json()["error"]["message"]
        answer = _a1111(url, {"image": IMAGE, "model": "canny"})
        assert answer.status_code == 422 and "--controlnet" in answer.json()["detail"]
        assert requests.get(f"{url}/controlnet/model_list", timeout=10).json() == {"model_list": []}
        # the text-only limit still holds for a model without ControlNets
        answer = requests.post(f"{url}/v1/images/generations", data=b"x" * (300 * 1024),
                               headers={"Content-Type": "application/json"}, timeout=60)
        assert answer.status_code == 413
