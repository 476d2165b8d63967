"""Static int8 for ONNX Runtime: `latentrt quantize MODEL OUT`.

The UNet becomes a QDQ graph in the U8S8 form ONNX Runtime's CPU provider runs with integer kernels
(VNNI; AMX for MatMul): uint8 activations (asymmetric, one scale per tensor), int8 weights (symmetric,
one scale per output channel), QuantizeLinear/DequantizeLinear pairs around each quantized Conv and
MatMul that ORT fuses into QLinearConv / QLinearMatMul at load.

Activation ranges come from real UNet inputs: the folder's own latentrt pipeline (fp32, ONNX Runtime
on CPU) generates from a prompt list with classifier-free guidance (so the unconditional half of the
batch is seen), and a recording wrapper around its UNet keeps the inputs of chosen calls, spread over
the whole timestep range and over the prompts (`plan_samples`). ORT's MinMax calibrator then runs them.

Nodes that stay in float, by default (`DEFAULT_FLOAT_PARTS`, chosen by measurement; see the README's
"int8 (ONNX Runtime)"): found from the graph's structure, not from names, so that any exporter's UNet
works:

- ``conv_in``: the Conv that reads the ``sample`` input;
- ``conv_out``: the Conv whose output is the UNet's output (through shape-only ops at most);
  quantized, these two cost the most: the shipped model's worst image against fp32 falls from 43 to 19 dB,
  SD 1.5's one-call error rises from 13.5% to 16.4%;
- ``time_embedding``: every Conv/MatMul/Gemm whose input depends on ``timestep`` but not on ``sample``
  (the timestep MLP and each ResNet's time projection): quantizing it measured neutral, and gains nothing
  (Gemms on (B, C) vectors, 4 ms of a 0.7 s SD 1.5 call);
- ``text_projections`` (opt-in): MatMuls that depend only on ``encoder_hidden_states`` (the
  cross-attention keys and values).

Normalisations, SiLU, Add and ONNX Runtime's fused MultiHeadAttention are never quantized (only
``QUANTIZED_OPS`` are). Only the UNet is quantized: it is where the time goes (one call per step); the
text encoder runs once per image and the VAE decoder once. A DeepCache folder's shallow UNet (`unet_shallow`,
run on the cached steps) is quantized the same way, calibrated on the same recorded inputs with the deep feature
the fp32 UNet computes from each (`shallow_samples`).

This module needs ``onnx`` (the export extra) but not torch, diffusers or transformers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx  # the export extra: missing, the import fails here and the CLI says which extra to install
from numpy.typing import NDArray

from latentrt import __version__
from latentrt.export.folder_io import EXTERNAL_DATA_NAME, save_component_model, staged_folder
from latentrt.runtime.folder import ModelFolder, ModelFolderError, file_sha256
from latentrt.runtime.observers import NETWORK, Event

logger = logging.getLogger(__name__)

PRECISION = "int8-qdq"
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
FLOAT_PARTS = ("conv_in", "conv_out", "time_embedding", "text_projections")
DEFAULT_FLOAT_PARTS = ("conv_in", "conv_out", "time_embedding")
DEFAULT_SAMPLES = 32
DEFAULT_STEPS = 10
DEFAULT_GUIDANCE = 7.5
MAX_CALIBRATION_SIDE = 256  # calibrate at min(native size, 256): see calibration_size()
DEFAULT_SEED = 0

# Prompts of the kinds people write (subjects, scenes, styles, lighting), and the literal
# "a <colour> <shape> at the <place> on a <colour> background" kind that the shipped model understands.
DEFAULT_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a watercolor painting of a fox in a snowy forest",
    "a portrait of an old man with a beard, dramatic lighting, 85mm",
    "a cozy living room with a fireplace, interior design, warm light",
    "a futuristic city skyline at night, neon lights, rain",
    "a bowl of ramen on a wooden table, food photography",
    "a mountain lake at sunrise, mist, landscape photography",
    "an oil painting of a ship in a storm",
    "a cute robot reading a book, 3d render",
    "a red sports car on a desert road, motion blur",
    "a black and white photo of a cat sleeping on a windowsill",
    "a medieval castle on a hill, fantasy illustration",
    "a red circle at the top left on a white background",
    "a blue triangle at the bottom right on a gray background",
    "a yellow square at the middle center on a black background",
    "a green circle at the top center on a gray background",
)


class QuantizeError(ValueError):
    """The folder cannot be quantized as asked; the message says why and what to do."""


@dataclass(frozen=True)
class CalibrationSettings:
    prompts: tuple[str, ...]
    prompts_source: str  # "built-in" or the prompt file's path
    samples: int
    height: int
    width: int
    steps: int
    guidance_scale: float
    scheduler: str  # the sampler actually used (its short name)
    seed: int
    method: str = "MinMax"


@dataclass
class QuantizeReport:
    out: Path
    seconds: float = 0.0
    calibration_seconds: float = 0.0
    quantize_seconds: float = 0.0
    float_nodes: dict[str, list[str]] = field(default_factory=dict)
    quantized_nodes: dict[str, int] = field(default_factory=dict)
    check: dict[str, float] = field(default_factory=dict)  # one call, int8 vs fp32
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of the UNet's files, before and after
    shallow: dict = field(default_factory=dict)  # DeepCache's shallow UNet: float_nodes, quantized_nodes, check, sizes


# --- input checks ---------------------------------------------------------------------------------------


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line; blank lines are skipped. A missing or empty file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(f"prompt file {path} does not exist: give a text file with one prompt per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantizeError(f"cannot read prompt file {path} ({exc}): give a UTF-8 text file, one prompt per line") from exc
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise QuantizeError(f"prompt file {path} has no prompts (only blank lines): write one prompt per line")
    return prompts


def check_model(model: str | Path) -> ModelFolder:
    """MODEL must be an ONNX model folder with a float UNet."""
    model = Path(model)
    if not model.is_dir():
        raise QuantizeError(f"{model} is not a folder: give an ONNX model folder written by `latentrt export`")
    if not (model / "unet" / "model.onnx").is_file():
        raise QuantizeError(
            f"{model} has no unet/model.onnx: give an ONNX model folder written by `latentrt export` "
            "(or optimum-cli); export one with `latentrt export SRC OUT`"
        )
    try:
        folder = ModelFolder.open(model)
    except ModelFolderError as exc:
        raise QuantizeError(str(exc)) from exc
    if folder.controlnets or folder.unet_controlnet is not None:
        # the runtime runs such a folder's residual UNet (unet/model_controlnet.onnx) only; an int8 copy of the plain
        # UNet would never run, and calibrating the residual graph needs ControlNet generations: not done yet
        raise QuantizeError(
            f"{model} has ControlNets ({', '.join(folder.controlnets) or 'unet/model_controlnet.onnx'}): latentrt quantize "
            "does not quantize a ControlNet folder yet; use it in fp32 (or bf16 on OpenVINO), or quantize a folder "
            "exported without --controlnet"
        )
    unet_precision = folder.components["unet"].precision
    if "quantization" in (folder.manifest or {}) or folder.components["unet"].quantized:
        raise QuantizeError(
            f"{model} is already quantized (its manifest says {unet_precision or 'so'}): quantize the fp32 folder "
            "it was made from"
        )
    if graph_is_quantized(folder.components["unet"].model):
        raise QuantizeError(
            f"{model}'s UNet already has QuantizeLinear/DequantizeLinear nodes: quantize an fp32 export instead"
        )
    return folder


def graph_is_quantized(path: Path) -> bool:

    model = onnx.load(str(path), load_external_data=False)  # the graph only, cheap even for 3.4 GB UNets
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def calibration_size(folder: ModelFolder) -> int:
    """The side calibration runs at: the native size, at most 256.

    The quantization parameters are per tensor (activations) and per channel (weights): ranges of a
    convolutional network's activations hardly depend on the image size, while the calibration cost grows
    with its area, so SD 1.5 (native 512) calibrates at 256, four times cheaper; small models at their own size.
    """
    native = folder.unet.sample_size * folder.vae.scale_factor
    side = min(native, MAX_CALIBRATION_SIDE)
    return max(side - side % folder.size_multiple, folder.size_multiple)


# --- calibration data -------------------------------------------------------------------------------------


def plan_samples(prompts: int, calls: int, samples: int) -> dict[int, list[int]]:
    """Which UNet calls of which generation to record: ``{prompt index: [call indices]}``.

    Sample k of ``samples`` is taken at call ``round(k (calls - 1) / (samples - 1))`` (evenly over the whole
    timestep range, first and last included) of generation ``k mod prompts``, so that every prompt is used
    and each generation gives calls spread along its trajectory. Needs ``samples <= prompts * calls``.
    """
    if samples > prompts * calls:
        raise QuantizeError(
            f"{samples} samples need at least that many (prompt, step) pairs, but {prompts} prompts x {calls} "
            "UNet calls give fewer: give more prompts or more --steps, or fewer --samples"
        )
    plan: dict[int, set[int]] = {}
    for k in range(samples):
        call = 0 if samples == 1 else round(k * (calls - 1) / (samples - 1))
        prompt = k % prompts
        while call in plan.get(prompt, set()):  # taken: the next prompt that lacks this call
            prompt = (prompt + 1) % prompts
        plan.setdefault(prompt, set()).add(call)
    return {p: sorted(c) for p, c in sorted(plan.items())}


class _Enough(Exception):
    """Raised by the recorder after a generation's last wanted call: the rest is not needed."""


