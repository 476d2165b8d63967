"""ONNX Runtime's IO binding for the UNet loop (io_binding=True): bit-identical images to the unbound path on CPU
(schedulers, guidance on and off, DeepCache, image to image, threads), conditioning bound once per generation, the
DeepCache feature kept on the device; provider_options and cuda_graph plumbing, and their errors (issue 16)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from latentrt import Pipeline
from latentrt.cli import app
from latentrt.runtime import backend as backend_module
from latentrt.runtime.backend import Backend, parse_provider_options
from latentrt.runtime.session import IoBinding

PROMPT = "a red circle at the top left on a white background"
runner = CliRunner()


@pytest.fixture(scope="module")
def plain():
    with Pipeline.default(provider="cpu") as pipe:
        yield pipe


@pytest.fixture(scope="module")
def bound():
    with Pipeline.default(provider="cpu", io_binding=True) as pipe:
        yield pipe


def assert_same(a, b):
    assert np.array_equal(a.arrays, b.arrays) and np.array_equal(a.latents, b.latents)


# --- parity ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache_interval", [1, 3])
@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("scheduler", ["dpm++2m", "euler-a", "heun", "unipc"])  # multistep, ancestral, 2nd order
def test_bound_images_are_the_unbound_ones(plain, scheduler, guidance, cache_interval):
    """The shipped model has DeepCache's shallow UNet: cache_interval 3 runs it on the full UNet's device feature.
    A new pipeline's first generation allocates its buffers, the second reuses them: both are checked."""
    kwargs = dict(steps=7, seed=3, guidance_scale=guidance, scheduler=scheduler, cache_interval=cache_interval)
    expected = plain(PROMPT, **kwargs)
    with Pipeline.default(provider="cpu", io_binding=True) as bound:
        for _ in range(2):
            assert_same(bound(PROMPT, **kwargs), expected)


def test_new_shapes_and_image_to_image_stay_identical(plain, bound):
    """Another size and batch reallocates the buffers; image to image starts from encoded latents."""
    for kwargs in (dict(height=32, width=48, num_images=2, guidance_scale=7.5), dict(steps=5, guidance_scale=1.0)):
        assert_same(bound(PROMPT, seed=1, **kwargs), plain(PROMPT, seed=1, **kwargs))
    start = plain(PROMPT, seed=2, steps=4).images[0]
    kwargs = dict(image=start, strength=0.6, steps=6, seed=4, guidance_scale=7.5)
    assert_same(bound("a blue square", **kwargs), plain("a blue square", **kwargs))


def test_threads_take_turns_and_get_the_serial_images(bound, plain):
    seeds = [5, 6, 7, 8]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: bound(PROMPT, seed=s, steps=5, guidance_scale=7.5, cache_interval=2), seeds))
    for seed, result in zip(seeds, results):
        assert_same(result, plain(PROMPT, seed=seed, steps=5, guidance_scale=7.5, cache_interval=2))


# --- what is bound, and when ---------------------------------------------------------------------------------------
def test_conditioning_is_bound_once_per_generation_and_the_feature_stays_on_the_device(bound, monkeypatch):
    unet, shallow = bound.resident_networks["unet"], bound.resident_networks["unet_shallow"]
    assert unet.binding is not None and shallow.binding is not None
    assert bound.resident_networks["text_encoder"].binding is None and bound.resident_networks["vae_decoder"].binding is None
    fed: list[str] = []
    original = IoBinding.feed

    def spy(self, feeds):
        fed.extend(f"{self.model.name}.{name}" for name in feeds)
        return original(self, feeds)

    monkeypatch.setattr(IoBinding, "feed", spy)
    for _ in range(2):
        bound(PROMPT, steps=6, seed=0, guidance_scale=7.5, cache_interval=3)  # full calls 0 and 3, shallow 4
    assert fed.count("unet.encoder_hidden_states") == 2  # once per generation
    assert fed.count("unet.sample") == 4 and fed.count("unet_shallow.sample") == 8
    assert "unet_shallow.encoder_hidden_states" not in fed  # the shallow UNet takes only what its layers use
    feature = bound.folder.deepcache["feature"]
    assert shallow.binding.inputs[feature].data_ptr() == unet.binding.outputs[1].data_ptr()  # no trip to the host
    assert feature not in shallow.binding.owned


def test_a_binding_copies_into_buffers_of_its_own(bound):
    """ortvalue_from_numpy on the CPU would alias the caller's array, and the next step's copy would overwrite the
    latents a multistep scheduler still holds (UniPC's last sample)."""
    binding = IoBinding(bound.resident_networks["unet"], "cpu")
    first, second = np.zeros((1, 4, 8, 8), np.float32), np.ones((1, 4, 8, 8), np.float32)
    binding.feed({"sample": first})
    binding.feed({"sample": second})
    assert not first.any() and np.array_equal(binding.inputs["sample"].numpy(), second)


def test_a_static_binding_refuses_another_shape(bound, monkeypatch):
    """cuda_graph's bindings are static (CUDA graphs replay at fixed addresses): checked here on CPU."""
    with Pipeline.default(provider="cpu", io_binding=True) as pipe:
        monkeypatch.setattr(pipe.resident_networks["unet"].binding, "static", True)
        pipe(PROMPT, steps=2, seed=0, guidance_scale=7.5)
        assert_same(pipe(PROMPT, steps=3, seed=1, guidance_scale=7.5), bound(PROMPT, steps=3, seed=1, guidance_scale=7.5))
        with pytest.raises(ValueError, match=r"unet: cuda_graph captured this network at \w+ \(2, .*one shape"):
            pipe(PROMPT, steps=2, seed=0, guidance_scale=1.0)  # no guidance: one row, not two


