"""Bad input through the real ComfyUI HTTP server: each one gets a clear error, and the server keeps working.

Every case posts an API-format TCD txt2img graph with one thing wrong and checks what the user sees:

* ComfyUI's own validation (HTTP 400, ``node_errors``): the node, the input and its bounds, e.g.
  ``Value 1.5 bigger than max of 1.0: gamma`` on the TCD Sampler node;
* an execution error (``execution_error`` in ``/history``): the node id and type, and the pack's
  message naming the TCD node, the input and the allowed values.

Then the same server must still run a good graph (a 1-step TCD txt2img at 64x64, fresh seed).
``BAD_INPUTS`` is the table the README repeats; it is printed as Markdown by
``PYTHONPATH=. .dev/venv/bin/python tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from devkit.host import REPO_ROOT, ComfyServer

CKPT = "tcd-test-sd15.safetensors"
NAN_LATENT = "tcd-test-nan.latent"
_SEEDS = itertools.count(8_810_000)  # every graph gets its own seed: ComfyUI would serve a repeat from its cache

Graph = dict[str, dict[str, Any]]


def tcd_graph(steps: int = 2, seed: int | None = None, prefix: str = "tcd-bad-inputs") -> Graph:
    """TCD txt2img in API format: TCD Scheduler + TCD Sampler into SamplerCustom (CFG 1), 64x64."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": "a paper cut fox", "clip": ["ckpt", 1]}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "scheduler": {
            "class_type": "TrajectoryConsistencyScheduler",
            "inputs": {"model": ["ckpt", 0], "steps": steps, "original_inference_steps": 50, "strength": 1.0},
        },
        "tcd": {
            "class_type": "TrajectoryConsistencySampler",
            "inputs": {"gamma": 0.3, "gamma_schedule": "constant", "gamma_end": 0.3, "gamma_list": "0.3", "order": 1},
        },
        "sample": {
            "class_type": "SamplerCustom",
            "inputs": {
                "model": ["ckpt", 0],
                "add_noise": True,
                "noise_seed": next(_SEEDS) if seed is None else seed,
                "cfg": 1.0,
                "positive": ["positive", 0],
                "negative": ["negative", 0],
                "sampler": ["tcd", 0],
                "sigmas": ["scheduler", 0],
                "latent_image": ["latent", 0],
            },
        },
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }


# --- graph changes ---------------------------------------------------------------------------------


def set_input(node: str, **values: Any) -> Callable[[Graph, ComfyServer], None]:
    def change(graph: Graph, _server: ComfyServer) -> None:
        graph[node]["inputs"].update(values)

    return change


def gamma_list(text: str) -> Callable[[Graph, ComfyServer], None]:
    return set_input("tcd", gamma_schedule="list", gamma_list=text)


def sigmas_through(class_type: str, output: int, **inputs: Any) -> Callable[[Graph, ComfyServer], None]:
    """The TCD Scheduler's sigmas pass through a sigmas node (SplitSigmas, FlipSigmas) before SamplerCustom."""

    def change(graph: Graph, _server: ComfyServer) -> None:
        graph["sigmas_node"] = {"class_type": class_type, "inputs": {"sigmas": ["scheduler", 0], **inputs}}
        graph["sample"]["inputs"]["sigmas"] = ["sigmas_node", output]

    return change


def tcd_lora(name: str) -> Callable[[Graph, ComfyServer], None]:
    """TCD LoRA Loader between the checkpoint and everything that takes its MODEL."""

    def change(graph: Graph, _server: ComfyServer) -> None:
        styles = {f"style_lora_{i}": "None" for i in (1, 2, 3)} | {f"style_lora_{i}_strength": 1.0 for i in (1, 2, 3)}
        graph["lora"] = {
            "class_type": "TrajectoryConsistencyLoraLoader",
            "inputs": {"model": ["ckpt", 0], "tcd_lora": name, "tcd_lora_strength": 1.0, **styles},
        }
        graph["scheduler"]["inputs"]["model"] = ["lora", 0]
        graph["sample"]["inputs"]["model"] = ["lora", 0]

    return change


def ksampler_tcd(steps: int, denoise: float) -> Callable[[Graph, ComfyServer], None]:
    """KSampler with sampler and scheduler `tcd` in place of SamplerCustom."""

    def change(graph: Graph, _server: ComfyServer) -> None:
        inputs = graph["sample"]["inputs"]
        graph["sample"] = {
            "class_type": "KSampler",
            "inputs": {
                **{name: inputs[name] for name in ("model", "positive", "negative", "latent_image", "cfg")},
                "seed": inputs["noise_seed"],
                "steps": steps,
                "sampler_name": "tcd",
                "scheduler": "tcd",
                "denoise": denoise,
            },
        }

    return change