class _UNetRecorder:
    """A pipeline observer: keeps copies of the inputs of the wanted UNet calls of a generation (their indices)."""

    def __init__(self):
        self.wanted: list[int] = []
        self.calls = 0
        self.kept: list[dict[str, NDArray]] = []

    def start(self, wanted: list[int]) -> None:
        self.wanted, self.calls = wanted, 0

    def __call__(self, event: Event) -> None:
        if event.kind != NETWORK or event.name != "unet":
            return
        index = self.calls
        self.calls += 1
        if index in self.wanted:
            self.kept.append({k: np.array(v, copy=True) for k, v in event.inputs.items()})
            if index == self.wanted[-1]:
                raise _Enough


def gather_samples(folder: ModelFolder, settings: CalibrationSettings, report: Callable[[str], None]) -> list[dict]:
    """Run the folder's own pipeline (fp32, ONNX Runtime CPU) and return the chosen UNet inputs."""
    from latentrt.runtime.pipeline import Pipeline
    from latentrt.runtime.schedulers import create_scheduler

    sampler = create_scheduler(settings.scheduler, folder.scheduler_config)
    sampler.set_timesteps(settings.steps)
    calls = len(sampler.timesteps)  # the pipeline calls the UNet once per entry (Heun's repeat)
    plan = plan_samples(len(settings.prompts), calls, settings.samples)
    pipe = Pipeline.from_folder(folder.path, provider="cpu")
    recorder = _UNetRecorder()
    with _quiet_truncation(), pipe.observe(recorder):
        for done, (index, wanted) in enumerate(plan.items()):
            recorder.start(wanted)
            try:
                pipe(settings.prompts[index], height=settings.height, width=settings.width, steps=settings.steps,
                     guidance_scale=settings.guidance_scale, scheduler=settings.scheduler,
                     seed=settings.seed * 100_000 + index)
            except _Enough:
                pass
            report(f"calibration: generation {done + 1}/{len(plan)}, {len(recorder.kept)} samples")
    kept = recorder.kept
    del pipe, recorder  # the fp32 sessions' memory, before the quantizer loads its copies
    if len(kept) != settings.samples:
        raise RuntimeError(f"calibration recorded {len(kept)} UNet inputs instead of {settings.samples}")
    return kept


