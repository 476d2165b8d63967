"""``add_noise`` (img2img's starting latents) and ``set_begin_index`` of every scheduler against diffusers'.

Each scheduler is compared with its diffusers class on SD 1.5's config at 10 steps, at the timesteps img2img
starts from at strengths 0.3 / 0.6 / 1.0, with and without ``set_begin_index``, for a batch of 2 with one
timestep per sample, after a first step (inpainting's re-noising), and over a whole img2img run.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from test_schedulers import SD15, STOCHASTIC, fake_unet, reference_scheduler, rel_err  # noqa: E402

from latentrt.runtime.schedulers import available_schedulers, create_scheduler  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
    pytest.mark.filterwarnings("ignore::FutureWarning:diffusers"),
]

TOL = 1e-6
STEPS = 10
STRENGTHS = (0.3, 0.6, 1.0)
SHAPE = (2, 4, 8, 8)


def latents(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE, dtype=np.float32)


def t_start(sched, strength: float, steps: int = STEPS) -> int:
    """The position img2img starts at: diffusers' ``StableDiffusionImg2ImgPipeline.get_timesteps``."""
    init_timestep = min(int(steps * strength), steps)
    return max(steps - init_timestep, 0) * sched.order


def pair(name: str, steps: int = STEPS):
    ours, ref = create_scheduler(name, SD15), reference_scheduler(name, SD15)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    assert ours.order == ref.order
    return ours, ref


def check(ours, ref, x0: np.ndarray, noise: np.ndarray, ts: np.ndarray) -> None:
    got = ours.add_noise(x0, noise, ts)
    expected = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(ts)).numpy()
    assert got.dtype == np.float32 and got.shape == x0.shape
    err = rel_err(got, expected)
    assert err < TOL, f"{ours.name} at {ts}: relative error {err:.2e}"


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("name", available_schedulers())
def test_img2img_start_matches_diffusers(name: str, strength: float) -> None:
    ours, ref = pair(name)
    assert hasattr(ours, "set_begin_index") == hasattr(ref, "set_begin_index")
    i = t_start(ours, strength)
    ts = ours.timesteps[i : i + 1].repeat(2)  # img2img: timesteps[:1].repeat(batch)
    check(ours, ref, latents(1), latents(2), ts)  # looked up (no begin index)
    if hasattr(ref, "set_begin_index"):
        ours.set_begin_index(i)
        ref.set_begin_index(i)
        check(ours, ref, latents(1), latents(2), ts)


@pytest.mark.parametrize("name", available_schedulers())
def test_per_sample_timesteps_match_diffusers(name: str) -> None:
    ours, ref = pair(name)
    n = len(ours.timesteps)
    check(ours, ref, latents(3), latents(4), ours.timesteps[[0, n // 2]])
    check(ours, ref, latents(3), latents(4), ours.timesteps[[n - 1, 1]])


# dpm++2m-karras at 50 steps: rounded timesteps ..., 2, 1, 1, 0, and strength 0.06 starts at the first 1, where
# a lookup would take the second: only set_begin_index starts the run at the right position
RUNS = [(n, STEPS, 0.6) for n in available_schedulers() if n not in STOCHASTIC] + [("dpm++2m-karras", 50, 0.06)]


@pytest.mark.parametrize(("name", "steps", "strength"), RUNS)
def test_img2img_run_and_renoise_match_diffusers(name: str, steps: int, strength: float) -> None:
    """From ``set_begin_index`` on: the noised start, one step, inpainting's re-noising, then the rest of the run."""
    ours, ref = pair(name, steps)
    i = t_start(ours, strength, steps)
    if hasattr(ref, "set_begin_index"):
        ours.set_begin_index(i)
        ref.set_begin_index(i)
    ts = ours.timesteps[i:]
    x = ours.add_noise(latents(5), latents(6), ts[:1].repeat(2))
    y = torch.from_numpy(x.copy())
    for k, t in enumerate(ts):
        x = ours.step(fake_unet(ours.scale_model_input(x, t), t), t, x)
        y_in = ref.scale_model_input(y, ref.timesteps[i + k])
        y = ref.step(torch.from_numpy(fake_unet(y_in.numpy(), float(t))), ref.timesteps[i + k], y).prev_sample
        if k == 0 and k + 1 < len(ts):
            check(ours, ref, latents(7), latents(8), ts[1:2].repeat(2))  # after a step: the current position
    err = rel_err(x, y.numpy())
    assert err < 1e-5, f"{name}: img2img run relative error {err:.2e}"


def test_begin_index_is_checked_and_cleared() -> None:
    sched = create_scheduler("euler", SD15)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.set_begin_index(0)
    sched.set_timesteps(STEPS)
    for bad in (-1, STEPS, 1.5, True):
        with pytest.raises(ValueError, match="begin_index"):
            sched.set_begin_index(bad)
    sched.set_begin_index(3)
    x0, noise = latents(1), latents(2)
    at_3 = sched.add_noise(x0, noise, sched.timesteps[0])  # begin index wins over the timestep, as in diffusers
    np.testing.assert_array_equal(at_3, x0 + noise * sched.sigmas[3])
    sched.set_timesteps(STEPS)  # clears it
    np.testing.assert_array_equal(sched.add_noise(x0, noise, sched.timesteps[0]), x0 + noise * sched.sigmas[0])