TIMESTEPS_FORM = "give whole training timesteps in 0..999, strictly descending, separated by commas or spaces"


def nan_latent(graph: Graph, server: ComfyServer) -> None:
    """A .latent file (SaveLatent's format) holding one NaN, loaded with LoadLatent from the input folder."""
    import safetensors.torch
    import torch

    samples = torch.zeros(1, 4, 8, 8)
    samples[0, 1, 3, 4] = float("nan")
    tensors = {"latent_tensor": samples, "latent_format_version_0": torch.tensor([])}
    safetensors.torch.save_file(tensors, str(server.input_dir / NAN_LATENT))
    graph["latent"] = {"class_type": "LoadLatent", "inputs": {"latent": NAN_LATENT}}


# TCD Distill LoRA: a tiny run (2 steps, rank 4) that each case breaks in one way before training starts.
DISTILL_WIDGETS = {
    "batch_size": 2, "grad_accumulation_steps": 1, "steps": 2, "learning_rate": 1e-4, "rank": 4, "optimizer": "AdamW",
    "seed": 0, "training_dtype": "fp32", "lora_dtype": "fp32", "gradient_checkpointing": True, "existing_lora": "None",
    "guidance_min": 3.0, "guidance_max": 15.0, "num_ddim_timesteps": 50, "ema_decay": 0.0, "loss": "huber",
    "huber_c": 0.001, "s_rule": "uniform", "s_zero_share": 0.2, "method": "tcd",
}  # fmt: skip
EMPTY_DATASET = "tcd-empty-dataset.latent"


def distill_lora(
    nodes: dict[str, dict] | None = None, links: dict[str, list] | None = None, **widgets: Any
) -> Callable[[Graph, ComfyServer], None]:
    """TCD Distill LoRA (2 latents of the 64x64 EmptyLatentImage, the captions) -> SaveLoRA in place of the
    txt2img part; ``nodes`` are added, ``links`` rewire its inputs, ``widgets`` change its settings."""

    def change(graph: Graph, _server: ComfyServer) -> None:
        for node in ("scheduler", "tcd", "sample", "decode", "save"):
            del graph[node]
        graph["latent"]["inputs"]["batch_size"] = 2
        graph.update(nodes or {})
        inputs = {"model": ["ckpt", 0], "latents": ["latent", 0], "positive": ["positive", 0]}
        inputs |= {"negative": ["negative", 0], **DISTILL_WIDGETS, **(links or {}), **widgets}
        graph["distill"] = {"class_type": "TrajectoryConsistencyDistillLoRA", "inputs": inputs}
        graph["save_lora"] = {"class_type": "SaveLoRA", "inputs": {"lora": ["distill", 1], "prefix": "loras/bad"}}

    return change


def empty_dataset(graph: Graph, server: ComfyServer) -> None:
    """LoadLatent of a .latent file holding zero latents into TCD Distill LoRA (works on every ComfyUI version;
    Load Training Dataset lists its folders differently across versions)."""
    import safetensors.torch
    import torch

    tensors = {"latent_tensor": torch.zeros(0, 4, 8, 8), "latent_format_version_0": torch.tensor([])}
    safetensors.torch.save_file(tensors, str(server.input_dir / EMPTY_DATASET))
    dataset = {"class_type": "LoadLatent", "inputs": {"latent": EMPTY_DATASET}}
    distill_lora({"dataset": dataset}, {"latents": ["dataset", 0]})(graph, server)


def tiny_flow_model(family: str) -> dict[str, dict]:
    """A tiny random-weight ``family`` model (the test-only TCDTestTinyFlowModel node, ComfyUI's own classes)."""
    inputs = {"family": family, "seed": 0, "weight_dtype": "fp32"}
    return {"flow_model": {"class_type": "TCDTestTinyFlowModel", "inputs": inputs}}


def flow_latents(shape: str = "sd3") -> dict[str, dict]:
    """Two 16-channel 64x64 latents (EmptySD3LatentImage), as a flow model's VAE gives them."""
    return {shape: {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}}


# --- the table -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    case: str  # test id
    bad_input: str  # the README's "bad input" column
    change: Callable[[Graph, ComfyServer], None]
    node: str  # the graph node the error is reported on
    expected: tuple[str, ...]  # fragments of the message the user sees; each also appears in `shown`
    shown: str  # the README's "what the user sees" column
    input_name: str | None = None  # validation errors: the input ComfyUI names
    rejected: bool = False  # True: refused by validation (HTTP 400); False: execution_error in /history


