"""The NumPy schedulers against diffusers' torch schedulers, step for step (diffusers is the reference here only).

The UNet is replaced by a fixed analytic stand-in, evaluated in NumPy on both sides, so both loops see the same
model; noise for the stochastic samplers is drawn from the same NumPy generator on both sides.
Relative error = max |ours - diffusers| / max |diffusers| over the final latents.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from latentrt.bench.systems.protocol import DIFFUSERS_SCHEDULERS  # noqa: E402
from latentrt.runtime.schedulers import available_schedulers, create_scheduler, model_timestep  # noqa: E402

# diffusers' own schedulers (the reference) trip NumPy 2 / deprecation warnings that are not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
    pytest.mark.filterwarnings("ignore::FutureWarning:diffusers"),
]

TOL = 1e-5
# Two ill-conditioned configs (zero terminal SNR: the first sigma is ~4096; squaredcos betas predicting the
# sample) amplify float32 rounding, and numpy/torch take different SIMD code paths on different CPUs: under
# 1e-5 on the Intel Xeon (AMX) this suite was written on, 6.5e-5 and 3.0e-5 on an AMD EPYC (Zen 4).
VARIANT_TOL = {"trailing-zsnr-v": 1e-4, "linspace-cos-sample": 1e-4}
ZSNR_TOL = 5e-4  # the same for any zero-terminal-SNR knob: 1.8e-4 measured on the AMD EPYC
SHAPE = (1, 4, 8, 8)
STEPS = (1, 4, 20, 50)

# Stable Diffusion 1.5's scheduler_config.json (runwayml/stable-diffusion-v1-5), as shipped
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# Stable Diffusion 2.1 (768, v-prediction)'s scheduler_config.json (stabilityai/stable-diffusion-2-1), as shipped
SD21 = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
CONFIGS = {"sd15": SD15, "sd21-v": SD21}

# short name -> (diffusers class, from_config overrides that the name implies): the benchmark's table,
# plus the two stochastic samplers the benchmark does not offer
REFERENCE: dict[str, tuple[str, dict[str, Any]]] = {
    **DIFFUSERS_SCHEDULERS,
    "dpm++2m-sde-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "lcm": ("LCMScheduler", {}),
}
STOCHASTIC = {"ddpm", "euler-a", "dpm++2m-sde-karras", "lcm"}
# diffusers module whose randn_tensor draws the stochastic samplers' noise
NOISE_MODULES = {
    "DDPMScheduler": "diffusers.schedulers.scheduling_ddpm",
    "EulerAncestralDiscreteScheduler": "diffusers.schedulers.scheduling_euler_ancestral_discrete",
    "DPMSolverMultistepScheduler": "diffusers.schedulers.scheduling_dpmsolver_multistep",
    "LCMScheduler": "diffusers.schedulers.scheduling_lcm",
}

IMPLEMENTED = available_schedulers()
DETERMINISTIC = [n for n in IMPLEMENTED if n not in STOCHASTIC]
STOCHASTIC_IMPLEMENTED = [n for n in IMPLEMENTED if n in STOCHASTIC]

_REPORT: dict[str, float] = {}  # "name/config/steps" -> relative error; dumped if LATENTRT_SCHEDULER_REPORT is set


@pytest.fixture(scope="module", autouse=True)
def _dump_report():
    yield
    path = os.environ.get("LATENTRT_SCHEDULER_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(_REPORT, f, indent=1, sort_keys=True)


def fake_unet(x: np.ndarray, t: float) -> np.ndarray:
    """The stand-in for the UNet: ``0.2 * x * cos(t / 300) + 0.05``, float32 in, float32 out."""
    return (x * np.float32(0.2 * np.cos(float(t) / 300.0)) + np.float32(0.05)).astype(np.float32)


def start_latents(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE, dtype=np.float32)


def reference_scheduler(name: str, config: dict[str, Any]):
    """diffusers' scheduler for a short name, or for a diffusers class name (then with no overrides)."""
    cls_name, overrides = REFERENCE[name] if name in REFERENCE else (name, {})
    if cls_name == "LMSDiscreteScheduler":
        pytest.importorskip("scipy", reason="diffusers' LMSDiscreteScheduler (the reference) needs scipy")
    return getattr(diffusers, cls_name).from_config(config, **overrides)