# --- options: plumbing and errors ----------------------------------------------------------------------------------
@pytest.fixture
def sessions(monkeypatch):
    """Every InferenceSession made: (model path, its keyword arguments); the sessions themselves run on the CPU
    provider alone, as this machine has only that."""
    made = []
    real = ort.InferenceSession

    def capture(path, options=None, providers=None, **kwargs):
        made.append((str(path), {"providers": providers, **kwargs}))
        kwargs.pop("provider_options", None)
        return real(path, options, providers=["CPUExecutionProvider"], **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", capture)
    return made


def test_provider_options_reach_every_session(sessions):
    Pipeline.default(provider="cpu", provider_options={"arena_extend_strategy": "kSameAsRequested"}, use_cache=False)
    assert len(sessions) == 4  # text encoder, UNet, VAE decoder, shallow UNet
    for _, kwargs in sessions:
        assert kwargs["provider_options"] == [{"arena_extend_strategy": "kSameAsRequested"}]


@pytest.mark.parametrize("provider,option", [("CUDAExecutionProvider", {"enable_cuda_graph": "1"}),
                                             ("TensorrtExecutionProvider", {"trt_cuda_graph_enable": "True"})])
def test_cuda_graph_is_asked_for_the_unets_only(sessions, monkeypatch, provider, option):
    """No GPU here: the provider chain is faked, the sessions run on the CPU (see `sessions`)."""
    monkeypatch.setattr(backend_module, "resolve_providers", lambda name: [provider, "CPUExecutionProvider"])
    folder = Pipeline.default(provider="cpu", use_cache=False).folder
    backend = Backend("cuda", "fp32", io_binding=True, cuda_graph=True, provider_options={"device_id": "0"})
    models = {name: backend.open(folder.components[name]) for name in ("text_encoder", "unet", "unet_shallow", "vae_decoder")}
    asked = {path.split("/")[-2]: kwargs["provider_options"][0] for path, kwargs in sessions[-4:]}
    assert asked["unet"] == asked["unet_shallow"] == {"device_id": "0", **option}
    assert asked["text_encoder"] == asked["vae_decoder"] == {"device_id": "0"}
    assert models["unet"].binding.static and models["text_encoder"].binding is None


@pytest.mark.parametrize("kwargs,words", [
    (dict(provider="cpu", cuda_graph=True), "cuda_graph needs the cuda or tensorrt provider"),
    (dict(provider="openvino", io_binding=True), "io_binding configure ONNX Runtime"),
    (dict(provider="openvino", provider_options={"a": "1"}), "provider_options configure ONNX Runtime"),
    (dict(provider="cpu", provider_options=["a=1"]), "provider_options must be a dict"),
])
def test_bad_combinations_are_refused_before_loading(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Pipeline.default(**kwargs)


def test_cuda_graph_without_a_gpu_build_says_what_to_install():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        Pipeline.default(provider="cuda", cuda_graph=True)


def test_auto_with_onnxruntime_options_means_onnxruntime():
    with Pipeline.default(io_binding=True) as pipe:
        assert pipe.provider == "cpu" and pipe.backend.io_binding


def test_parse_provider_options():
    assert parse_provider_options(None) is None
    assert parse_provider_options(["trt_fp16_enable=True", " trt_engine_cache_path = /tmp/a=b "]) == {
        "trt_fp16_enable": "True", "trt_engine_cache_path": "/tmp/a=b"}
    for bad in ("trt_fp16_enable", "=1", "key="):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_provider_options([bad])


# --- the CLI -----------------------------------------------------------------------------------------------------
def test_cli_io_binding_writes_the_same_image(tmp_path, plain):
    args = ["generate", PROMPT, "--provider", "cpu", "--steps", "4", "--seed", "9", "--guidance", "5"]
    for name, extra in (("plain.png", []), ("bound.png", ["--io-binding"])):
        result = runner.invoke(app, args + ["-o", str(tmp_path / name)] + extra)
        assert result.exit_code == 0, result.output
    assert (tmp_path / "plain.png").read_bytes() == (tmp_path / "bound.png").read_bytes()


@pytest.mark.parametrize("extra,words", [
    (["--provider-option", "trt_fp16_enable"], "--provider-option takes KEY=VALUE"),
    (["--cuda-graph"], "cuda_graph needs the cuda or tensorrt provider"),
])
def test_cli_errors_without_a_traceback(tmp_path, extra, words):
    out = tmp_path / "x.png"
    result = runner.invoke(app, ["generate", PROMPT, "--provider", "cpu", "-o", str(out)] + extra)
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_sdxl_conditioning_is_bound_and_the_images_are_identical(tiny_sdxl):
    """SDXL's extra UNet inputs (text_embeds, time_ids) are per-generation constants too."""
    kwargs = dict(steps=4, seed=0, guidance_scale=5.0, height=64, width=64)
    with Pipeline.from_folder(tiny_sdxl[1], provider="cpu") as plain, \
            Pipeline.from_folder(tiny_sdxl[1], provider="cpu", io_binding=True) as bound:
        for _ in range(2):
            assert_same(bound(PROMPT, **kwargs), plain(PROMPT, **kwargs))
        assert {"text_embeds", "time_ids"} <= set(bound.resident_networks["unet"].binding.owned)
