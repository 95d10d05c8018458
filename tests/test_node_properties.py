"""Property tests of the pack's nodes in an in-process ComfyUI, over their inputs at and inside the declared bounds.

The bounds come from the node schemas themselves (``INPUT_TYPES()``, as ComfyUI serves them), so the tests
follow the nodes. Every node call either succeeds or raises ValueError (TCDInputError from the sampling
core) whose message names the TCD node; nothing else may escape. Successful runs sample a tiny latent
through ComfyUI's SamplerCustom / SamplerCustomAdvanced / KSampler on a tiny random UNet built with
ComfyUI's own SD1.5 model class (about 10 ms a model call), and must give finite output of the input's shape.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from devkit.inprocess import Comfy, load_comfy, run_node
from devkit.model_files import TINY_SD15_UNET_CONFIG, default_models_dir, tiny_sd15_patcher

SAMPLER, SCHEDULER = "TrajectoryConsistencySampler", "TrajectoryConsistencyScheduler"
CONTEXT_DIM = TINY_SD15_UNET_CONFIG["context_dim"]
MAX_SAMPLED_STEPS = 10  # sampling draws at most this many steps (the scheduler alone takes the full range)


def _comfy_in_process() -> Comfy:
    """ComfyUI with the pack (loaded once per process)."""
    return load_comfy(default_models_dir())


class _Quiet:
    """Short reprs for the fixtures, so that a falsifying example prints readably."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class InProcessComfy(_Quiet):
    """comfy_inprocess.Comfy's fields, not as a dataclass (hypothesis prints dataclasses field by field)."""

    def __init__(self, loaded: Comfy) -> None:
        self.nodes, self.node_classes, self.pack_nodes = loaded.nodes, loaded.node_classes, loaded.pack_nodes

    def node(self, node_id: str) -> Any:
        return self.node_classes[node_id]


class TinyModel(_Quiet, SimpleNamespace):
    pass


@pytest.fixture(scope="module")
def comfy(test_models: dict) -> Comfy:
    return InProcessComfy(_comfy_in_process())


@pytest.fixture(scope="module")
def tiny(comfy: Comfy) -> Iterator[SimpleNamespace]:
    # One thread: on a busy machine, torch's thread pool turns a 1 ms model call on an 8x8 latent into 0.5 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield tiny_model(comfy)
    finally:
        torch.set_num_threads(threads)


def tiny_model(comfy: Comfy) -> SimpleNamespace:
    """A tiny SD1.5-class model (eps, discrete schedule) in a real ModelPatcher, with matching conditioning."""
    generator = torch.Generator().manual_seed(20240301)
    patcher = tiny_sd15_patcher(generator)
    conditioning = [[torch.randn(1, 77, CONTEXT_DIM, generator=generator), {}]]
    pack_name = comfy.pack_nodes.__name__.rsplit(".", 1)[0]  # the pack as ComfyUI imported it
    tcd_core = importlib.import_module(f"{pack_name}.tcd_core")
    return TinyModel(model=patcher, conditioning=conditioning, TCDInputError=tcd_core.TCDInputError)


# --- strategies from the declared bounds ------------------------------------------------------------


def declared(comfy: Comfy, node_id: str) -> dict[str, tuple]:
    spec = comfy.node(node_id).INPUT_TYPES()
    return {**spec["required"], **spec.get("optional", {})}


def within(spec: tuple) -> st.SearchStrategy:
    """Values of an INT or FLOAT input at its bounds or anywhere between them."""
    kind, options = spec[0], spec[1]
    low, high = options["min"], options["max"]
    if kind == "INT":
        return st.one_of(st.sampled_from([low, high]), st.integers(low, min(high, 64)), st.integers(low, high))
    assert kind == "FLOAT", spec
    return st.one_of(st.sampled_from([low, high]), st.floats(low, high))


def combo(spec: tuple) -> st.SearchStrategy:
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    return st.sampled_from(list(options))


_NUMBER_TEXT = st.one_of(
    st.floats(-0.5, 1.5).map(lambda v: f"{v:.3g}"),
    st.sampled_from(["0", "1", "0.3", "1.0", "-0", "nan", "inf", "-inf", "1e-9", "1e400", "abc", ".", "--1", "0,3"]),
)
GAMMA_LISTS = st.one_of(
    st.lists(_NUMBER_TEXT, max_size=12).flatmap(
        lambda items: st.sampled_from([", ", ",", " ", ";", "\n", " ;, "]).map(lambda sep: sep.join(items))
    ),
    st.text(max_size=40),  # garbage of every kind
)


@st.composite
def sampler_inputs(draw: st.DrawFn, comfy: Comfy, steps: int | None = None) -> dict[str, Any]:
    """TCD Sampler inputs; with ``steps``, gamma lists of that many valid values are drawn too."""
    spec = declared(comfy, SAMPLER)
    lists = GAMMA_LISTS
    if steps is not None and steps >= 1:
        exact = st.lists(st.floats(0.0, 1.0), min_size=steps, max_size=steps).map(lambda v: ", ".join(map(str, v)))
        lists = st.one_of(exact, GAMMA_LISTS)
    return {
        "gamma": draw(within(spec["gamma"])),
        "gamma_schedule": draw(combo(spec["gamma_schedule"])),
        "gamma_end": draw(within(spec["gamma_end"])),
        "gamma_list": draw(lists),
        "order": draw(within(spec["order"])),
    }


