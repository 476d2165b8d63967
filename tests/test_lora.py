"""LoRA at load time (issue 14): a PEFT LoRA on the tiny SD 1.x config gives diffusers' image (load_lora_weights +
fuse_lora, same latents); the same LoRA converted to kohya names gives the same image; scales, sums, set_loras,
both backends; bad LoRAs refused with what was wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("peft", reason="LoRA parity needs peft (the dev extra)")

from latentrt import Pipeline  # noqa: E402
from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr  # noqa: E402
from latentrt.runtime.lora import Lora, LoraError  # noqa: E402

PROMPT = "a lighthouse at dusk"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def make_peft_lora(src: Path, out: Path, seed: int, rank: int = 4, alpha: int = 8) -> Path:
    """A LoRA made with PEFT on the diffusers model (random, non-zero up matrices), saved as diffusers saves one."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline.from_pretrained(src, safety_checker=None)
    unet_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=UNET_TARGETS, init_lora_weights=False)
    text_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=TEXT_TARGETS, init_lora_weights=False)
    pipe.unet.add_adapter(unet_config)
    # PEFT directly: transformers 5.24's add_adapter demands peft >= 0.22, which the package index does not have
    inject_adapter_in_model(text_config, pipe.text_encoder)
    with torch.no_grad():  # PEFT's random init is large for a tiny model: keep the effect visible, not chaotic
        for module in (pipe.unet, pipe.text_encoder):
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.3)
    out.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=text_config.to_dict(),
        weight_name="lora.safetensors", safe_serialization=True)
    (out / "alpha.json").write_text(json.dumps({"rank": rank, "alpha": alpha}))
    return out / "lora.safetensors"