def run_ours(sched, steps: int, x0: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    sched.set_timesteps(steps)
    x = x0 * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = fake_unet(sched.scale_model_input(x, t), t)
        x = sched.step(eps, t, x, rng)
    return x


def run_diffusers(sched, steps: int, x0: np.ndarray, noise_rng: np.random.Generator | None = None) -> np.ndarray:
    """diffusers' loop; with ``noise_rng``, the scheduler's ``randn_tensor`` draws float32 noise from it instead."""
    mp = pytest.MonkeyPatch()
    if noise_rng is not None:
        module = NOISE_MODULES[type(sched).__name__]

        def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
            return torch.from_numpy(noise_rng.standard_normal(tuple(shape), dtype=np.float32)).to(dtype)

        mp.setattr(f"{module}.randn_tensor", randn_tensor)
    try:
        sched.set_timesteps(steps)
        x = torch.from_numpy(x0.copy()) * sched.init_noise_sigma
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            eps = torch.from_numpy(fake_unet(x_in.numpy(), float(t)))
            x = sched.step(eps, t, x).prev_sample
    finally:
        mp.undo()
    return x.numpy()


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


# --- parity with diffusers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_matches_diffusers(name: str, config_name: str) -> None:
    config = CONFIGS[config_name]
    ours = create_scheduler(name, config)
    ref = reference_scheduler(name, config)
    x0 = start_latents()
    for steps in STEPS + ((3, 7) if name == "heun" else ()):
        out = run_ours(ours, steps, x0)
        expected = run_diffusers(ref, steps, x0)
        ts_ref = ref.timesteps.numpy()
        assert ours.timesteps.dtype == ts_ref.dtype, (steps, ours.timesteps.dtype, ts_ref.dtype)
        np.testing.assert_array_equal(ours.timesteps, ts_ref, err_msg=f"{name} {steps} steps")
        assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
        assert out.dtype == np.float32 and out.shape == SHAPE
        err = rel_err(out, expected)
        _REPORT[f"{name}/{config_name}/{steps}"] = err
        assert err < TOL, f"{name} {config_name} {steps} steps: relative error {err:.2e}"


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("name", STOCHASTIC_IMPLEMENTED)
def test_stochastic_matches_diffusers_with_same_noise(name: str, config_name: str) -> None:
    config = CONFIGS[config_name]
    ours = create_scheduler(name, config)
    ref = reference_scheduler(name, config)
    x0 = start_latents()
    for steps in STEPS:
        out = run_ours(ours, steps, x0, np.random.default_rng(1234))
        expected = run_diffusers(ref, steps, x0, noise_rng=np.random.default_rng(1234))
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
        assert ours.timesteps.dtype == ref.timesteps.numpy().dtype
        err = rel_err(out, expected)
        _REPORT[f"{name}/{config_name}/{steps}"] = err
        assert err < TOL, f"{name} {config_name} {steps} steps: relative error {err:.2e}"


@pytest.mark.parametrize("name", STOCHASTIC_IMPLEMENTED)
def test_stochastic_seed_reproducible(name: str) -> None:
    sched = create_scheduler(name, SD15)
    x0 = start_latents()
    a = run_ours(sched, 8, x0, np.random.default_rng(7))
    b = run_ours(sched, 8, x0, np.random.default_rng(7))
    c = run_ours(sched, 8, x0, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", STOCHASTIC_IMPLEMENTED)
def test_stochastic_needs_generator(name: str) -> None:
    sched = create_scheduler(name, SD15)
    sched.set_timesteps(4)
    x = start_latents()
    t = sched.timesteps[0]
    with pytest.raises(ValueError, match="np.random.Generator"):
        sched.step(fake_unet(x, t), t, x)


# Configs that exercise the keys the schedulers honour, beyond the two Stable Diffusion ones.
VARIANTS = {
    "trailing-zsnr-v": {**SD21, "timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "steps_offset": 0},
    "linspace-cos-sample": {
        "_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace",
        "prediction_type": "sample", "clip_sample": True, "set_alpha_to_one": True,
    },
    "prk-alpha-one": {**SD15, "skip_prk_steps": False, "set_alpha_to_one": True},
    "linear-trained-betas": {
        "_class_name": "DDIMScheduler", "trained_betas": np.linspace(1e-4, 0.02, 1000).tolist(),
        "clip_sample": False, "timestep_spacing": "leading", "steps_offset": 1, "thresholding": True,
    },
}


def _supports(name: str, config: dict[str, Any]) -> bool:
    """Whether diffusers' class for ``name`` takes this config at all (some refuse 'sample' or zero SNR)."""
    try:
        sched = reference_scheduler(name, config)
        sched.set_timesteps(4)
    except (ValueError, NotImplementedError):
        return False
    if config.get("prediction_type") == "sample" and name in ("pndm", "euler-a"):
        return False
    return True


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", IMPLEMENTED)
def test_config_variants_match_diffusers(name: str, variant: str) -> None:
    config = VARIANTS[variant]
    if not _supports(name, config):
        with pytest.raises(ValueError):
            run_ours(create_scheduler(name, config), 4, start_latents(), np.random.default_rng(0))
        return
    ours = create_scheduler(name, config)
    ref = reference_scheduler(name, config)
    x0 = start_latents()
    for steps in (4, 25):
        rng_a, rng_b = (np.random.default_rng(5), np.random.default_rng(5)) if name in STOCHASTIC else (None, None)
        out = run_ours(ours, steps, x0, rng_a)
        try:
            expected = run_diffusers(ref, steps, x0, noise_rng=rng_b)
        except IndexError:
            # diffusers' second-match rule on a repeated first (rounded Karras) timestep skips a step and runs off
            # the end of its sigmas; latentrt starts at position 0 instead (documented in IndexedScheduler)
            assert ours.timesteps[0] == ours.timesteps[1] and np.isfinite(out).all()
            continue
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
        if np.isfinite(expected).all():
            err = rel_err(out, expected)
            _REPORT[f"{name}/{variant}/{steps}"] = err
            assert err < VARIANT_TOL.get(variant, TOL), f"{name} {variant} {steps} steps: relative error {err:.2e}"


# Every other key the schedulers honour, one at a time on top of SD 1.5's config (built by diffusers class name,
# so that the short names' overrides do not hide them).
KNOBS: list[tuple[str, dict[str, Any]]] = [
    ("DDIMScheduler", {"timestep_spacing": "trailing"}),  # t - T // n off the schedule, as diffusers
    ("DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": True, "clip_sample_range": 0.5}),
    ("DDPMScheduler", {"variance_type": "fixed_large"}),
    ("DDPMScheduler", {"variance_type": "fixed_small_log", "beta_schedule": "sigmoid"}),
    ("DDPMScheduler", {"beta_schedule": "laplace", "timestep_spacing": "trailing"}),
    ("DDPMScheduler", {"variance_type": None}),  # what a DPM-Solver folder's config carries
    ("PNDMScheduler", {"timestep_spacing": "linspace"}),
    ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    ("LMSDiscreteScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "leading"}),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0}),
    ("EulerDiscreteScheduler", {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"}),
    ("EulerDiscreteScheduler", {"timestep_type": "continuous", "prediction_type": "v_prediction"}),
    ("EulerDiscreteScheduler", {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}),
    ("EulerDiscreteScheduler", {"interpolation_type": "log_linear"}),
    ("EulerDiscreteScheduler", {"interpolation_type": "log_linear", "use_karras_sigmas": True}),
    ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "leading"}),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    ("HeunDiscreteScheduler", {"beta_schedule": "exp", "clip_sample": True, "prediction_type": "sample"}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverMultistepScheduler", {"solver_type": "heun", "lower_order_final": False}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}),
    ("DPMSolverMultistepScheduler", {"euler_at_final": True, "final_sigmas_type": "sigma_min"}),
    ("DPMSolverMultistepScheduler", {"lambda_min_clipped": -5.1, "timestep_spacing": "leading"}),
    ("DPMSolverMultistepScheduler", {"use_lu_lambdas": True, "variance_type": "fixed_small"}),  # DDPM folder
    ("DPMSolverMultistepScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "trailing"}),
    ("DPMSolverMultistepScheduler", {"thresholding": True, "prediction_type": "sample", "sample_max_value": 2.0}),
    ("DPMSolverMultistepScheduler", {"solver_type": "bh2", "algorithm_type": "deis", "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {"solver_order": 3}),
    ("UniPCMultistepScheduler", {"solver_type": "bh1", "disable_corrector": [0, 2], "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {"predict_x0": False, "solver_order": 3, "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "sigma_min": 0.05}),
    (
        "UniPCMultistepScheduler",
        {"use_exponential_sigmas": True, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    ),
    ("UniPCMultistepScheduler", {"thresholding": True, "timestep_spacing": "leading", "solver_type": "midpoint"}),
    ("LCMScheduler", {"original_inference_steps": 30, "timestep_scaling": 5.0}),
    ("LCMScheduler", {"set_alpha_to_one": False, "prediction_type": "v_prediction", "clip_sample": True}),
]


@pytest.mark.parametrize("cls_name, overrides", KNOBS, ids=[f"{c}-{'-'.join(o)}" for c, o in KNOBS])
def test_config_knobs_match_diffusers(cls_name: str, overrides: dict[str, Any]) -> None:
    config = {**SD15, **overrides}
    ours = create_scheduler(cls_name, config)
    ref = reference_scheduler(cls_name, config)
    x0 = start_latents()
    for steps in (3, 25):
        seeds = (np.random.default_rng(9), np.random.default_rng(9)) if ours.stochastic else (None, None)
        out = run_ours(ours, steps, x0, seeds[0])
        expected = run_diffusers(ref, steps, x0, noise_rng=seeds[1])
        assert ours.timesteps.dtype == ref.timesteps.numpy().dtype
        # exact, except Euler's 0.25 * log(sigma) timesteps, where torch's float32 log may differ in the last bit
        # (atol: those timesteps cross zero, where a last-bit difference is a large relative one)
        np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=1e-6, atol=1e-6)
        assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
        err = rel_err(out, expected)
        _REPORT[f"{cls_name}/{'+'.join(overrides)}/{steps}"] = err
        tol = ZSNR_TOL if overrides.get("rescale_betas_zero_snr") else TOL
        assert err < tol, f"{cls_name} {overrides} {steps} steps: relative error {err:.2e}"


@pytest.mark.parametrize("folder_class", sorted({c for c, _ in REFERENCE.values()}))
def test_every_name_from_every_folder_class(folder_class: str) -> None:
    """A folder saved with any scheduler class (its full config, every key written), run with every name: keys
    that several classes share with different meanings (``solver_type``, ``variance_type``...) behave as in
    diffusers' ``from_config``."""
    if folder_class == "LMSDiscreteScheduler":
        pytest.importorskip("scipy", reason="diffusers' LMSDiscreteScheduler (the reference) needs scipy")
    sd = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    config = json.loads(getattr(diffusers, folder_class)(**sd).to_json_string())
    for name in IMPLEMENTED:
        ours = create_scheduler(name, config)
        seeds = (np.random.default_rng(2), np.random.default_rng(2)) if ours.stochastic else (None, None)
        out = run_ours(ours, 5, start_latents(), seeds[0])
        expected = run_diffusers(reference_scheduler(name, config), 5, start_latents(), noise_rng=seeds[1])
        err = rel_err(out, expected)
        assert err < TOL, f"{name} from a {folder_class} folder: relative error {err:.2e}"


# --- the config contract -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", IMPLEMENTED)
def test_config_declares_every_key_of_the_diffusers_class(name: str) -> None:
    """Each key diffusers' class reads is declared with diffusers' default: honoured or rejected, never ignored."""
    cls_name, _ = REFERENCE[name]
    if cls_name == "LMSDiscreteScheduler":
        pytest.importorskip("scipy", reason="diffusers' LMSDiscreteScheduler (the reference) needs scipy")
    params = inspect.signature(getattr(diffusers, cls_name).__init__).parameters
    theirs = {k: p.default for k, p in params.items() if k != "self"}
    ours = {f.name: f.default for f in dataclasses.fields(create_scheduler(name, SD15).config_class)}
    assert set(ours) == set(theirs)
    for key, default in theirs.items():
        assert ours[key] == (tuple(default) if isinstance(default, list) else default), key


def test_folder_scheduler_resolved_from_class_name() -> None:
    assert create_scheduler(None, SD15).name == "pndm"
    assert create_scheduler(None, SD21).name == "ddim"
    assert create_scheduler(None, {**SD15, "_class_name": "EulerDiscreteScheduler"}).name == "euler"


def test_class_names_are_aliases_case_insensitive() -> None:
    assert create_scheduler("eulerdiscretescheduler", SD15).name == "euler"
    assert create_scheduler("PNDMScheduler", SD21).name == "pndm"


def test_foreign_keys_are_ignored_private_keys_too() -> None:
    """Keys of other classes (PNDM's skip_prk_steps, set_alpha_to_one), private and unknown keys change nothing: the
    scheduler equals the one built from Euler's own keys alone, in its config and in what its steps compute."""
    sched = create_scheduler("euler", {**SD15, "skip_prk_steps": False, "_diffusers_version": "9.9", "foo": 1})
    own = {f.name for f in dataclasses.fields(sched.config_class)}
    assert not {"skip_prk_steps", "set_alpha_to_one", "foo"} & own  # the keys above are foreign to Euler
    plain = create_scheduler("euler", {k: v for k, v in SD15.items() if k in own})
    assert sched.config == plain.config
    # exact: equal configs make the very same NumPy computation, whatever the CPU
    np.testing.assert_array_equal(run_ours(sched, 4, start_latents()), run_ours(plain, 4, start_latents()))


def test_dpm_names_follow_the_config() -> None:
    dpm = {**SD15, "_class_name": "DPMSolverMultistepScheduler"}
    assert create_scheduler(None, dpm).name == "dpm++2m"
    assert create_scheduler(None, {**dpm, "use_karras_sigmas": True}).name == "dpm++2m-karras"
    sde = {**dpm, "use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}
    assert create_scheduler(None, sde).name == "dpm++2m-sde-karras"
    assert create_scheduler(None, sde).stochastic
    assert create_scheduler(None, {**dpm, "solver_order": 3}).name == "dpm++3m"
    # a short name sets what it names, whatever the folder's config says
    plain = create_scheduler("dpm++2m", {**sde, "solver_order": 3})
    assert plain.name == "dpm++2m" and not plain.stochastic and plain.config.solver_order == 2


def test_order_is_unet_calls_per_step() -> None:
    orders = {name: create_scheduler(name, SD15).order for name in IMPLEMENTED}
    assert orders["heun"] == 2 and all(o == 1 for n, o in orders.items() if n != "heun")
    heun = create_scheduler("heun", SD15)
    heun.set_timesteps(10)
    assert len(heun.timesteps) == 19


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("euler", "use_beta_sigmas", True),
        ("euler", "interpolation_type", "cubic"),
        ("euler", "use_exponential_sigmas", True),  # together with karras below
        ("ddpm", "variance_type", "learned_range"),
        ("DPMSolverMultistepScheduler", "algorithm_type", "dpmsolver"),
        ("DPMSolverMultistepScheduler", "variance_type", "learned"),
        ("DPMSolverMultistepScheduler", "use_flow_sigmas", True),
        ("DPMSolverMultistepScheduler", "solver_order", 4),
        ("unipc", "solver_p", "DDIMScheduler"),
        ("unipc", "shift_terminal", 0.5),
        ("unipc", "use_dynamic_shifting", True),
        ("unipc", "solver_type", "bh1"),  # NaN in diffusers with the final sigma 0
        ("unipc", "predict_x0", False),
        ("unipc", "lower_order_final", False),
        ("DPMSolverMultistepScheduler", "algorithm_type", "deis"),  # diffusers too, with final sigma 0
        ("pndm", "prediction_type", "sample"),
        ("euler-a", "prediction_type", "sample"),
        ("ddim", "clip_sample", "yes"),
    ],
)
def test_values_that_cannot_be_honoured_are_rejected(name: str, key: str, value: Any) -> None:
    config = {**SD15, key: value}
    if key == "use_exponential_sigmas":
        config["use_karras_sigmas"] = True
    with pytest.raises(ValueError, match=key if key != "use_exponential_sigmas" else "use_karras_sigmas"):
        create_scheduler(name, config)


def test_too_many_steps() -> None:
    with pytest.raises(ValueError, match="num_train_timesteps"):
        create_scheduler("ddim", SD15).set_timesteps(1001)
    with pytest.raises(ValueError, match="original_inference_steps"):
        create_scheduler("lcm", SD15).set_timesteps(51)


def test_timestep_not_in_schedule() -> None:
    sched = create_scheduler("euler", SD15)
    sched.set_timesteps(4)
    x = start_latents()
    with pytest.raises(ValueError, match="not one of scheduler.timesteps"):
        sched.step(x, 123.5, x)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ValueError, match="available: .*euler"):
        create_scheduler("k_euler_magic", SD15)


def test_unknown_folder_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="KarrasVeScheduler"):
        create_scheduler(None, {**SD15, "_class_name": "KarrasVeScheduler"})


@pytest.mark.parametrize(
    "key, value",
    [
        ("beta_schedule", "cubic"),
        ("prediction_type", "x0"),
        ("timestep_spacing", "random"),
        ("steps_offset", -1),
        ("num_train_timesteps", 0),
        ("trained_betas", [0.1, 0.2]),
    ],
)
@pytest.mark.parametrize("name", IMPLEMENTED)
def test_bad_config_value_is_a_clear_error(name: str, key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=key):
        create_scheduler(name, {**SD15, key: value})


@pytest.mark.parametrize("name", IMPLEMENTED)
def test_step_before_set_timesteps_raises(name: str) -> None:
    sched = create_scheduler(name, SD15)
    x = start_latents()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(x, 999, x, np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.timesteps  # noqa: B018


@pytest.mark.parametrize("name", IMPLEMENTED)
def test_bad_step_counts(name: str) -> None:
    sched = create_scheduler(name, SD15)
    for n in (0, -3):
        with pytest.raises(ValueError, match="num_inference_steps"):
            sched.set_timesteps(n)


@pytest.mark.parametrize("name", IMPLEMENTED)
def test_dtype_kept_and_float16_runs(name: str) -> None:
    sched = create_scheduler(name, SD15)
    out = run_ours(sched, 5, start_latents().astype(np.float16), np.random.default_rng(0))
    assert out.dtype == np.float16 and np.isfinite(out).all()


@pytest.mark.parametrize("name", IMPLEMENTED)
def test_set_timesteps_resets_the_run(name: str) -> None:
    """One scheduler object, two runs (different lengths in between): the second run equals a fresh one."""
    sched = create_scheduler(name, SD21)
    first = run_ours(sched, 6, start_latents(), np.random.default_rng(3))
    run_ours(sched, 3, start_latents(4), np.random.default_rng(4))
    again = run_ours(sched, 6, start_latents(), np.random.default_rng(3))
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("name", IMPLEMENTED)
def test_add_noise_matches_diffusers(name: str) -> None:
    ours, ref = create_scheduler(name, SD15), reference_scheduler(name, SD15)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    x0, noise = start_latents(1), start_latents(2)
    t = ours.timesteps[3]
    expected = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), ref.timesteps[3:4]).numpy()
    np.testing.assert_allclose(ours.add_noise(x0, noise, t), expected, rtol=1e-6, atol=1e-6)


def test_model_timestep_keeps_the_graph_dtype() -> None:
    karras = create_scheduler("dpm++2m-karras", SD15)
    karras.set_timesteps(4)
    assert karras.timesteps.dtype == np.int64  # Karras sigmas, but rounded integer timesteps (diffusers)
    for sched_name, dtype in (("euler", np.float32), ("ddim", np.int64), ("heun", np.float32), ("unipc", np.int64)):
        sched = create_scheduler(sched_name, SD15)
        sched.set_timesteps(7)
        assert sched.timesteps.dtype == dtype, sched_name
    frac = np.float32(657.6)
    np.testing.assert_array_equal(model_timestep(frac, np.float32, (2,)), np.array([frac, frac], dtype=np.float32))
    np.testing.assert_array_equal(model_timestep(frac, "int64", (2,)), np.array([658, 658], dtype=np.int64))
    assert model_timestep(np.int64(981), np.float16).dtype == np.float16
    assert model_timestep(np.int64(981), np.int32).shape == ()


def test_runtime_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import latentrt.runtime.schedulers as s; "
        "s.create_scheduler('euler', {}).set_timesteps(3); "
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
