"""A real, trained LoRA on the shipped shapes model (issue 14): training/shapes/loras/red-to-blue.safetensors,
made by `python -m training.shapes.lora train`, turns red shapes blue at scale 1 and changes nothing at scale 0
(the measurement, on many more prompts and at scale 0.5 too, is training/shapes/results/lora.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latentrt import Pipeline
from training.shapes.dataset import parse_caption
from training.shapes.judge import judge
from training.shapes.lora import lora_split

LORA = Path(__file__).resolve().parents[1] / "training" / "shapes" / "loras" / "red-to-blue.safetensors"
# red prompts the LoRA never trained on (lora_split()["eval"])
PROMPTS = ("a red circle at the middle left on a white background", "a red square at the top center on a white background",
           "a red triangle at the top left on a black background")
SEEDS = (0, 1, 2)


def images(pipe: Pipeline) -> list[np.ndarray]:
    return [pipe(p, seed=s).arrays[0] for p in PROMPTS for s in SEEDS]


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_red_to_blue_lora(provider):
    if provider == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra")
    assert set(PROMPTS) <= {a.caption for a in lora_split()["eval"]}
    assert LORA.stat().st_size < 1_000_000
    with Pipeline.default(provider=provider, precision="fp32", use_cache=False) as pipe:
        plain = images(pipe)
        assert [judge(im).color for im in plain].count("red") >= len(plain) - 1  # the base model draws red
        pipe.set_loras([(LORA, 0.0)])
        assert pipe.lora_report == {"layers": 40, "unmatched": 0, "examples": []}  # every layer of the LoRA found
        zero = images(pipe)
        pipe.set_loras([(LORA, 1.0)])
        full = images(pipe)
    for a, b in zip(plain, zero):
        np.testing.assert_array_equal(a, b)  # scale 0: the no-LoRA image
    colors = [judge(im).color for im in full]
    assert colors.count("blue") >= len(full) - 2, colors  # scale 1: judged blue for most seeds
    rest = [all(m for k, m in judge(im).matches(parse_caption(p)).items() if k != "color")
            for p, im in zip([p for p in PROMPTS for _ in SEEDS], full)]
    assert sum(rest) >= len(rest) - 2, rest  # shape, position and background stay right