@st.composite
def scheduler_inputs(draw: st.DrawFn, comfy: Comfy, max_steps: int | None = None) -> dict[str, Any]:
    spec = declared(comfy, SCHEDULER)
    steps = within(spec["steps"]) if max_steps is None else st.integers(spec["steps"][1]["min"], max_steps)
    return {
        "steps": draw(steps),
        "original_inference_steps": draw(within(spec["original_inference_steps"])),
        "strength": draw(within(spec["strength"])),
    }


# --- calling the nodes ------------------------------------------------------------------------------


def assert_clear_value_error(error: BaseException, node: str) -> None:
    """The only failure allowed: a ValueError whose message names the TCD node."""
    assert isinstance(error, ValueError), f"{type(error).__name__} escaped: {error!r}"
    message = str(error)
    assert message.strip(), "a ValueError without a message"
    assert message.startswith(node), f"the message does not name {node}: {message!r}"


def grid_allows(steps: int, original: int, strength: float) -> bool:
    """The reference's rule: steps picked from the first int(original x strength) points of the grid."""
    return steps <= original and steps <= int(original * strength)


def call_scheduler(comfy: Comfy, tiny: SimpleNamespace, inputs: dict) -> torch.Tensor | None:
    try:
        (sigmas,) = run_node(comfy.node(SCHEDULER), model=tiny.model, **inputs)
    except Exception as error:
        assert_clear_value_error(error, "TCD Scheduler: ")
        return None
    return sigmas


def call_sampler_node(comfy: Comfy, inputs: dict) -> Any:
    """validate_inputs as ComfyUI runs it before execution, then execute; None where either refuses."""
    node = comfy.node(SAMPLER)
    verdict = node.validate_inputs(gamma_schedule=inputs["gamma_schedule"], gamma_list=inputs["gamma_list"])
    try:
        (sampler,) = run_node(node, **inputs)
    except Exception as error:
        assert_clear_value_error(error, "")
        assert verdict is not True, f"validate_inputs passed {inputs}, but the node failed: {error}"
        return None
    assert verdict is True, f"validate_inputs refused {inputs} ({verdict}), but the node accepted it"
    return sampler


def gamma_list_length(comfy: Comfy, inputs: dict) -> int | None:
    if inputs["gamma_schedule"] != "list":
        return None
    return len(sys.modules[comfy.node(SAMPLER).__module__].tcd_core.parse_gamma_list(inputs["gamma_list"]))


# --- the properties ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_scheduler_gives_descending_sigmas_or_a_clear_error(
    comfy: Comfy, tiny: SimpleNamespace, data: st.DataObject
) -> None:
    inputs = data.draw(scheduler_inputs(comfy), label="TCD Scheduler")
    sigmas = call_scheduler(comfy, tiny, inputs)
    allowed = grid_allows(inputs["steps"], inputs["original_inference_steps"], inputs["strength"])
    assert (sigmas is not None) == allowed, inputs
    if sigmas is not None:
        assert sigmas.shape == (inputs["steps"] + 1,)
        assert torch.isfinite(sigmas).all() and sigmas[-1] == 0
        assert (sigmas[1:] < sigmas[:-1]).all(), sigmas


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_sampler_node_gives_a_sampler_or_a_clear_error(comfy: Comfy, data: st.DataObject) -> None:
    inputs = data.draw(sampler_inputs(comfy), label="TCD Sampler")
    sampler = call_sampler_node(comfy, inputs)
    if inputs["gamma_schedule"] != "list":
        assert sampler is not None, "gamma and gamma_end within their bounds must always be accepted"
    if sampler is not None:
        assert callable(getattr(sampler, "sample", None))


def _latent(data: st.DataObject) -> dict:
    batch = data.draw(st.integers(1, 2), label="batch")
    if data.draw(st.booleans(), label="empty latent"):
        return {"samples": torch.zeros(batch, 4, 8, 8)}
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="latent seed"))
    return {"samples": torch.randn(batch, 4, 8, 8, generator=generator)}