BAD_INPUTS: tuple[BadInput, ...] = (
    BadInput(
        "gamma-above-1",
        "TCD Sampler `gamma` above 1 (1.5)",
        set_input("tcd", gamma=1.5),
        "tcd",
        ("Value 1.5 bigger than max of 1.0", "gamma"),
        "Prompt refused (HTTP 400) on the TCD Sampler node: `Value 1.5 bigger than max of 1.0: gamma`",
        input_name="gamma",
        rejected=True,
    ),
    BadInput(
        "gamma-below-0",
        "TCD Sampler `gamma` below 0 (-0.1)",
        set_input("tcd", gamma=-0.1),
        "tcd",
        ("Value -0.1 smaller than min of 0.0", "gamma"),
        "Prompt refused (HTTP 400) on the TCD Sampler node: `Value -0.1 smaller than min of 0.0: gamma`",
        input_name="gamma",
        rejected=True,
    ),
    BadInput(
        "gamma-list-wrong-length",
        "`gamma_schedule` list, `gamma_list` with 3 values for 2 steps",
        gamma_list("0.3, 0.3, 0.3"),
        "sample",
        ("TCD Sampler: the gamma list has 3 values but the sigmas give 2 steps", "give exactly 2 values"),
        "Error in SamplerCustom: `TCD Sampler: the gamma list has 3 values but the sigmas give 2 steps: "
        "give exactly 2 values`",
    ),
    BadInput(
        "gamma-list-not-numbers",
        "`gamma_schedule` list, `gamma_list` `0.3, abc`",
        gamma_list("0.3, abc"),
        "tcd",
        ("TCD Sampler gamma_list:", "gamma list entry 2 is 'abc', not a number in [0, 1]"),
        "Prompt refused (HTTP 400) on the TCD Sampler node: `TCD Sampler gamma_list: gamma list entry 2 is "
        "'abc', not a number in [0, 1]`",
        input_name="gamma_list",
        rejected=True,
    ),
    BadInput(
        "gamma-list-out-of-range",
        "`gamma_schedule` list, `gamma_list` `0.3, 1.5`",
        gamma_list("0.3, 1.5"),
        "tcd",
        ("TCD Sampler gamma_list:", "gamma list entry 2 must be in [0, 1], got 1.5"),
        "Prompt refused (HTTP 400) on the TCD Sampler node: `TCD Sampler gamma_list: gamma list entry 2 must "
        "be in [0, 1], got 1.5`",
        input_name="gamma_list",
        rejected=True,
    ),
    BadInput(
        "gamma-list-empty",
        "`gamma_schedule` list, `gamma_list` empty",
        gamma_list(" , "),
        "tcd",
        ("TCD Sampler gamma_list:", "the gamma list is empty: write one value in [0, 1] per step"),
        "Prompt refused (HTTP 400) on the TCD Sampler node: `TCD Sampler gamma_list: the gamma list is empty: "
        "write one value in [0, 1] per step, e.g. '0.5, 0.4, 0.3, 0.2'`",
        input_name="gamma_list",
        rejected=True,
    ),
    BadInput(
        "steps-0",
        "TCD Scheduler `steps` 0",
        set_input("scheduler", steps=0),
        "scheduler",
        ("Value 0 smaller than min of 1", "steps"),
        "Prompt refused (HTTP 400) on the TCD Scheduler node: `Value 0 smaller than min of 1: steps`",
        input_name="steps",
        rejected=True,
    ),
    BadInput(
        "steps-beyond-grid",
        "TCD Scheduler `steps` 60 with `original_inference_steps` 50",
        set_input("scheduler", steps=60),
        "scheduler",
        ("TCD Scheduler: steps must be in 1..50, got 60",),
        "Error in TCD Scheduler: `TCD Scheduler: steps must be in 1..50, got 60`",
    ),
    BadInput(
        "steps-beyond-strength",
        "TCD Scheduler `steps` 8 with `strength` 0.1 (50 x 0.1 = 5 grid points)",
        set_input("scheduler", steps=8, strength=0.1),
        "scheduler",
        (
            "TCD Scheduler: steps=8 needs at least 8 grid points",
            "original_inference_steps x strength = 50 x 0.1 leaves 5",
            "lower steps or raise strength",
        ),
        "Error in TCD Scheduler: `TCD Scheduler: steps=8 needs at least 8 grid points, but "
        "original_inference_steps x strength = 50 x 0.1 leaves 5: lower steps or raise strength`",
    ),
    BadInput(
        "strength-0",
        "TCD Scheduler `strength` 0",
        set_input("scheduler", strength=0.0),
        "scheduler",
        ("Value 0.0 smaller than min of 0.01", "strength"),
        "Prompt refused (HTTP 400) on the TCD Scheduler node: `Value 0.0 smaller than min of 0.01: strength`",
        input_name="strength",
        rejected=True,
    ),
    BadInput(
        "strength-above-1",
        "TCD Scheduler `strength` above 1 (1.5)",
        set_input("scheduler", strength=1.5),
        "scheduler",
        ("Value 1.5 bigger than max of 1.0", "strength"),
        "Prompt refused (HTTP 400) on the TCD Scheduler node: `Value 1.5 bigger than max of 1.0: strength`",
        input_name="strength",
        rejected=True,
    ),
    BadInput(
        "sigmas-single-value",
        "One sigma into SamplerCustom with TCD Sampler (SplitSigmas step 0, high half)",
        sigmas_through("SplitSigmas", 0, step=0),
        "sample",
        ("TCD Sampler: sigmas must hold at least 2 values (a start and an end), got 1",),
        "Error in SamplerCustom: `TCD Sampler: sigmas must hold at least 2 values (a start and an end), got 1`",
    ),
    BadInput(
        "sigmas-not-descending",
        "Ascending sigmas into SamplerCustom with TCD Sampler (FlipSigmas)",
        sigmas_through("FlipSigmas", 0),
        "sample",
        ("TCD Sampler: sigmas must be strictly descending, but sigma[1]=", "does not fall below sigma[0]=0.0001"),
        "Error in SamplerCustom: `TCD Sampler: sigmas must be strictly descending, but sigma[1]=1.61289 does "
        "not fall below sigma[0]=0.0001`",
    ),
    BadInput(
        "lora-other-family",
        "TCD LoRA Loader `tcd_lora`: an SDXL LoRA on an SD1.5 checkpoint",
        tcd_lora("tcd-test-lora-sdxl.safetensors"),
        "lora",
        (
            "TCD LoRA Loader tcd_lora: LoRA 'tcd-test-lora-sdxl.safetensors' patches nothing in this model",
            "it was made for another model family (e.g. an SDXL LoRA on an SD1.5 checkpoint)",
        ),
        "Error in TCD LoRA Loader: `TCD LoRA Loader tcd_lora: LoRA 'tcd-test-lora-sdxl.safetensors' patches "
        "nothing in this model (628 modules, none match): it was made for another model family (e.g. an SDXL "
        "LoRA on an SD1.5 checkpoint)`",
    ),
    BadInput(
        "lora-other-family-shapes",
        "TCD LoRA Loader `tcd_lora`: an SDXL LoRA (kohya SGM names, many shared with SD1.5) on an SD1.5 checkpoint",
        tcd_lora("tcd-test-lora-sdxl-kohya.safetensors"),
        "lora",
        (
            "TCD LoRA Loader tcd_lora: LoRA 'tcd-test-lora-sdxl-kohya.safetensors' does not fit this model",
            "46 of its patches do not take the shape of the weight they name, 50 do",
            "890 of its 986 modules name no weight here",
            "it was made for another model family (its cross-attention takes 2048-wide text embeddings (SDXL), "
            "this model's take 768 (SD1.x)). Nothing was applied",
        ),
        "Error in TCD LoRA Loader: `TCD LoRA Loader tcd_lora: LoRA 'tcd-test-lora-sdxl-kohya.safetensors' does "
        "not fit this model: 46 of its patches do not take the shape of the weight they name, 50 do, and 890 of "
        "its 986 modules name no weight here (diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k."
        "weight: delta 640x2048 vs weight 640x768; diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2."
        "to_v.weight: delta 640x2048 vs weight 640x768); it was made for another model family (its "
        "cross-attention takes 2048-wide text embeddings (SDXL), this model's take 768 (SD1.x)). Nothing was "
        "applied` (before any weight is patched; ComfyUI's LoraLoader would apply the 50 that fit)",
    ),
    BadInput(
        "lora-corrupt-file",
        "TCD LoRA Loader `tcd_lora`: a truncated .safetensors file",
        tcd_lora("corrupt.safetensors"),
        "lora",
        ("TCD LoRA Loader tcd_lora: LoRA 'corrupt.safetensors' could not be read (SafetensorError:",),
        "Error in TCD LoRA Loader: `TCD LoRA Loader tcd_lora: LoRA 'corrupt.safetensors' could not be read "
        "(SafetensorError: Error while deserializing header: incomplete metadata, file not fully covered)`",
    ),
    BadInput(
        "lora-not-a-lora",
        "TCD LoRA Loader `tcd_lora`: a .safetensors file that is not a LoRA",
        tcd_lora("not-a-lora.safetensors"),
        "lora",
        (
            "TCD LoRA Loader tcd_lora: 'not-a-lora.safetensors' is not a LoRA",
            "none of its 3 tensors is a weight that ComfyUI's LoRA loader reads",
        ),
        "Error in TCD LoRA Loader: `TCD LoRA Loader tcd_lora: 'not-a-lora.safetensors' is not a LoRA: none of "
        "its 3 tensors is a weight that ComfyUI's LoRA loader reads (LoRA/LoCon, DoRA, LoHa, LoKr, OFT, BOFT, "
        "GLoRA, diff, norm)`",
    ),
    BadInput(
        "lora-path-traversal",
        "TCD LoRA Loader `tcd_lora` `../checkpoints/tcd-test-sd15.safetensors` (outside the loras folders)",
        tcd_lora("../checkpoints/" + CKPT),
        "lora",
        (
            f"TCD LoRA Loader tcd_lora: LoRA '../checkpoints/{CKPT}' is not in ComfyUI's loras folders",
            "pick one from the list",
        ),
        f"Prompt refused (HTTP 400) on the TCD LoRA Loader node: `TCD LoRA Loader tcd_lora: LoRA "
        f"'../checkpoints/{CKPT}' is not in ComfyUI's loras folders; pick one from the list` (nothing is read)",
        input_name="tcd_lora",
        rejected=True,
    ),
    BadInput(
        "ksampler-denoise-past-grid",
        "KSampler `tcd`/`tcd` with `steps` 11 and `denoise` 0.01 (KSampler asks for 11 / 0.01 = 1100 steps)",
        ksampler_tcd(steps=11, denoise=0.01),
        "sample",
        (
            "KSampler scheduler 'tcd': 1100 schedule steps asked for (steps / denoise when denoise is below 1)",
            "TCD's grid has at most 1000 timesteps: lower steps or raise denoise",
        ),
        "Error in KSampler: `KSampler scheduler 'tcd': 1100 schedule steps asked for (steps / denoise when "
        "denoise is below 1), but TCD's grid has at most 1000 timesteps: lower steps or raise denoise`",
    ),
    BadInput(
        "latent-nan",
        "A latent holding NaN (LoadLatent of a .latent file) into SamplerCustom with TCD Sampler",
        nan_latent,
        "sample",
        ("TCD Sampler: the latent to sample holds NaN or infinite values", "check the nodes that made it"),
        "Error in SamplerCustom: `TCD Sampler: the latent to sample holds NaN or infinite values; check the "
        "nodes that made it` (before any model call)",
    ),
    BadInput(
        "timesteps-not-integers",
        "TCD Scheduler `timesteps` `999, 12.5, 499`",
        set_input("scheduler", timesteps="999, 12.5, 499"),
        "scheduler",
        ("TCD Scheduler timesteps entry 2 ('12.5') is not a whole number", TIMESTEPS_FORM),
        "Prompt refused (HTTP 400) on the TCD Scheduler node: `TCD Scheduler timesteps entry 2 ('12.5') is not a "
        f"whole number; {TIMESTEPS_FORM} (e.g. '999, 749, 499, 249' or '800')`",
        input_name="timesteps",
        rejected=True,
    ),
    BadInput(
        "timesteps-not-descending",
        "TCD Scheduler `timesteps` `499, 749`",
        set_input("scheduler", timesteps="499, 749"),
        "scheduler",
        ("TCD Scheduler timesteps entry 2 (749) is not below the entry before it (499)", TIMESTEPS_FORM),
        "Prompt refused (HTTP 400) on the TCD Scheduler node: `TCD Scheduler timesteps entry 2 (749) is not below "
        f"the entry before it (499); {TIMESTEPS_FORM} (e.g. '999, 749, 499, 249' or '800')`",
        input_name="timesteps",
        rejected=True,
    ),
    BadInput(
        "timesteps-out-of-range",
        "TCD Scheduler `timesteps` `1000, 499`",
        set_input("scheduler", timesteps="1000, 499"),
        "scheduler",
        ("TCD Scheduler timesteps entry 1 (1000) is outside the training timesteps 0..999", TIMESTEPS_FORM),
        "Prompt refused (HTTP 400) on the TCD Scheduler node: `TCD Scheduler timesteps entry 1 (1000) is outside "
        f"the training timesteps 0..999; {TIMESTEPS_FORM} (e.g. '999, 749, 499, 249' or '800')`",
        input_name="timesteps",
        rejected=True,
    ),
    BadInput(
        "timesteps-empty-entry",
        "TCD Scheduler `timesteps` `999,,499`",
        set_input("scheduler", timesteps="999,,499"),
        "scheduler",
        ("TCD Scheduler timesteps entry 2 is empty (two separators in a row, or one at an end)", TIMESTEPS_FORM),
        "Prompt refused (HTTP 400) on the TCD Scheduler node: `TCD Scheduler timesteps entry 2 is empty (two "
        f"separators in a row, or one at an end); {TIMESTEPS_FORM} (e.g. '999, 749, 499, 249' or '800')`",
        input_name="timesteps",
        rejected=True,
    ),
    BadInput(
        "distill-empty-dataset",
        "TCD Distill LoRA `latents`: an empty dataset (LoadLatent of a .latent file holding zero latents)",
        empty_dataset,
        "distill",
        ("TCD Distill LoRA latents: the dataset is empty",),
        "Error in TCD Distill LoRA: `TCD Distill LoRA latents: the dataset is empty: give at least one latent (e.g. "
        "VAE Encode of an image)` (before any training)",
    ),
    BadInput(
        "distill-conditioning-count",
        "TCD Distill LoRA `positive`: 2 conditionings (Conditioning Combine) for 3 latents",
        distill_lora(
            {
                "combined": {
                    "class_type": "ConditioningCombine",
                    "inputs": {"conditioning_1": ["positive", 0], "conditioning_2": ["negative", 0]},
                },
                "three": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 3}},
            },
            {"positive": ["combined", 0], "latents": ["three", 0]},
        ),
        "distill",
        ("TCD Distill LoRA positive: 2 conditionings for 3 latents", "give one for all or one per latent"),
        "Error in TCD Distill LoRA: `TCD Distill LoRA positive: 2 conditionings for 3 latents: give one for all or "
        "one per latent` (before any training)",
    ),
    BadInput(
        "distill-latent-channels",
        "TCD Distill LoRA `latents`: 16-channel latents (EmptySD3LatentImage) for an SD1.5 model",
        distill_lora(
            {"sd3": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}},
            {"latents": ["sd3", 0]},
        ),
        "distill",
        ("TCD Distill LoRA latents: latent 0 has shape (1, 16, 8, 8)", "this model takes 4-channel image latents"),
        "Error in TCD Distill LoRA: `TCD Distill LoRA latents: latent 0 has shape (1, 16, 8, 8), but this model "
        "takes 4-channel image latents [B, C, H, W] (encode the images with this model's VAE)` (before any training)",
    ),
    BadInput(
        "distill-flow-model",
        "TCD Distill LoRA `model`: an SD1.5 checkpoint sampled as a flow model (through ModelSamplingSD3)",
        distill_lora(
            {"flow": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["ckpt", 0], "shift": 3.0}}},
            {"model": ["flow", 0]},
        ),
        "distill",
        ("TCD Distill LoRA model: this model samples as a flow model", "remove the ModelSampling node that changed it"),
        "Error in TCD Distill LoRA: `TCD Distill LoRA model: this model samples as a flow model "
        "(ModelSamplingDiscreteFlow, CONST); its UNet distils on the discrete 1000-step VP schedule it was trained on, "
        "with eps or v prediction (SD1.x, SD2.x, SDXL): remove the ModelSampling node that changed it (flow "
        "distillation takes the flow families: SD3 / SD3.5, Flux.1-dev, Flux.1-schnell, Qwen-Image, Z-Image, Wan 2.2 "
        "TI2V 5B)` (before any training)",
    ),
    BadInput(
        "distill-x0-prediction",
        "TCD Distill LoRA `model`: an x0-prediction model (ModelSamplingDiscrete `x0`)",
        distill_lora(
            {
                "x0": {
                    "class_type": "ModelSamplingDiscrete",
                    "inputs": {"model": ["ckpt", 0], "sampling": "x0", "zsnr": False},
                }
            },
            {"model": ["x0", 0]},
        ),
        "distill",
        ("TCD Distill LoRA model: prediction type x0 is not supported", "eps- or v-prediction models"),
        "Error in TCD Distill LoRA: `TCD Distill LoRA model: prediction type x0 is not supported: distillation "
        "takes eps- or v-prediction models` (before any training)",
    ),
    BadInput(
        "distill-unsupported-family",
        "TCD Distill LoRA `model`: a model of a family the node does not distil (Lumina Image 2.0)",
        distill_lora(
            {**tiny_flow_model("Lumina2"), **flow_latents()}, {"model": ["flow_model", 0], "latents": ["sd3", 0]}
        ),
        "distill",
        (
            "TCD Distill LoRA model: this model is Lumina2 (ComfyUI's Lumina2 class), a family the node does not",
            "Flux.1-dev, Flux.1-schnell, Qwen-Image, Z-Image, Wan 2.2 TI2V 5B",
        ),
        "Error in TCD Distill LoRA: `TCD Distill LoRA model: this model is Lumina2 (ComfyUI's Lumina2 class), a family "
        "the node does not distil; it distils SD1.x, SD2.x and SDXL (eps or v) and the flow models SD3 / SD3.5, "
        "Flux.1-dev, Flux.1-schnell, Qwen-Image, Z-Image, Wan 2.2 TI2V 5B` (before any training)",
    ),
    BadInput(
        "distill-embedded-guidance-without-input",
        "TCD Distill LoRA `embedded_guidance_min` / `_max` 3.5 for an SD3.5 model (no embedded guidance input)",
        distill_lora(
            {**tiny_flow_model("SD3"), **flow_latents()},
            {"model": ["flow_model", 0], "latents": ["sd3", 0]},
            embedded_guidance_min=3.5,
            embedded_guidance_max=3.5,
        ),
        "distill",
        (
            "TCD Distill LoRA embedded_guidance_min: this SD3 / SD3.5 model has no embedded guidance input",
            "leave embedded_guidance_min and embedded_guidance_max at 0",
        ),
        "Error in TCD Distill LoRA: `TCD Distill LoRA embedded_guidance_min: this SD3 / SD3.5 model has no embedded "
        "guidance input (Flux.1-dev has one): leave embedded_guidance_min and embedded_guidance_max at 0; its teacher "
        "is guided by true CFG with the negative prompt (guidance_min, guidance_max)` (before any training)",
    ),
    BadInput(
        "distill-flow-latent-channels",
        "TCD Distill LoRA `latents`: 4-channel SD1.5 latents (EmptyLatentImage) for a Flux.1-dev model",
        distill_lora(tiny_flow_model("Flux"), {"model": ["flow_model", 0]}),
        "distill",
        ("TCD Distill LoRA latents: latent 0 has shape (1, 4, 8, 8), but this Flux.1-dev model takes 16-channel",),
        "Error in TCD Distill LoRA: `TCD Distill LoRA latents: latent 0 has shape (1, 4, 8, 8), but this Flux.1-dev "
        "model takes 16-channel image latents [B, 16, H, W] (encode the images with this model's VAE)` (before any "
        "training)",
    ),
    BadInput(
        "distill-guidance-min-above-max",
        "TCD Distill LoRA `guidance_min` 8 above `guidance_max` 4",
        distill_lora(guidance_min=8.0, guidance_max=4.0),
        "distill",
        ("TCD Distill LoRA guidance_min: must be <= guidance_max, got guidance_min=8.0 > guidance_max=4.0",),
        "Error in TCD Distill LoRA: `TCD Distill LoRA guidance_min: must be <= guidance_max, got guidance_min=8.0 > "
        "guidance_max=4.0` (before any training)",
    ),
    BadInput(
        "distill-algorithm-continues-lora",
        "TCD Distill LoRA `algorithm` LoHa with an `existing_lora` (a LoRA) to continue",
        distill_lora(algorithm="LoHa", existing_lora="tcd-test-lora-sd15.safetensors"),
        "distill",
        ("TCD Distill LoRA algorithm: LoHa cannot continue existing_lora, a LoRA: set algorithm to LoRA",),
        "Error in TCD Distill LoRA: `TCD Distill LoRA algorithm: LoHa cannot continue existing_lora, a LoRA: set "
        "algorithm to LoRA` (before any training)",
    ),
)