def shallow_samples(folder: ModelFolder, samples: list[dict]) -> list[dict]:
    """DeepCache's shallow UNet's calibration inputs: each recorded UNet input (those the shallow graph takes) with
    the deep feature the fp32 UNet computes from it, as a cached step reuses it."""
    from latentrt.runtime.session import OnnxModel

    feature = folder.deepcache["feature"]
    shallow_inputs = {i.name for i in onnx.load(str(folder.components["unet_shallow"].model),
                                                load_external_data=False).graph.input}
    unet = OnnxModel("unet", folder.components["unet"].model, ["CPUExecutionProvider"])
    out = [{**{k: v for k, v in feeds.items() if k in shallow_inputs}, feature: unet(**feeds)[feature]} for feeds in samples]
    del unet
    return out


@contextlib.contextmanager
def _quiet_truncation():
    """Prompts longer than the text encoder's window are truncated, as in generation; one note is enough."""
    tokenizer_log = logging.getLogger("latentrt.runtime.tokenizer")
    level = tokenizer_log.level
    tokenizer_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tokenizer_log.setLevel(level)


class _Reader:
    """ORT's CalibrationDataReader over a list of feeds."""

    def __init__(self, samples: list[dict]):
        self.samples = samples
        self.index = 0

    def get_next(self):
        if self.index >= len(self.samples):
            return None
        self.index += 1
        return self.samples[self.index - 1]

    def __len__(self) -> int:
        return len(self.samples)