def _run(call: Any, tiny: SimpleNamespace) -> torch.Tensor | None:
    """Sample; a failure must be the pack's TCDInputError naming the TCD Sampler."""
    try:
        return call()
    except Exception as error:
        assert_clear_value_error(error, "TCD Sampler: ")
        assert isinstance(error, tiny.TCDInputError), f"{type(error)} is not the pack's TCDInputError"
        return None


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_sampling_through_comfyui_gives_finite_output_or_a_clear_error(
    comfy: Comfy, tiny: SimpleNamespace, data: st.DataObject
) -> None:
    schedule = data.draw(scheduler_inputs(comfy, max_steps=MAX_SAMPLED_STEPS), label="TCD Scheduler")
    sigmas = call_scheduler(comfy, tiny, schedule)
    assume(sigmas is not None)
    split = data.draw(st.sampled_from(["full", "high", "low"]), label="SplitSigmas")
    if split != "full":
        step = data.draw(st.integers(0, len(sigmas)), label="split step")
        high, low = run_node(comfy.node("SplitSigmas"), sigmas=sigmas, step=step)
        sigmas = high if split == "high" else low
    inputs = data.draw(sampler_inputs(comfy, steps=len(sigmas) - 1), label="TCD Sampler")
    sampler = call_sampler_node(comfy, inputs)
    assume(sampler is not None)
    latent = _latent(data)
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    conditioning = tiny.conditioning

    if data.draw(st.booleans(), label="SamplerCustomAdvanced"):

        def sample() -> torch.Tensor:
            noise = run_node(comfy.node("RandomNoise"), noise_seed=seed)[0]
            guider = run_node(comfy.node("BasicGuider"), model=tiny.model, conditioning=conditioning)[0]
            node = comfy.node("SamplerCustomAdvanced")
            out = run_node(node, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas, latent_image=latent)
            return out[0]["samples"]
    else:

        def sample() -> torch.Tensor:
            out = run_node(
                comfy.node("SamplerCustom"), model=tiny.model, add_noise=True, noise_seed=seed, cfg=1.0,
                positive=conditioning, negative=conditioning, sampler=sampler, sigmas=sigmas, latent_image=latent,
            )  # fmt: skip
            return out[0]["samples"]

    out = _run(sample, tiny)
    steps = len(sigmas) - 1
    list_length = gamma_list_length(comfy, inputs)
    if steps >= 1:  # empty sigmas never reach the sampler: ComfyUI returns the latent as it is
        assert (out is not None) == (list_length in (None, steps)), (steps, inputs)
    elif steps == 0:
        assert out is None  # one sigma: "sigmas must hold at least 2 values"
    event("sampled" if out is not None else "refused by TCD Sampler")
    if out is not None:
        assert out.shape == latent["samples"].shape
        assert torch.isfinite(out).all()


def ksampler_schedule_steps(steps: int, denoise: float) -> int:
    """How many schedule steps KSampler asks its scheduler for (comfy.samplers.KSampler.set_steps)."""
    if denoise > 0.9999:
        return steps
    return 0 if denoise <= 0.0 else int(steps / denoise)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_ksampler_tcd_gives_finite_output_or_a_clear_error(
    comfy: Comfy, tiny: SimpleNamespace, data: st.DataObject
) -> None:
    """KSampler with sampler and scheduler `tcd` over its own bounds: steps (sampled up to 10) and denoise.

    KSampler asks the scheduler for int(steps / denoise) steps; past TCD's 1000-timestep grid that is refused.
    """
    spec = declared(comfy, "KSampler")
    assert "tcd" in spec["sampler_name"][0] and "tcd" in spec["scheduler"][0]
    steps = data.draw(st.integers(spec["steps"][1]["min"], MAX_SAMPLED_STEPS), label="steps")
    denoise = data.draw(within(spec["denoise"]), label="denoise")
    # ComfyUI's own KSampler.set_steps takes int(steps / denoise), an OverflowError for every scheduler
    # once that is infinite (denoise below ~1e-308): not the pack's to fix, so not drawn.
    assume(denoise <= 0.0 or math.isfinite(steps / denoise))
    latent = _latent(data)
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    try:
        out = run_node(
            comfy.node("KSampler"), model=tiny.model, seed=seed, steps=steps, cfg=1.0, sampler_name="tcd",
            scheduler="tcd", positive=tiny.conditioning, negative=tiny.conditioning, latent_image=latent,
            denoise=denoise,
        )[0]["samples"]  # fmt: skip
    except Exception as error:
        assert_clear_value_error(error, "KSampler scheduler 'tcd': ")
        assert isinstance(error, tiny.TCDInputError)
        out = None
    event("sampled" if out is not None else "refused by the tcd scheduler")
    assert (out is not None) == (ksampler_schedule_steps(steps, denoise) <= 1000), (steps, denoise)
    if out is not None:
        assert out.shape == latent["samples"].shape
        assert torch.isfinite(out).all()


def test_the_largest_declared_schedule_samples(comfy: Comfy, tiny: SimpleNamespace) -> None:
    """Upper bounds together: 1000 steps on a 1000-point grid (every timestep 999 .. 0), then sampled."""
    spec = declared(comfy, SCHEDULER)
    top = {name: spec[name][1]["max"] for name in ("steps", "original_inference_steps", "strength")}
    sigmas = call_scheduler(comfy, tiny, top)
    assert sigmas is not None and len(sigmas) == top["steps"] + 1
    sampler = call_sampler_node(
        comfy, {"gamma": 1.0, "gamma_schedule": "linear", "gamma_end": 0.0, "gamma_list": "", "order": 1}
    )
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = run_node(
        comfy.node("SamplerCustom"), model=tiny.model, add_noise=True, noise_seed=7, cfg=1.0,
        positive=tiny.conditioning, negative=tiny.conditioning, sampler=sampler, sigmas=sigmas, latent_image=latent,
    )[0]["samples"]  # fmt: skip
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
