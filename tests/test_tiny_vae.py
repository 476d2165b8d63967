"""The tiny autoencoder (TAESD, diffusers' AutoencoderTiny): export and add-tiny-vae against PyTorch, generations
with vae="tiny" equal to diffusers' AutoencoderTiny on the same latents (Python API, CLI, SDXL), image to image with
its encoder against diffusers' img2img pipeline, the memory guard, the server's field, and every bad input refused
with the folder left as it was. Random-weight AutoencoderTiny configs (tiny_vae.build_tiny_autoencoder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from latentrt import Pipeline
from latentrt.cli import app
from latentrt.export.tiny_vae import TINY_COMPONENTS, TinyVaeError, build_tiny_autoencoder
from latentrt.export.tiny_vae_folder import add_tiny_vae
from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr
from latentrt.runtime.folder import file_sha256
from latentrt.runtime.images import read_parameters

runner = CliRunner()
PROMPT = "a red circle at the top left on a white background"


def to_uint8(decoded: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, as diffusers' postprocess."""
    return (np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def diffusers_decode(tiny_dir: Path, latents: np.ndarray) -> np.ndarray:
    """diffusers' AutoencoderTiny on the pipeline's final latents, scaled as its pipelines do."""
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        return to_uint8(vae.decode(torch.from_numpy(latents) / vae.config.scaling_factor).sample.numpy())


def snapshot(folder: Path) -> dict[str, bytes | int]:
    """Every file's size (and manifest.json's bytes) under a folder, hidden ones included."""
    state: dict[str, bytes | int] = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    if (folder / "manifest.json").is_file():
        state["manifest"] = (folder / "manifest.json").read_bytes()
    return state


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("taesd") / "taesd-small"
    build_tiny_autoencoder(path, "small", seed=0)
    return path


@pytest.fixture(scope="module")
def tiny_folder(tiny_sd1, tiny_vae_dir, tmp_path_factory) -> Path:
    """The tiny SD 1.x folder with the tiny VAE added (`latentrt add-tiny-vae`)."""
    folder = tmp_path_factory.mktemp("with-taesd") / "sd1-onnx"
    shutil.copytree(tiny_sd1[1], folder)
    result = runner.invoke(app, ["add-tiny-vae", str(folder), str(tiny_vae_dir)])
    assert result.exit_code == 0, result.output
    return folder


# --- export --------------------------------------------------------------------------------------------------
def test_exported_tiny_vae_matches_diffusers(tiny_folder, tiny_vae_dir):
    """The graphs against AutoencoderTiny on the same inputs: decoded images and the encoder's latents (as TAESD
    stores them in uint8: scale_latents) >= 40 dB; the manifest's entries (files, sha256, validation, config)."""
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny.from_pretrained(tiny_vae_dir).eval()
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((2, 4, 24, 16), dtype=np.float32)
    pixels = rng.uniform(-1, 1, (2, 3, 96, 64)).astype(np.float32)
    decoder = ort.InferenceSession(str(tiny_folder / "vae_decoder_tiny" / "model.onnx"), providers=["CPUExecutionProvider"])
    encoder = ort.InferenceSession(str(tiny_folder / "vae_encoder_tiny" / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        images = vae.decode(torch.from_numpy(latents)).sample.numpy()
        encoded = vae.encode(torch.from_numpy(pixels)).latents
        stored = vae.scale_latents(encoded).mul(255).round().byte().numpy()
    ours = decoder.run(None, {"latent_sample": latents})[0]
    assert ours.shape == (2, 3, 96, 64)
    assert image_psnr(to_uint8(ours), to_uint8(images)) >= IMAGE_MIN_PSNR_DB
    ours_latents = encoder.run(None, {"sample": pixels})[0]
    ours_stored = vae.scale_latents(torch.from_numpy(ours_latents)).mul(255).round().byte().numpy()
    assert image_psnr(ours_stored, stored) >= IMAGE_MIN_PSNR_DB
    manifest = json.loads((tiny_folder / "manifest.json").read_text())
    for name, output in (("vae_decoder_tiny", "sample"), ("vae_encoder_tiny", "latents")):
        entry = manifest["components"][name]
        assert entry["files"]["model.onnx"]["sha256"] == file_sha256(tiny_folder / name / "model.onnx")
        assert entry["outputs"][0]["name"] == output and entry["validation"][0]["max_rel_error"] < 1e-4
        assert json.loads((tiny_folder / name / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    assert "unet" in manifest["components"]  # the rest of the manifest kept
    result = runner.invoke(app, ["info", str(tiny_folder), "--verify"])
    assert result.exit_code == 0 and "vae_decoder_tiny" in result.output and "tiny VAE" in result.output


def test_export_with_tiny_vae(tiny_sd1, tiny_vae_dir, tmp_path):
    """`latentrt export SRC OUT --tiny-vae DIR` writes both tiny components, validated, in the manifest."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(tiny_sd1[0]), str(out), "--tiny-vae", str(tiny_vae_dir)])
    assert result.exit_code == 0, result.output
    assert "vae_decoder_tiny.sample" in result.output and "vae_encoder_tiny.latents" in result.output
    components = json.loads((out / "manifest.json").read_text())["components"]
    assert set(TINY_COMPONENTS) <= set(components)
    pipe = Pipeline.from_folder(out, provider="cpu", vae="tiny")
    assert pipe("a fox", steps=2, seed=0).parameters[0].vae == "tiny"


def test_add_tiny_vae_to_a_legacy_folder_without_a_manifest(tiny_sd1, tiny_vae_dir, tmp_path):
    """diffusers' legacy layout (no manifest.json; optimum's folders have none either): the tiny components are added
    with a manifest.json that lists them only, and the folder's other graphs are read as before."""
    from test_legacy_folder import _legacy_copy

    legacy = tmp_path / "legacy"
    _legacy_copy(tiny_sd1[1], legacy)
    latents = np.random.default_rng(2).standard_normal((1, 4, 16, 16), dtype=np.float32)
    before = Pipeline.from_folder(legacy, provider="cpu")(PROMPT, steps=3, latents=latents)
    result = runner.invoke(app, ["add-tiny-vae", str(legacy), str(tiny_vae_dir)])
    assert result.exit_code == 0, result.output
    assert set(json.loads((legacy / "manifest.json").read_text())["components"]) == set(TINY_COMPONENTS)
    pipe = Pipeline.from_folder(legacy, provider="cpu")
    np.testing.assert_array_equal(pipe(PROMPT, steps=3, latents=latents).arrays, before.arrays)
    tiny = pipe(PROMPT, steps=3, latents=latents, vae="tiny")
    assert image_psnr(tiny.arrays, diffusers_decode(tiny_vae_dir, tiny.latents)) >= IMAGE_MIN_PSNR_DB


# --- runtime -------------------------------------------------------------------------------------------------
def test_generate_tiny_equals_diffusers_decode_of_the_same_latents(tiny_folder, tiny_vae_dir, tmp_path):
    """Python API (per call and as the pipeline's default) and CLI: the image is diffusers' AutoencoderTiny decode of
    the pipeline's own final latents; with the default 'tiny' the full decoder opens only when a call asks for it."""
    pipe = Pipeline.from_folder(tiny_folder, provider="cpu")
    full = pipe(PROMPT, steps=3, seed=4)
    tiny = pipe(PROMPT, steps=3, seed=4, vae="tiny")
    np.testing.assert_array_equal(tiny.latents, full.latents)  # only the decode differs
    assert image_psnr(tiny.arrays, diffusers_decode(tiny_vae_dir, tiny.latents)) >= IMAGE_MIN_PSNR_DB
    assert not np.array_equal(tiny.arrays, full.arrays)
    assert tiny.parameters[0].vae == "tiny" and "VAE: tiny" in tiny.parameters[0].a1111()
    assert "VAE:" not in full.parameters[0].a1111()

    default = Pipeline.from_folder(tiny_folder, provider="cpu", vae="tiny")
    assert "vae_decoder_tiny" in default.resident_networks and "vae_decoder" not in default.resident_networks
    np.testing.assert_array_equal(default(PROMPT, steps=3, seed=4).arrays, tiny.arrays)
    assert "vae_decoder" not in default.resident_networks
    np.testing.assert_array_equal(default(PROMPT, steps=3, seed=4, vae="full").arrays, full.arrays)
    assert "vae_decoder" in default.resident_networks  # opened lazily, kept

    out = tmp_path / "tiny.png"
    args = ["generate", PROMPT, "-m", str(tiny_folder), "-o", str(out), "--steps", "3", "--seed", "4",
            "--provider", "cpu", "--vae", "tiny"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), tiny.arrays[0])
    assert "VAE: tiny" in read_parameters(out)


def test_img2img_with_the_tiny_encoder_matches_diffusers(tiny_sd1, tiny_folder, tiny_vae_dir, monkeypatch):
    """diffusers' StableDiffusionImg2ImgPipeline with the AutoencoderTiny as its VAE (encode: .latents, no sampling),
    its noise drawn from NumPy in latentrt's order: the same image."""
    from diffusers import AutoencoderTiny

    from test_img2img import circle, numpy_noise_pipeline

    image = Image.fromarray(circle())
    pipe = Pipeline.from_folder(tiny_folder, provider="cpu")
    ours = pipe(PROMPT, image=image, strength=0.6, steps=5, scheduler="euler", seed=3, vae="tiny")
    assert ours.parameters[0].task == "img2img" and ours.parameters[0].vae == "tiny"
    reference = numpy_noise_pipeline("StableDiffusionImg2ImgPipeline", "pipeline_stable_diffusion_img2img", tiny_sd1[0],
                                     "euler", 3, monkeypatch)
    reference.vae = AutoencoderTiny.from_pretrained(tiny_vae_dir).eval()
    with torch.no_grad():
        expected = reference(PROMPT, image=image, strength=0.6, num_inference_steps=5, output_type="np").images
    assert image_psnr(ours.arrays, (expected * 255).round().astype(np.uint8)) >= IMAGE_MIN_PSNR_DB
    full = pipe(PROMPT, image=image, strength=0.6, steps=5, scheduler="euler", seed=3)
    assert not np.array_equal(full.arrays, ours.arrays)


def test_sdxl_with_a_tiny_vae(tiny_sdxl, tiny_vae_dir, tmp_path):
    """TAESDXL's case: an SDXL folder (scaling factor 0.13025 for its VAE, 1.0 for the tiny one)."""
    folder = tmp_path / "sdxl"
    shutil.copytree(tiny_sdxl[1], folder)
    add_tiny_vae(folder, tiny_vae_dir)
    result = Pipeline.from_folder(folder, provider="cpu", vae="tiny")(PROMPT, steps=2, seed=1)
    assert image_psnr(result.arrays, diffusers_decode(tiny_vae_dir, result.latents)) >= IMAGE_MIN_PSNR_DB


def test_memory_guard_counts_the_tiny_decode(tiny_folder, monkeypatch):
    """A size whose full-VAE decode does not fit (tiling off) is admitted with the tiny VAE, whose estimate is its own."""
    from latentrt.runtime import memory

    folder = Pipeline.from_folder(tiny_folder, provider="cpu").folder
    full = memory.estimate(folder, 1024, 1024, 1, 1)
    tiny = memory.estimate(folder, 1024, 1024, 1, 1, vae="tiny")
    assert tiny.vae != full.vae and tiny.vae == memory.TINY_VAE_BYTES_PER_VALUE * 16 * 1024 * 1024 + 12 * 1024 * 1024 + memory.RUNTIME_OVERHEAD
    pipe = Pipeline.from_folder(tiny_folder, provider="cpu", vae_tiling=False)
    between = max(tiny.peak, full.unet, full.text_encoder) + 1
    assert between < full.peak
    monkeypatch.setattr("latentrt.runtime.pipeline.available_memory", lambda: between)
    from latentrt.runtime.pipeline import ImageTooLargeError

    with pytest.raises(ImageTooLargeError):
        pipe.check_fits(1024, 1024, guidance_scale=1)  # one UNet row, as estimated above
    pipe.check_fits(1024, 1024, guidance_scale=1, vae="tiny")


# --- bad input -----------------------------------------------------------------------------------------------
def _bad_dirs(tiny_sd1, tiny_vae_dir, root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a folder that must be refused, words the message must contain)."""
    wrong_channels = root / "channels"
    build_tiny_autoencoder(wrong_channels, "small", latent_channels=16)
    truncated = root / "truncated"
    shutil.copytree(tiny_vae_dir, truncated)
    weights = truncated / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    no_config = root / "no-config"
    shutil.copytree(tiny_vae_dir, no_config)
    (no_config / "config.json").unlink()
    return {
        "wrong class": (tiny_sd1[0] / "vae", "AutoencoderKL"),
        "wrong latent channels": (wrong_channels, "16 latent channels"),
        "truncated weights": (truncated, "truncated"),
        "no config": (no_config, "no config.json"),
        "not a folder": (root / "missing", "not a folder"),
    }


def test_bad_tiny_vae_folders_are_refused_and_nothing_is_written(tiny_sd1, tiny_vae_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd1[1], folder)
    before = snapshot(folder)
    for case, (bad, words) in _bad_dirs(tiny_sd1, tiny_vae_dir, tmp_path).items():
        result = runner.invoke(app, ["add-tiny-vae", str(folder), str(bad)])
        assert result.exit_code == 2 and words in result.output, (case, result.output)
        assert snapshot(folder) == before, case
        with pytest.raises(TinyVaeError, match=words):
            add_tiny_vae(folder, bad)
        assert snapshot(folder) == before, case
        out = tmp_path / f"export-{case.replace(' ', '-')}"
        result = runner.invoke(app, ["export", str(tiny_sd1[0]), str(out), "--tiny-vae", str(bad)])
        assert result.exit_code == 2 and words in result.output, (case, result.output)
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*")), case


def test_a_failure_after_the_export_leaves_the_folder_as_it_was(tiny_folder, tiny_vae_dir, tmp_path, monkeypatch):
    """add-tiny-vae over an existing tiny VAE: refused without --force; with --force, a failure while the manifest is
    written puts the old components back and removes what was built."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    before = snapshot(folder)
    result = runner.invoke(app, ["add-tiny-vae", str(folder), str(tiny_vae_dir)])
    assert result.exit_code == 2 and "--force" in result.output and snapshot(folder) == before

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("latentrt.export.tiny_vae_folder.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        add_tiny_vae(folder, tiny_vae_dir, force=True)
    assert snapshot(folder) == before


def test_vae_tiny_without_a_tiny_vae_names_the_command(tiny_sd1, tmp_path):
    pipe = Pipeline.from_folder(tiny_sd1[1], provider="cpu")
    for call in (lambda: pipe("x", steps=1, vae="tiny"), lambda: Pipeline.from_folder(tiny_sd1[1], provider="cpu", vae="tiny")):
        with pytest.raises(ValueError, match="latentrt add-tiny-vae MODEL TAESD_DIR") as error:
            call()
        assert "--tiny-vae" in str(error.value)
    with pytest.raises(ValueError, match="vae must be 'full'"):
        pipe("x", steps=1, vae="small")
    out = tmp_path / "x.png"
    result = runner.invoke(app, ["generate", "x", "-m", str(tiny_sd1[1]), "-o", str(out), "--vae", "tiny", "--steps", "1"])
    assert result.exit_code == 2 and "add-tiny-vae" in result.output and not out.exists()


def test_only_the_tiny_decoder_says_so_for_image_to_image(tiny_folder, tmp_path):
    folder = tmp_path / "decoder-only"
    shutil.copytree(tiny_folder, folder)
    shutil.rmtree(folder / "vae_encoder_tiny")
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["components"]["vae_encoder_tiny"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    from test_img2img import circle

    pipe = Pipeline.from_folder(folder, provider="cpu", vae="tiny")
    pipe("x", steps=1)  # decoding works
    with pytest.raises(ValueError, match="no tiny VAE encoder"):
        pipe("x", image=Image.fromarray(circle()), steps=2)
    pipe("x", image=Image.fromarray(circle()), steps=2, vae="full")


# --- server --------------------------------------------------------------------------------------------------
def test_server_vae_field_accepted_and_refused(tiny_folder, tiny_sd1):
    pytest.importorskip("fastapi", reason="the serve extra")
    import requests

    from test_serve import png, running_server

    pipe = Pipeline.from_folder(tiny_folder, provider="cpu")
    expected = pipe(PROMPT, steps=2, seed=5, vae="tiny").arrays[0]
    with running_server(pipe, max_batch=1) as (url, _):
        body = {"prompt": PROMPT, "steps": 2, "seed": 5, "vae": "tiny", "size": "64x64"}
        answer = requests.post(f"{url}/v1/images/generations", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        np.testing.assert_array_equal(np.asarray(png(answer.json()["data"][0]["b64_json"]).convert("RGB")), expected)
        answer = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 2, "seed": 5, "vae": "tiny"}, timeout=120)
        assert answer.status_code == 200, answer.text
        assert "VAE: tiny" in json.loads(answer.json()["info"])["infotexts"][0]
        bad = requests.post(f"{url}/v1/images/generations", json={**body, "vae": "huge"}, timeout=30)
        assert bad.status_code == 422 and "vae" in bad.json()["error"]["message"]
        bad = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT, "vae": 3}, timeout=30)
        assert bad.status_code == 422 and "vae" in bad.json()["detail"]
    with running_server(Pipeline.from_folder(tiny_sd1[1], provider="cpu"), max_batch=1) as (url, _):
        answer = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1, "vae": "tiny"}, timeout=60)
        assert answer.status_code == 422 and "add-tiny-vae" in answer.json()["detail"]
        answer = requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "steps": 1, "vae": "tiny"}, timeout=60)
        assert answer.status_code == 422 and "add-tiny-vae" in answer.json()["error"]["message"]