# Not an error: ComfyUI's guider (CFGGuider.sample) returns the latent unchanged for empty sigmas
# before any sampler runs, so TCD Sampler never sees them. Tested as it is, and documented.
EMPTY_SIGMAS_BAD_INPUT = "Empty sigmas into SamplerCustom with TCD Sampler (SplitSigmas past the end, low half)"
EMPTY_SIGMAS_SHOWN = (
    "No error: ComfyUI returns the latent unchanged before any sampler runs (TCD Sampler is never called), "
    "so the image is the decoded input latent"
)


def markdown_table() -> str:
    """The README's table of bad inputs: | bad input | what the user sees |."""
    rows = [(case.bad_input, case.shown) for case in BAD_INPUTS] + [(EMPTY_SIGMAS_BAD_INPUT, EMPTY_SIGMAS_SHOWN)]
    lines = ["| bad input | what the user sees |", "|---|---|"]
    lines += [f"| {bad} | {shown.replace('|', '&#124;')} |" for bad, shown in rows]
    return "\n".join(lines)


# --- talking to the server -----------------------------------------------------------------------


def submit(server: ComfyServer, graph: Graph) -> tuple[int, dict]:
    """POST /prompt: (HTTP status, ComfyUI's JSON answer), without raising on a refusal."""
    try:
        return 200, server.post_json("/prompt", {"prompt": graph, "client_id": server.client_id})
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode())


