"""ControlNet in the runtime: latentrt's images equal diffusers' ControlNet pipelines (tiny SD1 folder with two random
ControlNets, same noise; benchmarks/controlnet_parity.py has the full table); the UNet graph with residual inputs fed
zeros gives the plain UNet's image, with and without a LoRA; DeepCache's shallow calls run no ControlNet; the keep mask,
the control images, the infotext and the memory guard; bad input refused in words before anything runs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from controlnet_models import controlnet_folder, tiny_sd1_controlnet  # noqa: F401 (a fixture)
from PIL import Image

from benchmarks.controlnet_parity import (
    Case,
    compare,
    control_images,
    init_image,
    mask_image,
)
from latentrt import Pipeline, Request
from latentrt.export.validate import IMAGE_MIN_PSNR_DB
from latentrt.runtime.controlnet import keep_mask, residual_shapes
from latentrt.runtime.observers import NETWORK

PROMPT = "a blue circle at the top left on a white background"


@pytest.fixture(scope="module")
def pipe(tiny_sd1_controlnet):  # noqa: F811
    return Pipeline.from_folder(tiny_sd1_controlnet[1], provider="cpu", precision="fp32")


@pytest.fixture(scope="module")
def plain_folder(tiny_sd1_controlnet, tmp_path_factory):  # noqa: F811
    """The same folder without its ControlNets: it opens unet/model.onnx, the plain graph."""
    folder = tmp_path_factory.mktemp("plain") / "sd1-plain"
    shutil.copytree(tiny_sd1_controlnet[1], folder, ignore=shutil.ignore_patterns("controlnet", "model_controlnet.onnx"))
    manifest = folder / "manifest.json"
    import json

    data = json.loads(manifest.read_text())
    data["components"] = {k: v for k, v in data["components"].items() if not k.startswith(("controlnet/", "unet_controlnet"))}
    manifest.write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("case", [
    Case("sd1", names=("canny", "depth"), scale=(1.0, 0.7), start=0.2, end=0.8, scheduler="heun", steps=4),
    Case("sd1", guess_mode=True, scale=0.5, scheduler="euler-a"),
    Case("sd1", task="inpaint", scale=1.0, scheduler="ddim", strength=0.75, control_size=(96, 80)),
    Case("sd1", names=("canny", "depth"), scale=(0.8, 0.5), task="img2img", scheduler="dpm++2m", provider="openvino"),
], ids=lambda case: f"{case.task}-{case.label()}-{case.scheduler}-{case.provider}")
def test_images_match_diffusers(tiny_sd1_controlnet, monkeypatch, case):  # noqa: F811
    """Two ControlNets summed with a guidance window (a second-order scheduler: the keep mask counts UNet calls),
    guess mode (a stochastic scheduler), inpainting with a control image resized, img2img on OpenVINO."""
    source, folder = tiny_sd1_controlnet
    pipe = Pipeline.from_folder(folder, provider=case.provider, precision="fp32", use_cache=False)
    psnr, without, spread = compare(pipe, source, case, monkeypatch)
    print(f"{case.task} {case.label()} {case.scheduler} {case.provider}: {psnr:.1f} dB, without ControlNet {without:.1f} dB")
    assert spread > 1.0, "degenerate (flat) image: the comparison would prove nothing"
    assert psnr >= IMAGE_MIN_PSNR_DB
    assert without < IMAGE_MIN_PSNR_DB - 5  # sensitive: the ControlNet changes the image


def test_zero_residuals_give_the_plain_unets_image_with_and_without_a_lora(pipe, tiny_sd1_controlnet, plain_folder, tmp_path):  # noqa: F811
    """A folder with ControlNets opens only the residual UNet graph; without control it is fed zeros and gives the
    plain graph's image; a LoRA patches both graphs alike (they share their weights file)."""
    from test_lora import make_peft_lora

    assert "down_block_additional_residual_0" in pipe.unet.inputs
    plain = Pipeline.from_folder(plain_folder, provider="cpu", precision="fp32")
    assert "down_block_additional_residual_0" not in plain.unet.inputs
    # exact on every CPU kind: the same kernels on the same values (ONNX Runtime CPU, fp32), and x + 0.0 is x
    np.testing.assert_array_equal(pipe(PROMPT, steps=3, seed=2).arrays, plain(PROMPT, steps=3, seed=2).arrays)
    lora = make_peft_lora(tiny_sd1_controlnet[0].src, tmp_path / "lora", seed=3)
    adapted = Pipeline.from_folder(tiny_sd1_controlnet[1], provider="cpu", precision="fp32", loras=[(lora, 0.8)])
    adapted_plain = Pipeline.from_folder(plain_folder, provider="cpu", precision="fp32", loras=[(lora, 0.8)])
    with_lora = adapted(PROMPT, steps=3, seed=2).arrays
    np.testing.assert_array_equal(with_lora, adapted_plain(PROMPT, steps=3, seed=2).arrays)
    assert np.abs(with_lora.astype(int) - plain(PROMPT, steps=3, seed=2).arrays).mean() > 1  # the LoRA did something
    controlled = adapted(PROMPT, steps=3, seed=2, control_image=control_images(("canny",), (64, 64))[0], controlnet="canny")
    assert np.abs(controlled.arrays.astype(int) - with_lora).mean() > 1


