"""`latentrt generate --control`: the images the Python API gives for the same arguments, the control map saved
beside the output when a preprocessor ran, and bad input refused with exit 2 and a message that says the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from controlnet_models import tiny_sd1_controlnet  # noqa: F401  (the session fixture)
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from latentrt import Pipeline
from latentrt.cli import app, parse_control, parse_controls
from latentrt.runtime.control_preprocess import canny

runner = CliRunner()
PROMPT = "a house in the woods"


@pytest.fixture(scope="module")
def folder(tiny_sd1_controlnet) -> Path:  # noqa: F811
    return tiny_sd1_controlnet[1]


@pytest.fixture(scope="module")
def pipe(folder):
    with Pipeline.from_folder(folder, provider="cpu") as pipeline:
        yield pipeline


def photo(path: Path, seed: int = 0) -> Path:
    """A 64x64 picture with shapes (edges for canny to find), the tiny model's native size."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (64, 64), (30, 60, 90))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(0, 40, 2))
        draw.rectangle((x, y, x + 20, y + 16), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image.save(path)
    return path


def generate(folder: Path, out: Path, *options: str):
    args = ["generate", PROMPT, "-m", str(folder), "-o", str(out), "--steps", "3", "--seed", "5", "--provider", "cpu", *options]
    return runner.invoke(app, args)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_control_with_canny_gives_the_pipelines_image_and_saves_the_map(folder, pipe, tmp_path):
    source = photo(tmp_path / "photo.png")
    out = tmp_path / "house.png"
    result = generate(folder, out, "--control", f"canny={source}:0.8", "--preprocess", "canny",
                      "--canny-low", "50", "--canny-high", "150", "--control-end", "0.7")
    assert result.exit_code == 0, result.output
    expected = pipe(PROMPT, steps=3, seed=5, control_image=Image.open(source), controlnet="canny",
                    controlnet_conditioning_scale=0.8, control_preprocess="canny", canny_low_threshold=50,
                    canny_high_threshold=150, control_guidance_end=0.7)
    # exact on every CPU kind: the CLI runs in this process, on the same folder, backend and request
    assert np.array_equal(pixels(out), expected.arrays[0])
    plain = pipe(PROMPT, steps=3, seed=5)
    assert not np.array_equal(pixels(out), plain.arrays[0])  # the ControlNet changed the image
    control_map = tmp_path / "house.control-canny.png"
    assert control_map.is_file() and str(control_map) in result.output.replace("\n", "")
    assert f"{out}  (seed 5, " in result.output.replace("\n", "")  # the image's own line too
    assert np.array_equal(pixels(control_map), np.asarray(canny(Image.open(source), 50, 150)))
    with Image.open(out) as image:  # what conditioned it is in the PNG's parameters
        assert "canny" in image.text["parameters"]


def test_two_controlnets_by_name_and_no_map_without_a_preprocessor(folder, pipe, tmp_path):
    edges, depth = photo(tmp_path / "edges.png", 1), photo(tmp_path / "depth.png", 2)
    out = tmp_path / "two.png"
    result = generate(folder, out, "--control", f"canny={edges}:0.5", "--control", f"depth={depth}", "--guess-mode",
                      "--control-start", "0.2")
    assert result.exit_code == 0, result.output
    expected = pipe(PROMPT, steps=3, seed=5, controlnet=["canny", "depth"],
                    control_image=[Image.open(edges), Image.open(depth)], controlnet_conditioning_scale=[0.5, 1.0],
                    guess_mode=True, control_guidance_start=0.2)
    assert np.array_equal(pixels(out), expected.arrays[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.png", "edges.png", "two.png"]


@pytest.mark.parametrize("options, message", [
    (["--control", "sketch={image}"], "unknown ControlNet 'sketch': this folder has canny, depth"),
    (["--control", "{image}"], "this folder has 2 ControlNets (canny, depth): say which"),
    (["--control", "canny={image}", "--control", "{image}:0.5"], "with several --control, name the ControlNet of each"),
    (["--control", "canny={image}:nan"], "the scale must be a finite number"),
    (["--control", "canny={image}", "--preprocess", "depthmap"], "unknown preprocessor 'depthmap': use one of none, canny"),
    (["--control", "canny={image}", "--control", "depth={image}", "--preprocess", "canny", "--preprocess", "none",
      "--preprocess", "canny"], "--preprocess is given 3 times for 2 --control"),
    (["--control", "canny={image}", "--control-start", "0.6", "--control-end", "0.4"],
     "control_guidance_start must be below control_guidance_end"),
    (["--control", "canny={image}", "--control-end", "1.5"], "control_guidance_end must be a fraction of the steps in [0, 1]"),
    (["--control", "canny={missing}"], "does not exist"),
    (["--control", "canny={not_image}"], "is not an image file PIL can read"),
    (["--preprocess", "canny"], "apply to --control NAME=IMAGE: add one"),
])
def test_bad_control_input_exits_2_with_the_fix(folder, tmp_path, options, message):
    paths = {"image": photo(tmp_path / "p.png"), "missing": tmp_path / "nope.png", "not_image": tmp_path / "notes.txt"}
    paths["not_image"].write_text("not a picture")
    out = tmp_path / "x.png"
    result = generate(folder, out, *(o.format(**paths) for o in options))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not out.exists() and not (tmp_path / "x.control-canny.png").exists()


def test_control_on_a_folder_without_controlnets_names_the_export_flag(tiny_sd1, tmp_path):
    out = tmp_path / "x.png"
    result = generate(tiny_sd1[1], out, "--control", str(photo(tmp_path / "p.png")))
    assert result.exit_code == 2
    assert "--controlnet" in result.output and "has no ControlNet" in " ".join(result.output.split())


def test_an_existing_control_map_is_not_overwritten_without_force(folder, tmp_path):
    source = photo(tmp_path / "p.png")
    (tmp_path / "x.control-canny.png").write_bytes(b"mine")
    result = generate(folder, tmp_path / "x.png", "--control", f"canny={source}", "--preprocess", "canny")
    assert result.exit_code == 2 and "x.control-canny.png already exists" in " ".join(result.output.split())
    assert (tmp_path / "x.control-canny.png").read_bytes() == b"mine"


def test_parse_control(tmp_path):
    assert parse_control("canny=edges.png:0.8") == parse_control("canny=edges.png:.8")
    parsed = parse_control("canny=dir/edges.png:0.8")
    assert (parsed.name, parsed.image, parsed.scale) == ("canny", Path("dir/edges.png"), 0.8)
    parsed = parse_control("edges.png")
    assert (parsed.name, parsed.image, parsed.scale) == (None, Path("edges.png"), 1.0)
    parsed = parse_control("edges.png:1.5")
    assert (parsed.name, parsed.image, parsed.scale) == (None, Path("edges.png"), 1.5)
    odd = tmp_path / "a=b:2"  # a file that exists is taken whole, = and : included
    odd.write_bytes(b"")
    parsed = parse_control(str(odd))
    assert (parsed.name, parsed.image, parsed.scale) == (None, odd, 1.0)
    parsed = parse_control("canny=shot:v2.png")  # a colon not followed by a number is part of the path
    assert (parsed.name, parsed.image) == ("canny", Path("shot:v2.png"))
    both = parse_controls(["canny=a.png", "depth=b.png:0.5"], ["canny"])  # one --preprocess for all
    assert [(c.name, c.scale, c.preprocess) for c in both] == [("canny", 1.0, "canny"), ("depth", 0.5, "canny")]