def finished(server: ComfyServer, prompt_id: str, timeout: float = 300.0) -> dict:
    """The /history entry of a prompt once it has finished, successfully or not."""
    deadline = time.monotonic() + timeout
    while True:
        entry = server.history(prompt_id)
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            return entry
        assert server.running, f"ComfyUI died while running {prompt_id}\n{server.log_tail()}"
        assert time.monotonic() < deadline, f"prompt {prompt_id} did not finish in {timeout:.0f} s"
        time.sleep(0.1)


def execution_error(entry: dict) -> dict:
    errors = [data for event, data in entry["status"].get("messages", []) if event == "execution_error"]
    assert len(errors) == 1, f"expected one execution_error, got status {json.dumps(entry['status'])[:3000]}"
    return errors[0]


def saved_image(server: ComfyServer, entry: dict) -> np.ndarray:
    (path,) = server.output_images(entry, "save")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def assert_still_runs_a_good_graph(server: ComfyServer) -> None:
    entry = server.run(tcd_graph(steps=1, prefix="tcd-bad-inputs-good"), timeout=300)
    assert entry["status"]["status_str"] == "success"
    pixels = saved_image(server, entry)
    assert pixels.shape == (64, 64, 3)


# --- the tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.case for case in BAD_INPUTS])
def test_bad_input_gives_a_clear_error_and_the_server_keeps_working(comfy_server: ComfyServer, case: BadInput) -> None:
    for fragment in case.expected:
        assert fragment in case.shown, f"the README table's text for {case.case} lacks {fragment!r}"
    graph = tcd_graph()
    case.change(graph, comfy_server)
    class_type = graph[case.node]["class_type"]
    status, answer = submit(comfy_server, graph)

    if case.rejected:
        assert status == 400, f"{case.case}: expected a validation error, got HTTP {status}: {answer}"
        assert answer["error"]["type"] == "prompt_outputs_failed_validation", answer
        node_error = answer["node_errors"].get(case.node)
        assert node_error is not None, f"{case.case}: the error is not on node {case.node!r}: {answer}"
        assert node_error["class_type"] == class_type
        errors = [e for e in node_error["errors"] if e["extra_info"].get("input_name") == case.input_name]
        assert errors, f"{case.case}: no error names input {case.input_name!r}: {node_error}"
        seen = [f"{e['message']}: {e['details']}" for e in errors]
        assert any(all(fragment in text for fragment in case.expected) for text in seen), (case.expected, seen)
    else:
        assert status == 200, f"{case.case}: validation refused a graph that should fail at execution: {answer}"
        entry = finished(comfy_server, answer["prompt_id"])
        assert entry["status"]["status_str"] == "error", entry["status"]
        error = execution_error(entry)
        assert (error["node_id"], error["node_type"]) == (case.node, class_type), error
        message = error["exception_message"]
        for fragment in case.expected:
            assert fragment in message, f"{case.case}: {fragment!r} not in {message!r}"
        assert "Traceback" not in message

    assert_still_runs_a_good_graph(comfy_server)