def test_controlnets_run_on_the_kept_full_calls_only(tmp_path):
    """Observers see one "controlnet/<name>" event per UNet call inside [start, end) (diffusers' keep mask); with
    DeepCache only the full calls run it, the shallow ones take no residuals."""
    folder = controlnet_folder("sd1", ("ctl",), cache_branch=1)[1]  # the one test_controlnet_export builds
    pipe = Pipeline.from_folder(folder, provider="cpu", precision="fp32")
    control = control_images(("ctl",), (64, 64))[0]
    for interval, start, end in ((1, 0.25, 0.75), (2, 0.0, 1.0)):
        events = []
        with pipe.observe(lambda e, events=events: events.append(e) if e.kind == NETWORK else None):
            result = pipe(PROMPT, steps=8, seed=1, scheduler="ddim", control_image=control, cache_interval=interval,
                          control_guidance_start=start, control_guidance_end=end)
        unet = [e for e in events if e.name in ("unet", "unet_shallow")]
        full = [i for i, e in enumerate(unet) if e.name == "unet"]
        expected = [i for i, keep in enumerate(keep_mask(8, start, end)) if keep and i in full]
        ran, calls = [], 0  # the UNet calls (by index) a ControlNet ran before
        for event in events:
            if event.name == "controlnet/ctl":
                ran.append(calls)
            calls += event.name in ("unet", "unet_shallow")
        assert ran == expected, (interval, ran, expected)
        assert result.unet_calls == {"full": len(full), "shallow": 8 - len(full)}
        assert all("down_block_additional_residual_0" not in e.inputs for e in unet if e.name == "unet_shallow")
        fed = [i for i, e in enumerate(unet) if e.name == "unet" and np.any(e.inputs["mid_block_additional_residual"])]
        assert fed == expected  # the other full calls got zeros


def test_control_images_size_and_infotext(pipe):
    edges = control_images(("canny",), (96, 80))[0]
    result = pipe(PROMPT, steps=2, seed=1, control_image=edges, controlnet="canny", controlnet_conditioning_scale=0.8)
    assert result.images[0].size == (96, 80)  # text to image without height/width: the control image's size
    assert result.control_images[0].size == (96, 80)
    result = pipe(PROMPT, steps=2, seed=1, height=64, width=64, control_image=np.asarray(edges), controlnet="canny")
    expected = edges.resize((64, 64), resample=Image.Resampling.LANCZOS)  # diffusers' prepare_image
    np.testing.assert_array_equal(np.asarray(result.control_images[0]), np.asarray(expected))
    photo = init_image()
    result = pipe(PROMPT, steps=2, seed=1, control_image=[photo, photo], controlnet=["canny", "depth"],
                  control_preprocess=["canny", None], canny_low_threshold=50, control_guidance_end=[1.0, 0.5],
                  guess_mode=True)
    canny = np.asarray(result.control_images[0])
    assert set(np.unique(canny)) <= {0, 255} and (canny == 255).any()  # white edges on black
    np.testing.assert_array_equal(np.asarray(result.control_images[1]), np.asarray(photo))
    text = result.parameters[0].a1111()
    assert ('ControlNet 0: "Module: canny, Model: canny, Weight: 1, Threshold A: 50, Threshold B: 200, Guidance Start: 0, '
            'Guidance End: 1, Control Mode: ControlNet is more important"') in text
    assert 'ControlNet 1: "Module: none, Model: depth, Weight: 1, Guidance Start: 0, Guidance End: 0.5' in text
    assert pipe(PROMPT, steps=2, seed=1).control_images == []
    # img2img: the size follows `image`; the control image is resized to it
    result = pipe(PROMPT, steps=2, seed=1, image=init_image(), control_image=edges, controlnet="depth")
    assert result.images[0].size == (64, 64) and result.control_images[0].size == (64, 64)


