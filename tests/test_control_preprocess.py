"""Control-image preprocessors: the NumPy Canny on hand-made images whose edges are known, and against OpenCV's
cv2.Canny (the call diffusers' and AUTOMATIC1111's ControlNet examples make) on drawn, blurred, noisy scenes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from latentrt.runtime.control_preprocess import PREPROCESSORS, canny, preprocess


def edges_of(image, low=100, high=200) -> np.ndarray:
    out = canny(image, low, high)
    assert out.mode == "RGB"
    array = np.asarray(out)
    assert set(np.unique(array)) <= {0, 255}
    assert (array == array[:, :, :1]).all()  # white edges on black: the three channels are equal
    return array[:, :, 0] > 0


def step(height=32, width=32, left=0, right=255, axis=1) -> np.ndarray:
    """A grey image, `left` before the middle and `right` from it along `axis` (1: columns, 0: rows)."""
    array = np.full((height, width, 3), left, np.uint8)
    if axis == 1:
        array[:, width // 2 :] = right
    else:
        array[height // 2 :, :] = right
    return array


def test_a_vertical_step_gives_one_column_of_edge_on_its_dark_side():
    # Both columns beside the step have the same gradient; OpenCV keeps the first (strictly greater than the left
    # neighbour, at least the right one): the column just before the step, and only it.
    edges = edges_of(step())
    assert edges[:, 15].all()
    assert edges.sum() == 32


def test_a_horizontal_step_gives_one_row_of_edge():
    edges = edges_of(step(axis=0))
    assert edges[15, :].all()
    assert edges.sum() == 32


def test_a_flat_image_has_no_edges():
    assert not edges_of(np.full((20, 24, 3), 128, np.uint8)).any()


def test_a_weak_edge_is_kept_only_where_it_joins_a_strong_one():
    # Two vertical steps of contrast 40 (gradient 160: between the thresholds 100 and 200). The one at column 12 turns
    # into a contrast-80 step (gradient 320, strong) in its bottom rows; the one at column 44 stays weak everywhere.
    array = np.zeros((40, 64, 3), np.uint8)
    array[:, 12:] = 40
    array[30:, 12:24] = 80
    array[:, 44:] = 80
    edges = edges_of(array)
    assert edges[2:28, 11].all()  # weak, reached from the strong bottom rows through the column
    assert not edges[:, 40:].any()  # weak and connected to nothing strong
    assert not edges_of(array, low=170, high=200)[:28, 11].any()  # below low: not even a candidate


def test_thresholds_are_strict_floored_and_swapped_as_opencv_does():
    array = step(left=0, right=50)  # gradient exactly 200 beside the step
    assert not edges_of(array, 100, 200).any()  # strong means > high
    assert edges_of(array, 100, 199.9).any()  # high floors to 199
    assert (edges_of(array, 199, 100) == edges_of(array, 100, 199)).all()


def test_a_colour_image_keeps_the_channel_with_the_largest_gradient():
    # A blue-only step: its luminance changes by 29 levels (no edge in a greyscale conversion at 100/200), its blue
    # channel by 255.
    array = np.zeros((32, 32, 3), np.uint8)
    array[:, 16:, 2] = 255
    assert edges_of(array)[:, 15].all()


def test_inputs_sizes_and_modes():
    rgba = Image.new("RGBA", (17, 9), (10, 200, 30, 0))
    out = preprocess("none", rgba)
    assert out.mode == "RGB" and out.size == (17, 9)
    assert np.asarray(out)[0, 0].tolist() == [10, 200, 30]
    assert preprocess(None, rgba).size == (17, 9)
    grey = np.zeros((9, 17), np.uint8)
    assert preprocess("Canny", grey, low_threshold=10, high_threshold=20).size == (17, 9)
    assert preprocess("canny", Image.fromarray(step())).size == (32, 32)
    assert set(PREPROCESSORS) == {"none", "canny"}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: preprocess("depth", step()), "unknown preprocessor 'depth': use one of none, canny"),
        (lambda: canny(step(), float("nan"), 200), "low_threshold must be a finite number"),
        (lambda: canny(step(), 100, -1), "high_threshold must be >= 0"),
        (lambda: canny(step(), "100", 200), "low_threshold must be a finite number"),
        (lambda: canny("edges.png"), "a PIL image or a uint8 array, got str"),
        (lambda: canny(np.zeros((4, 4, 3), np.float32)), "must be uint8 of shape"),
    ],
)
def test_bad_input_says_what_was_wrong(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def drawn_scene(height: int, width: int, seed: int) -> np.ndarray:
    """Ellipses, boxes and lines in random colours, blurred, with Gaussian noise: edges of every direction and
    strength, and texture."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(25):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(5, width // 2)), y0 + int(rng.integers(5, height // 2)))
        shape = (draw.ellipse, draw.rectangle, draw.line)[int(rng.integers(0, 3))]
        shape(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2))))
    noise = rng.normal(0, rng.uniform(0, 12), (height, width, 3)).round()
    return np.clip(np.asarray(image).astype(np.int32) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed, size", [(0, (96, 128)), (1, (131, 77)), (2, (64, 64))])
def test_matches_opencv_canny_pixel_for_pixel(seed, size):
    cv2 = pytest.importorskip("cv2")
    scene = drawn_scene(*size, seed)
    for low, high in [(100, 200), (50, 150), (20, 60), (200, 100), (150.9, 151.2)]:
        # exact on every CPU kind: Canny with the L1 gradient is integer arithmetic (int16 Sobel sums, integer
        # magnitudes against the thresholds), in OpenCV's SIMD paths as in NumPy
        expected = cv2.Canny(scene, low, high) > 0
        assert expected.any()
        got = edges_of(scene, low, high)
        assert (got == expected).all(), f"{(~(got == expected)).sum()} pixels differ at thresholds {low}/{high}"