def test_empty_sigmas_return_the_latent_unchanged_before_tcd_runs(comfy_server: ComfyServer) -> None:
    """SplitSigmas past the end gives empty low sigmas. ComfyUI's CFGGuider.sample returns the latent as it
    is for empty sigmas before calling any sampler, so this is not an error: the image is the decoded input."""
    graph = tcd_graph(steps=2)
    sigmas_through("SplitSigmas", 1, step=10)(graph, comfy_server)
    entry = comfy_server.run(graph, timeout=300)
    unsampled = tcd_graph(prefix="tcd-bad-inputs-unsampled")
    unsampled["decode"]["inputs"]["samples"] = ["latent", 0]
    for node in ("scheduler", "tcd", "sample"):
        del unsampled[node]
    expected = saved_image(comfy_server, comfy_server.run(unsampled, timeout=300))
    np.testing.assert_array_equal(saved_image(comfy_server, entry), expected)
    assert_still_runs_a_good_graph(comfy_server)


def test_readme_table_lists_every_case() -> None:
    table = markdown_table()
    assert table.count("\n") == len(BAD_INPUTS) + 2
    assert len({case.case for case in BAD_INPUTS}) == len(BAD_INPUTS)
    stale = "README.md's table is stale: paste the output of `PYTHONPATH=. python tests/test_bad_inputs.py`"
    assert table in (REPO_ROOT / "README.md").read_text(), stale


if __name__ == "__main__":
    print(markdown_table())
