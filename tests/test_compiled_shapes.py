"""OpenVINO's compiled shapes are bounded (issue 24, row 3): past `max_compiled_shapes` the least recently used
shape a call compiled is released (those `compile` made are kept), and the images stay right; `latentrt serve
--sizes` compiles its sizes at start and refuses the others with 422."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the openvino extra: pip install 'latentrt[openvino]'")

from latentrt import Pipeline  # noqa: E402
from latentrt.export.validate import image_psnr  # noqa: E402
from latentrt.runtime.backends.openvino import DEFAULT_MAX_SHAPES  # noqa: E402

PROMPT = "a red circle at the top left on a white background"
KWARGS = dict(steps=2, seed=5)


def test_compiled_shapes_stay_at_the_bound_and_the_images_stay_right():
    with Pipeline.default(provider="openvino", precision="fp32", max_compiled_shapes=2) as pipe:
        first = pipe(PROMPT, height=64, width=64, **KWARGS).arrays
        pipe.compile(32, 48)  # pinned: kept whatever the calls compile
        unet = pipe.resident_networks["unet"]
        sizes = [(h, 64) for h in range(32, 52, 4)]  # 5 new sizes, past the bound of 2
        for height, width in sizes:
            pipe(PROMPT, height=height, width=width, **KWARGS)
            for name, network in pipe.resident_networks.items():
                assert network.compiled_shapes <= 2 + 1, name  # the bound, and the pinned shape
        assert unet.compiled_shapes == 3
        assert unet.compiled_for("sample", (1, 4, 8, 12))  # the pinned 32x48
        assert not unet.compiled_for("sample", (1, 4, 16, 16))  # 64x64: released
        again = pipe(PROMPT, height=64, width=64, **KWARGS).arrays  # compiled again: the same images
        np.testing.assert_array_equal(again, first)  # exact: the same graph compiled again on the same CPU
        last = pipe(PROMPT, height=48, width=64, **KWARGS).arrays  # held: no compilation
    with Pipeline.default(provider="cpu", precision="fp32") as reference:
        psnr = image_psnr(last, reference(PROMPT, height=48, width=64, **KWARGS).arrays)
    assert psnr >= 60.0, psnr  # as test_openvino's fp32 parity


def test_bound_option_is_checked_and_defaults():
    with pytest.raises(ValueError, match="max_compiled_shapes must be a positive integer"):
        Pipeline.default(provider="openvino", max_compiled_shapes=0)
    with Pipeline.default(provider="openvino", precision="fp32") as pipe:
        assert pipe.resident_networks["unet"].max_shapes == DEFAULT_MAX_SHAPES == 8


def test_parse_sizes():
    from latentrt.serve.sizes import parse_sizes

    assert parse_sizes("512x512, 768X512,512x512") == ((512, 512), (768, 512))
    assert parse_sizes(None) is None and parse_sizes("") is None
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_sizes("512")


def test_serve_sizes_compiles_them_at_start_and_refuses_the_rest():
    pytest.importorskip("fastapi", reason="the serve extra: pip install 'latentrt[serve]'")
    import requests

    from tests.test_serve import running_server

    with Pipeline.default(provider="openvino", precision="fp32") as pipe:
        with running_server(pipe, max_batch=2, sizes=((48, 32), (64, 64))) as (url, state):
            unet = pipe.resident_networks["unet"]
            for batch in (1, 2):  # compiled at start, both batch sizes
                assert unet.compiled_for("sample", (batch, 4, 8, 12))
            before = unet.compiled_shapes
            ok = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT, "width": 48, "height": 32, "steps": 2},
                               timeout=60)
            assert ok.status_code == 200, ok.text
            assert unet.compiled_shapes == before  # nothing compiled in the request
            refused = requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "size": "40x40"}, timeout=60)
            assert refused.status_code == 422, refused.text
            message = refused.json()["error"]["message"]
            assert "40x40" in message and "48x32, 64x64" in message and "--sizes" in message
            refused = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT, "width": 40, "height": 40}, timeout=60)
            assert refused.status_code == 422 and "48x32, 64x64" in refused.text