def test_memory_guard_counts_controlnets_and_residuals(pipe):
    from latentrt.runtime.memory import estimate

    folder = pipe.folder
    plain = estimate(folder, 512, 512, 2, 1).unet
    one = estimate(folder, 512, 512, 2, 1, controlnets=["canny"]).unet
    two = estimate(folder, 512, 512, 2, 1, controlnets=["canny", "depth"]).unet
    assert plain < one < two
    side = 512 // folder.vae.scale_factor
    residuals = sum(int(np.prod(s)) for s in residual_shapes(folder.components["unet"].config, 2, side, side))
    assert two - one == 4 * residuals  # one more ControlNet's outputs held
    loading = estimate(folder, 64, 64, 2, 1, controlnets=["canny"]).peak
    resident = estimate(folder, 64, 64, 2, 1, controlnets=["canny"], resident={"controlnet/canny"}).peak
    assert loading > resident  # a ControlNet not open yet adds its weights
    pipe.check_fits(64, 64, controlnet=["canny", "depth"])
    with pytest.raises(ValueError, match="unknown ControlNet 'nope': this folder has canny, depth"):
        pipe.check_fits(64, 64, controlnet="nope")


def test_bad_input_is_refused_in_words_before_anything_runs(pipe, plain_folder, tmp_path):
    image = control_images(("canny",), (64, 64))[0]
    events = []
    bad = [
        ({"control_image": image}, "2 ControlNets \\(canny, depth\\): say which with controlnet="),
        ({"control_image": image, "controlnet": "nope"}, "unknown ControlNet 'nope': this folder has canny, depth"),
        ({"control_image": [image], "controlnet": ["canny", "depth"]}, "control_image has 1 image\\(s\\) for 2 ControlNet"),
        ({"control_image": [image, image], "controlnet": ["canny", "depth"], "controlnet_conditioning_scale": [1.0]},
         "controlnet_conditioning_scale has 1 value\\(s\\) for 2 ControlNet"),
        ({"control_image": image, "controlnet": "canny", "controlnet_conditioning_scale": float("nan")},
         "controlnet_conditioning_scale must be a finite number"),
        ({"control_image": image, "controlnet": "canny", "controlnet_conditioning_scale": "1"}, "must be a finite number"),
        ({"control_image": image, "controlnet": "canny", "control_guidance_start": 0.8, "control_guidance_end": 0.2},
         "control_guidance_start must be below control_guidance_end"),
        ({"control_image": image, "controlnet": "canny", "control_guidance_start": 0.5, "control_guidance_end": 0.5},
         "must be below"),
        ({"control_image": image, "controlnet": "canny", "control_guidance_end": 1.5}, "must be a fraction of the steps in \\[0, 1\\]"),
        ({"control_image": image, "controlnet": "canny", "control_preprocess": "sobel"}, "unknown preprocessor 'sobel': use one of none, canny"),
        ({"control_image": image, "controlnet": "canny", "canny_low_threshold": -1}, "canny_low_threshold must be a finite number >= 0"),
        ({"control_image": 42, "controlnet": "canny"}, "control_image must be a PIL image"),
        ({"control_image": np.zeros((8, 8), np.float32), "controlnet": "canny"}, "an image array must be uint8"),
        ({"controlnet": "canny"}, "controlnet configure ControlNet, which needs control_image="),
        ({"control_image": image, "controlnet": "canny", "guess_mode": "yes"}, "guess_mode must be True or False"),
        ({"control_image": control_images(("canny",), (32, 32))[0], "controlnet": "canny", "image": init_image(),
              "mask_image": mask_image(), "padding_mask_crop": 4}, "padding_mask_crop crops the control image with the image"),
    ]
    with pipe.observe(events.append):
        for options, words in bad:
            with pytest.raises(ValueError, match=words):
                pipe.check(Request(PROMPT, **options))
            with pytest.raises(ValueError, match=words):
                pipe(PROMPT, steps=2, **options)
    assert [e for e in events if e.kind == NETWORK] == []
    plain = Pipeline.from_folder(plain_folder, provider="cpu")
    with pytest.raises(ValueError, match="has no ControlNet.*latentrt export .*--controlnet"):
        plain(PROMPT, steps=2, control_image=image)