def diffusers_image(src: Path, loras: list[tuple[Path, float]], latents: np.ndarray, size: int | None = None) -> np.ndarray:
    """diffusers with the LoRAs: the UNet through diffusers' own loader (load_lora_adapter + set_adapters); the text
    encoder merged by the definition, W + scale * alpha / r * B @ A in torch (transformers 5.24's LoRA loader needs
    peft >= 0.22, which the package index does not have)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    pipe = StableDiffusionPipeline.from_pretrained(src, safety_checker=None)
    names = []
    for i, (path, scale) in enumerate(loras):
        state, _, metadata = pipe.lora_state_dict(str(path), return_lora_metadata=True)  # metadata: lora_alpha, r
        unet_state = {k: v for k, v in state.items() if k.startswith("unet.")}
        pipe.unet.load_lora_adapter(unet_state, prefix="unet", adapter_name=f"a{i}", metadata=metadata)
        names.append(f"a{i}")
    if names:
        pipe.unet.set_adapters(names, weights=[scale for _, scale in loras])
    modules = {name.removeprefix("text_model."): m for name, m in pipe.text_encoder.named_modules()}
    with torch.no_grad():
        for path, scale in loras:
            factors = json.loads((path.parent / "alpha.json").read_text())
            state = load_file(str(path))
            for key, down in state.items():
                if key.startswith("text_encoder.") and key.endswith(".lora_A.weight"):
                    module = key[len("text_encoder."):-len(".lora_A.weight")].removeprefix("text_model.")
                    up = state[key.replace("lora_A", "lora_B")]
                    modules[module].weight += scale * factors["alpha"] / factors["rank"] * (up @ down)
    image = pipe(PROMPT, num_inference_steps=4, guidance_scale=7.5, latents=torch.from_numpy(latents),
                 height=size, width=size, output_type="np").images[0]
    return (image * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def lora_setup(tiny_sd1, tmp_path_factory):
    src, onnx = tiny_sd1
    root = tmp_path_factory.mktemp("lora")
    first = make_peft_lora(src, root / "first", seed=1)
    second = make_peft_lora(src, root / "second", seed=2, rank=2, alpha=2)
    pipe = Pipeline.from_folder(onnx, provider="cpu", precision="fp32", use_cache=False)
    latents = np.random.default_rng(0).standard_normal(pipe.latent_shape(), dtype=np.float32)[None]
    return src, onnx, first, second, latents


def latentrt_image(onnx: Path, loras, latents, provider="cpu") -> np.ndarray:
    with Pipeline.from_folder(onnx, provider=provider, precision="fp32", use_cache=False, loras=loras) as pipe:
        return pipe(PROMPT, steps=4, guidance_scale=7.5, latents=latents).arrays[0]


def test_peft_lora_matches_diffusers(lora_setup):
    src, onnx, first, second, latents = lora_setup
    plain = latentrt_image(onnx, None, latents)
    for loras in ([(first, 1.0)], [(first, 0.5)], [(first, 0.7), (second, 1.3)]):
        ours, theirs = latentrt_image(onnx, loras, latents), diffusers_image(src, loras, latents)
        psnr = image_psnr(ours, theirs)
        print(f"LoRA {[(p.parent.name, s) for p, s in loras]}: PSNR vs diffusers {psnr:.1f} dB, "
              f"vs no LoRA {image_psnr(ours, plain):.1f} dB")
        assert psnr >= IMAGE_MIN_PSNR_DB
        assert image_psnr(ours, plain) < 30  # the LoRA changes the image: the comparison means something


def test_kohya_names_give_the_same_image(lora_setup, tmp_path):
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    src, onnx, first, _, latents = lora_setup
    state = load_file(str(first))
    peft_style = {k.replace("lora.down", "lora_A").replace("lora.up", "lora_B"): v for k, v in state.items()}
    kohya = convert_state_dict_to_kohya(peft_style)
    assert any(k.startswith("lora_unet_") for k in kohya) and any(k.startswith("lora_te") for k in kohya)
    alpha = json.loads((first.parent / "alpha.json").read_text())["alpha"]
    kohya = {k: (v * 0 + alpha if k.endswith(".alpha") else v) for k, v in kohya.items()}  # the converter writes alpha = rank
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(tmp_path / "kohya.safetensors"))
    ours = latentrt_image(onnx, [(tmp_path / "kohya.safetensors", 1.0)], latents)
    assert image_psnr(ours, latentrt_image(onnx, [(first, 1.0)], latents)) >= 60


def test_set_loras_and_openvino(lora_setup):
    _, onnx, first, _, latents = lora_setup
    with Pipeline.from_folder(onnx, provider="cpu", precision="fp32", use_cache=False) as pipe:
        plain = pipe(PROMPT, steps=4, latents=latents).arrays[0]
        pipe.set_loras([(first, 1.0)])
        assert pipe.lora_report["layers"] > 0 and pipe.lora_report["unmatched"] == 0
        adapted = pipe(PROMPT, steps=4, latents=latents).arrays[0]
        pipe.set_loras([])
        assert np.array_equal(pipe(PROMPT, steps=4, latents=latents).arrays[0], plain)
    assert np.array_equal(adapted, latentrt_image(onnx, [(first, 1.0)], latents))
    pytest.importorskip("openvino")
    assert image_psnr(latentrt_image(onnx, [(first, 1.0)], latents, provider="openvino"), adapted) >= IMAGE_MIN_PSNR_DB


def test_bad_loras(lora_setup, tmp_path):
    from safetensors.numpy import save_file

    _, onnx, first, _, _ = lora_setup
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    save_file({}, str(tmp_path / "empty.safetensors"))
    save_file({"lora_unet_nowhere.lora_down.weight": np.ones((2, 8), np.float32),
               "lora_unet_nowhere.lora_up.weight": np.ones((8, 2), np.float32)}, str(tmp_path / "nothing.safetensors"))
    save_file({"unet.conv_in.lora_A.weight": np.ones((2, 5, 3, 3), np.float32),
               "unet.conv_in.lora_B.weight": np.ones((999, 2, 1, 1), np.float32)}, str(tmp_path / "other.safetensors"))
    cases = [(tmp_path / "text.safetensors", "not a safetensors file"), (tmp_path / "empty.safetensors", "empty LoRA"),
             (tmp_path / "nothing.safetensors", "adapts no layer"), (tmp_path / "other.safetensors", "another architecture"),
             (tmp_path / "missing.safetensors", "does not exist")]
    for path, words in cases:
        with pytest.raises(LoraError, match=words):
            Pipeline.from_folder(onnx, provider="cpu", loras=[(path, 1.0)])
    with pytest.raises(LoraError, match="finite number"):
        Pipeline.from_folder(onnx, provider="cpu", loras=[(first, "strong")])
    assert Lora.parse("style.safetensors:0.5") == Lora(Path("style.safetensors"), 0.5)
    assert Lora.parse("C:/loras/style.safetensors") == Lora(Path("C:/loras/style.safetensors"), 1.0)


def test_a_folder_without_a_weight_map_is_refused_with_the_fix(lora_setup, tmp_path):
    _, onnx, first, _, _ = lora_setup
    copy = tmp_path / "no-map"
    shutil.copytree(onnx, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["components"].values():
        entry.pop("weights", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LoraError, match="no weight map.*latentrt export"):
        Pipeline.from_folder(copy, provider="cpu", loras=[(first, 1.0)])


def test_cli_lora(lora_setup, tmp_path):
    from typer.testing import CliRunner

    from latentrt.cli import app

    _, onnx, first, _, _ = lora_setup
    args = ["generate", PROMPT, "-m", str(onnx), "--seed", "3", "--steps", "4", "--provider", "cpu", "--no-cache"]
    plain = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "plain.png")])
    adapted = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "lora.png"), "--lora", f"{first}:0.8"])
    assert plain.exit_code == 0 and adapted.exit_code == 0, adapted.output
    assert "LoRA: 72 layers adapted" in adapted.output
    from PIL import Image

    a, b = (np.asarray(Image.open(tmp_path / name)) for name in ("plain.png", "lora.png"))
    assert image_psnr(a, b) < 30
    bad = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "x.png"), "--lora", f"{tmp_path / 'none.safetensors'}"])
    assert bad.exit_code == 2 and "does not exist" in bad.output and not (tmp_path / "x.png").exists()
