"""NaN/inf in the UNet's output (any call, full or DeepCache's shallow UNet, bound or not) or the VAE decoder's is an
error that names the network and the fix, never a black image: in the pipeline, the CLI and the server (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from latentrt import Pipeline
from latentrt.cli import app
from latentrt.runtime.session import IoBinding, NonFiniteOutputError, OnnxModel

PROMPT = "a red circle at the top left on a white background"


@pytest.fixture
def nan_from(monkeypatch):
    """nan_from(network, call): from that call of the network on (1 = its first), its first output is NaN, whether
    it runs through session.run or IO binding."""

    def install(network: str, call: int = 1):
        calls = {"n": 0}

        def poisoned(result, name):
            if name == network:
                calls["n"] += 1
                if calls["n"] >= call:
                    first = next(iter(result))
                    if isinstance(result[first], np.ndarray):
                        result[first] = np.full_like(result[first], np.nan)
                    else:  # the binding's device buffer
                        result[first].update_inplace(np.full(result[first].shape(), np.nan, np.float32))
            return result

        plain, bound = OnnxModel.__call__, IoBinding.run
        monkeypatch.setattr(OnnxModel, "__call__", lambda self, **feeds: poisoned(plain(self, **feeds), self.name))
        monkeypatch.setattr(IoBinding, "run", lambda self, **feeds: poisoned(bound(self, **feeds), self.model.name))

    return install


@pytest.mark.parametrize("io_binding", [False, True])
def test_nan_in_the_unet_names_the_call_and_the_fix(nan_from, io_binding):
    pipe = Pipeline.default(provider="cpu", io_binding=io_binding)
    nan_from("unet", call=2)
    with pytest.raises(NonFiniteOutputError, match=r"unet produced NaN or inf values at UNet call 2 of 5; no image was "
                                                   r"written\. .*upcast attention.*fp32 folder"):
        pipe(PROMPT, steps=5, seed=0, guidance_scale=7.5)


def test_nan_in_the_shallow_unet_is_named(nan_from):
    pipe = Pipeline.default(provider="cpu", io_binding=True)
    nan_from("unet_shallow")
    with pytest.raises(NonFiniteOutputError, match=r"unet_shallow produced NaN or inf values at UNet call 2 of 6"):
        pipe(PROMPT, steps=6, seed=0, cache_interval=3)


def test_nan_in_the_vae_decoder_suggests_an_fp32_vae(nan_from):
    pipe = Pipeline.default(provider="cpu")
    nan_from("vae_decoder")
    with pytest.raises(FloatingPointError, match=r"vae_decoder produced NaN or inf values; no image was written\. "
                                                 r".*VAE decoder is fp32"):
        pipe(PROMPT, steps=2, seed=0)


def test_the_cli_reports_it_as_an_error_and_writes_nothing(nan_from, tmp_path):
    nan_from("unet")
    out = tmp_path / "black.png"
    result = CliRunner().invoke(app, ["generate", PROMPT, "--provider", "cpu", "--steps", "3", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "error: unet produced NaN or inf values at UNet call 1 of 3" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not out.exists()


def test_the_server_answers_500_with_the_reason_and_keeps_serving(nan_from):
    pytest.importorskip("fastapi", reason="the serve extra: pip install 'latentrt[serve]'")
    import requests

    from test_serve import running_server

    with Pipeline.default(provider="cpu") as pipe, running_server(pipe, max_batch=1) as (url, _):
        nan_from("vae_decoder")
        body = {"prompt": PROMPT, "size": "64x64", "seed": 1, "steps": 2}
        answer = requests.post(f"{url}/v1/images/generations", json=body, timeout=60)
        assert answer.status_code == 500, answer.text
        error = answer.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "generation"
        assert "vae_decoder produced NaN or inf values" in error["message"]
        a1111 = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 2, "width": 64, "height": 64}, timeout=60)
        assert a1111.status_code == 500 and "vae_decoder produced NaN" in a1111.json()["detail"]
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