# --- the graph ----------------------------------------------------------------------------------------------


def load_float_unet(path: Path):
    """The UNet as an onnx.ModelProto ready for ORT's quantizer.

    - Weights stored as fp16 with a Cast back to fp32 (`--compact-weights`) become fp32 initializers again:
      the quantizer only quantizes weights that are initializers.
    - ONNX's shape inference does not know com.microsoft ops; their outputs are declared float here so that
      the calibrator knows the type of every tensor it measures.
    """
    from onnx import TensorProto, helper, numpy_helper

    model = _load_model(Path(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    keep, restored = [], 0
    for node in graph.node:
        source = inits.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if source is not None and source.data_type == TensorProto.FLOAT16 and to == TensorProto.FLOAT and uses[source.name] == 1:
            values = numpy_helper.to_array(source).astype(np.float32)
            graph.initializer.remove(source)
            graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
            restored += 1
            continue
        keep.append(node)
    if restored:
        del graph.node[:]
        graph.node.extend(keep)
    known = {v.name for v in graph.value_info}
    for node in graph.node:
        if node.domain == "com.microsoft":
            for out in node.output:
                if out and out not in known:
                    graph.value_info.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    return model


def _load_model(path: Path):
    """onnx.load with the weights, read here from model.onnx_data.

    onnx's own loader refuses a data file with several hard links (a guard against reading other files through
    a link), and a benchmark cache or `cp -al` links exported folders. The guard's intent is kept: only files
    inside the model's own folder are read.
    """

    model = onnx.load(str(path), load_external_data=False)
    folder = path.parent.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        file = (folder / info["location"]).resolve()
        if file.parent != folder:
            raise QuantizeError(f"{path}: weight {tensor.name} points outside the model's folder ({info['location']})")
        with open(file, "rb") as fh:
            fh.seek(int(info.get("offset", 0)))
            data = fh.read(int(info["length"])) if "length" in info else fh.read()
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return model


def _depends(graph) -> dict[str, frozenset[str]]:
    """For every tensor, the graph inputs its values depend on (nodes are topologically sorted in ONNX)."""
    deps: dict[str, frozenset[str]] = {i.name: frozenset([i.name]) for i in graph.input}
    for node in graph.node:
        if node.op_type in ("Shape", "Size"):  # a shape is not a value: the timestep's batch expand reads the sample's
            d = frozenset()
        else:
            d = frozenset().union(*(deps.get(i, frozenset()) for i in node.input if i))
        for attr in node.attribute:  # subgraphs (If/Loop) are not expected in a UNet
            if attr.g.node or attr.graphs:
                d = d | frozenset(i.name for i in graph.input)
        for out in node.output:
            deps[out] = d
    return deps


def float_nodes(model, parts: Iterable[str]) -> dict[str, list[str]]:
    """The names of the nodes each of ``parts`` (see FLOAT_PARTS) keeps in float."""
    parts = list(parts)
    unknown = sorted(set(parts) - set(FLOAT_PARTS))
    if unknown:
        raise QuantizeError(f"unknown float parts {unknown}: choose from {', '.join(FLOAT_PARTS)}")
    graph = model.graph
    inputs = [i.name for i in graph.input]
    sample = "sample" if "sample" in inputs else inputs[0]
    timestep = "timestep" if "timestep" in inputs else None
    text = "encoder_hidden_states" if "encoder_hidden_states" in inputs else None
    deps = _depends(graph)
    candidates = [n for n in graph.node if n.op_type in QUANTIZED_OPS]
    producer = {o: n for n in graph.node for o in n.output}
    found: dict[str, list[str]] = {}
    for part in parts:
        if part == "conv_in":
            names = [n.name for n in candidates if n.op_type == "Conv" and n.input[0] == sample]
        elif part == "conv_out":
            names = []
            for out in graph.output:
                node = producer.get(out.name)
                while node is not None and node.op_type not in QUANTIZED_OPS and node.op_type in ("Identity", "Reshape", "Cast"):
                    node = producer.get(node.input[0])
                if node is not None and node.op_type == "Conv":
                    names.append(node.name)
        elif part == "time_embedding":
            names = [n.name for n in candidates if timestep and timestep in deps[n.input[0]] and sample not in deps[n.input[0]]]
        else:  # text_projections
            names = [n.name for n in candidates if text and deps[n.input[0]] == frozenset([text])]
        found[part] = names
    return found


class _NoPreprocessAdvice(logging.Filter):
    """ORT's quantizer logs, twice, advice to run its quant_pre_process first. On these graphs its symbolic shape
    inference stops ("Incomplete symbolic shape inference"), and without it (graph optimisation + ONNX shape
    inference) the shipped model gave the same int8 images and one-call error: load_float_unet gives the
    quantizer what it needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _ort_quantizer_context(folder: Path):
    """ORT's quantizer writes its scratch models (the augmented copy of the UNet) with `tempfile`: keep them
    inside OUT's hidden temporary folder, so that they are removed with it, and off a small /tmp."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    advice = _NoPreprocessAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        tempfile.tempdir = previous
        root.removeFilter(advice)


def quantize_unet(
    source: Path,
    target: Path,
    samples: list[dict],
    float_parts: Iterable[str] = DEFAULT_FLOAT_PARTS,
    scratch: Path | None = None,
    extra_options: dict | None = None,
    op_types: Iterable[str] = QUANTIZED_OPS,
    calibration_cache: Path | None = None,
) -> dict:
    """Quantize the UNet at ``source`` (its model.onnx) into the folder ``target``; returns what was done.

    Calibration and quantization run one after the other, each with its own copy of the graph (the ranges pass
    through ORT's calibration cache file): quantize_static would hold its copy through the calibration too, one
    more UNet's worth of memory at the peak. ``calibration_cache``: a ranges file to reuse, or to write.
    """
    import inspect

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    scratch = Path(scratch) if scratch is not None else target / ".scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    model = load_float_unet(source)
    excluded = float_nodes(model, float_parts)
    float_path = scratch / "float.onnx"
    onnx.save_model(model, str(float_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="float.onnx_data", size_threshold=1024)
    del model
    options = {"ActivationSymmetric": False, "WeightSymmetric": True}
    options.update(extra_options or {})
    quantized_path = scratch / "int8.onnx"
    with _ort_quantizer_context(scratch):
        reader, cache = _Reader(samples), None
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:  # onnxruntime >= 1.24
            cache = Path(calibration_cache) if calibration_cache else scratch / "ranges.json"
            if not cache.is_file():
                _calibrate(float_path, reader, op_types, scratch, cache)
            reader = None
        quantize_static(
            str(float_path),
            str(quantized_path),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[name for names in excluded.values() for name in names],
            use_external_data_format=True,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=options,
            **({"calibration_cache_path": str(cache)} if cache is not None else {}),
        )
    model = onnx.load(str(quantized_path), load_external_data=True)
    target.mkdir(parents=True, exist_ok=True)
    files = save_component_model(model, target)
    quantized = _quantized_counts(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    del model
    shutil.rmtree(scratch, ignore_errors=True)
    return {"files": files, "float_nodes": excluded, "quantized_nodes": quantized, "opset": opset,
            "op_types": list(op_types), "extra_options": options}


def _calibrate(float_path: Path, reader: "_Reader", op_types: Iterable[str], scratch: Path, cache: Path) -> None:
    """ORT's MinMax calibration (what quantize_static runs), its ranges written to ``cache``."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        float_path, list(op_types), augmented_model_path=str(scratch / "augmented.onnx"),
        calibrate_method=CalibrationMethod.MinMax, use_external_data_format=True,
    )
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)
    del calibrator
    for path in scratch.glob("augmented.onnx*"):
        path.unlink()


def _quantized_counts(model) -> dict[str, int]:
    """How many nodes of each op type read a DequantizeLinear output (i.e. run quantized after ORT's fusion)."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS and node.input and node.input[0] in dq:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# --- the check ----------------------------------------------------------------------------------------------


def compare_unets(fp32: Path, int8: Path, feeds: dict, threads: int | None = None) -> dict[str, float]:
    """One UNet call, int8 against fp32 on the same inputs: relative max abs error, relative rms."""
    from latentrt.runtime.session import OnnxModel

    reference = next(iter(OnnxModel("unet", fp32, ["CPUExecutionProvider"], threads)(**feeds).values()))
    out = next(iter(OnnxModel("unet", int8, ["CPUExecutionProvider"], threads)(**feeds).values()))
    scale = float(np.max(np.abs(reference))) or 1.0
    diff = out.astype(np.float64) - reference
    return {
        "max_abs_diff": float(np.max(np.abs(diff))),
        "max_rel_error": float(np.max(np.abs(diff)) / scale),
        "rms_rel_error": float(np.sqrt(np.mean(diff**2)) / (np.sqrt(np.mean(reference.astype(np.float64) ** 2)) or 1.0)),
        "finite": bool(np.isfinite(out).all()),
    }


# --- the folder ---------------------------------------------------------------------------------------------


def quantize_folder(
    model: str | Path,
    out: str | Path,
    *,
    prompts: list[str] | None = None,
    prompts_source: str | None = None,
    samples: int = DEFAULT_SAMPLES,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    scheduler: str | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int = DEFAULT_SEED,
    float_parts: Iterable[str] = DEFAULT_FLOAT_PARTS,
    force: bool = False,
    report: Callable[[str], None] = logger.info,
    op_types: Iterable[str] = QUANTIZED_OPS,
    extra_options: dict | None = None,
    recorded_source: str | None = None,
) -> QuantizeReport:
    """Write ``out``: ``model``'s folder with its UNet (and DeepCache's shallow UNet, where the folder has one)
    quantized to static QDQ int8 (see the module docstring).

    Built in a hidden temporary folder beside ``out`` and renamed into place at the end: a failure leaves
    no ``out`` (and an existing one, replaced only with ``force``, untouched). ``recorded_source``: what the manifest
    records as the float folder quantized (default: ``model``'s path; `export --int8` names its own step).
    """
    started = time.perf_counter()
    model, out = Path(model), Path(out)
    for name, value in (("samples", samples), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise QuantizeError(f"{name} must be an integer of at least 1, got {value!r}")
    if not np.isfinite(guidance_scale) or guidance_scale <= 1.0:
        raise QuantizeError(
            f"calibration guidance must be above 1 (so that the unconditional half of the batch is seen), got {guidance_scale!r}"
        )
    prompts = list(DEFAULT_PROMPTS) if prompts is None else [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise QuantizeError("the prompt list is empty: give at least one prompt")
    float_parts = tuple(float_parts)
    folder = check_model(model)
    if out.resolve() == model.resolve() or model.resolve() in out.resolve().parents:
        raise QuantizeError(f"OUT ({out}) must be a new folder outside MODEL ({model})")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists: choose another OUT or pass --force to replace it")
    side = calibration_size(folder)
    height = side if height is None else height
    width = side if width is None else width
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 or value % folder.size_multiple:
            raise QuantizeError(f"{name} must be a positive multiple of {folder.size_multiple} for this model, got {value!r}")
    from latentrt.runtime.schedulers import create_scheduler

    try:
        sampler_name = create_scheduler(scheduler or folder.defaults.scheduler, folder.scheduler_config).name
    except ValueError as exc:
        raise QuantizeError(str(exc)) from exc
    settings = CalibrationSettings(
        prompts=tuple(prompts), prompts_source=prompts_source or ("built-in" if prompts == list(DEFAULT_PROMPTS) else "list"),
        samples=int(samples), height=int(height), width=int(width), steps=int(steps),
        guidance_scale=float(guidance_scale), scheduler=sampler_name, seed=int(seed),
    )
    plan_samples(len(prompts), _calls_per_generation(folder, settings), settings.samples)  # too many samples: fail now

    networks = ("unet", "unet_shallow") if folder.deepcache and "unet_shallow" in folder.components else ("unet",)
    result = QuantizeReport(out=out)
    with staged_folder(out) as tmp:  # calibration runs inside: a Ctrl-C leaves nothing behind
        t0 = time.perf_counter()
        feeds = {"unet": gather_samples(folder, settings, report)}
        if "unet_shallow" in networks:
            report("calibration: the deep feature of each sample, for DeepCache's shallow UNet")
            feeds["unet_shallow"] = shallow_samples(folder, feeds["unet"])
        result.calibration_seconds = time.perf_counter() - t0
        shutil.copytree(model, tmp, ignore=_skip_model_files(model, networks))
        t0 = time.perf_counter()
        done = {}
        for name in networks:
            report(f"quantizing {'the UNet' if name == 'unet' else 'the shallow UNet'} ({settings.samples} calibration samples)")
            source = folder.components[name].model
            done[name] = quantize_unet(source, tmp / name, feeds[name], float_parts, scratch=tmp / ".scratch",
                                       extra_options=extra_options, op_types=op_types)
            check = compare_unets(source, tmp / name / "model.onnx", feeds[name][len(feeds[name]) // 2])
            done[name]["check"] = check  # the manifest records it
            if not check["finite"]:
                raise QuantizeError(f"the quantized {name}'s output is not finite: the calibration ranges are wrong")
            report(
                f"{name}: int8 vs fp32 on a calibration sample: max abs diff {check['max_abs_diff']:.3g} "
                f"({check['max_rel_error']:.3g} of the output's range), rms {check['rms_rel_error']:.3g}"
            )
            summary = {
                "float_nodes": done[name]["float_nodes"], "quantized_nodes": done[name]["quantized_nodes"], "check": check,
                "sizes": {"fp32": sum(p.stat().st_size for p in source.parent.glob("model.onnx*")),
                          "int8": sum((tmp / name / f).stat().st_size for f in done[name]["files"])},
            }
            if name == "unet":
                result.float_nodes, result.quantized_nodes = summary["float_nodes"], summary["quantized_nodes"]
                result.check, result.sizes = check, summary["sizes"]
            else:
                result.shallow = summary
        result.quantize_seconds = time.perf_counter() - t0
        timesteps = sorted({float(np.ravel(f["timestep"])[0]) for f in feeds["unet"] if "timestep" in f})
        manifest = _manifest(folder, tmp, settings, done, result, timesteps, recorded_source)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    result.seconds = time.perf_counter() - started
    return result


def _calls_per_generation(folder: ModelFolder, settings: CalibrationSettings) -> int:
    from latentrt.runtime.schedulers import create_scheduler

    sampler = create_scheduler(settings.scheduler, folder.scheduler_config)
    sampler.set_timesteps(settings.steps)
    return len(sampler.timesteps)


def _skip_model_files(model: Path, networks: Iterable[str]):
    """copytree's ignore: the graphs of `networks` (written quantized instead)."""
    folders = {(model / name).resolve() for name in networks}

    def ignore(directory: str, names: list[str]) -> list[str]:
        if Path(directory).resolve() in folders:
            return [n for n in names if n.startswith("model.onnx")]
        return []

    return ignore


def _manifest(folder: ModelFolder, tmp: Path, settings: CalibrationSettings, done: dict, result: QuantizeReport,
              timesteps: list[float], recorded_source: str | None = None) -> dict:
    import onnxruntime

    manifest = json.loads(json.dumps(folder.manifest)) if folder.manifest else {"format": "latentrt-onnx/1", "components": {}}
    for name, network in done.items():
        entry = dict(manifest["components"].get(name) or _graph_entry(tmp / name / "model.onnx"))
        entry.update({
            "file": "model.onnx",
            "external_data": EXTERNAL_DATA_NAME if EXTERNAL_DATA_NAME in network["files"] else None,
            "files": {n: {"bytes": (tmp / name / n).stat().st_size, "sha256": file_sha256(tmp / name / n)}
                      for n in network["files"]},
            "precision": PRECISION,
            "opset": network["opset"],
            "quantized_nodes": network["quantized_nodes"],
            "float_nodes": network["float_nodes"],
            "quantization_check": {k: v for k, v in network["check"].items() if k != "finite"},
        })
        entry.pop("validation", None)  # the export's figures were for the fp32 graph
        entry.pop("weights", None)  # the fp32 initializers it mapped (for LoRAs) are int8 now
        manifest["components"][name] = entry
    unet = done["unet"]
    calibration = asdict(settings)
    calibration["prompts_count"] = len(calibration.pop("prompts"))
    calibration["timesteps"] = timesteps  # the distinct timesteps of the recorded UNet inputs
    manifest["quantization"] = {
        "format": "QDQ",
        "components": list(done),
        "activations": "uint8, asymmetric, per tensor",
        "weights": "int8, symmetric, per output channel",
        "quantized_op_types": unet["op_types"],
        "ort_extra_options": unet["extra_options"],
        "float_parts": list(unet["float_nodes"]),
        "float_nodes": unet["float_nodes"],
        "calibration": calibration,
        "source": recorded_source or str(folder.path.resolve()),
        "seconds": {"calibration": round(result.calibration_seconds, 1), "quantize": round(result.quantize_seconds, 1)},
        "versions": {"latentrt": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest["precision"] = "mixed"
    return manifest


def _graph_entry(path: Path) -> dict:
    """A manifest entry for a folder that had none (optimum's): the graph's declared inputs and outputs."""
    from latentrt.runtime.session import OnnxModel

    session = OnnxModel("unet", path, ["CPUExecutionProvider"])
    def io(infos):
        return [{"name": t.name, "dtype": str(t.dtype), "axes": list(t.shape)} for t in infos.values()]

    return {"inputs": io(session.inputs), "outputs": io(session.outputs)}


__all__ = ["DEFAULT_PROMPTS", "QuantizeError", "quantize_folder", "read_prompt_file", "calibration_size"]
