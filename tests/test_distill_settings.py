"""Each distillation setting is stated once (tcd_core.settings metadata on DistillConfig and TrainSettings), and
the core, the node and the trainer (its generated options and checks) accept and refuse the same values.

The node refuses a value when ComfyUI's own prompt validation (execution.validate_inputs) refuses it, or
else when its execute refuses it before training starts. ComfyUI 0.3.75 does not check a V3 combo's value
against its options when a prompt is queued, so a bad choice reaches the node, which refuses it naming
the input."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from comfyui_tcd_sampling.tcd_core.distill import DistillConfig
from comfyui_tcd_sampling.tcd_core.distiller import TrainSettings
from comfyui_tcd_sampling.tcd_core.errors import TCDInputError
from comfyui_tcd_sampling.tcd_core.settings import Setting, setting_of, settings_of
from comfyui_tcd_sampling.tcd_train.options import TrainerError, build_parser, check_options

from devkit.inprocess import load_comfy
from devkit.model_files import default_models_dir

NODE_ID = "TrajectoryConsistencyDistillLoRA"
CKPT = "tcd-test-sd15.safetensors"
EDGES: dict[str, list[Any]] = {  # values next to a bound that a generic probe would miss
    "ema_decay": [1.0, 0.99995],
    "huber_c": [0.0, 5e-7],
    "learning_rate": [0.0, 5e-8],
    "seed": [2**64, -1],
    "guidance_min": [100.0, 100.5],
}
COMPANIONS = {"guidance_min": {"guidance_max": 100.0}, "guidance_max": {"guidance_min": 0.0}}
"""Other fields set while one is probed, so that a cross-field rule (min <= max) does not mask its bounds."""


def probes(spec: Setting, default: Any, name: str) -> list[Any]:
    if spec.choices is not None:
        return [*spec.choices, "not-a-choice", spec.choices[0].upper()]
    if spec.kind is int:
        values = [default, spec.low, spec.high, spec.low - 1, spec.high + 1]
    else:
        below = spec.low / 2 if spec.low > 0 else spec.low - 0.5
        values = [default, spec.low, spec.high, below, spec.high * 1.5 if spec.high > 0 else 0.5]
    return [*values, *EDGES.get(name, [])]


def cases(shown: str) -> list[tuple[type, str, Any]]:
    out = []
    for cls in (DistillConfig, TrainSettings):
        for name, (spec, default) in settings_of(cls).items():
            if spec.kind is bool or not getattr(spec, shown):
                continue
            out += [(cls, name, value) for value in probes(spec, default, name)]
    return out


def core_accepts(cls: type, name: str, value: Any) -> bool:
    try:
        cls(**{**COMPANIONS.get(name, {}), name: value})
    except TCDInputError as error:
        assert error.field == name
        return False
    return True


# --- the node -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validate(test_models: dict) -> Any:
    """ComfyUI's own prompt validation (execution.validate_inputs) of a graph feeding the node."""
    load_comfy(default_models_dir())
    import execution

    defaults = {name: default for cls in (TrainSettings, DistillConfig)
                for name, (spec, default) in settings_of(cls).items() if spec.node}  # fmt: skip

    def accepts(values: dict[str, Any]) -> bool:
        prompt = {
            "1": {"class_type": NODE_ID, "inputs": {
                "model": ["2", 0], "latents": ["3", 0], "positive": ["4", 0], "negative": ["4", 0],
                "existing_lora": "None", **defaults, **values}},
            "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
            "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["2", 1]}},
        }  # fmt: skip
        valid, errors, _ = asyncio.run(execution.validate_inputs("settings-test", prompt, "1", {}))
        assert valid or all(e["extra_info"]["input_name"] in values for e in errors), errors
        return bool(valid)

    assert accepts({}), "the graph with the node's defaults does not validate"
    return accepts


class TrainingStarted(Exception):
    pass


@pytest.fixture(scope="module")
def node_starts_training(validate: Any) -> Any:
    """Whether the node, given these widget values, gets as far as training (which is stopped right there)."""
    from test_distill_node import DISTILL_WIDGETS, conditioning, latents, tiny_model

    comfy = load_comfy(default_models_dir())
    node = comfy.node(NODE_ID)
    node_error = comfy.pack.tcd_core.errors.TCDInputError  # the pack as ComfyUI loaded it

    def starts(values: dict[str, Any]) -> bool:
        widgets = {**DISTILL_WIDGETS, **values}
        original = node.train

        def stop(*_: Any, **__: Any) -> None:
            raise TrainingStarted

        node.train = stop
        try:
            node.execute(model=[tiny_model()], latents=[latents()], positive=[conditioning(1)],
                         negative=[conditioning(2)], **{k: [v] for k, v in widgets.items()})  # fmt: skip
        except TrainingStarted:
            return True
        except node_error as error:
            assert error.field == next(iter(values)) and str(error).startswith(f"TCD Distill LoRA {error.field}: ")
            return False
        finally:
            node.train = original
        raise AssertionError("the node neither trained nor refused")

    return starts


@pytest.mark.parametrize(("cls", "name", "value"), cases("node"), ids=lambda v: getattr(v, "__name__", repr(v)))
def test_the_node_and_the_core_accept_the_same_values(
    validate: Any, node_starts_training: Any, cls: type, name: str, value: Any
) -> None:
    values = {name: value, **COMPANIONS.get(name, {})}
    node_accepts = validate(values) and node_starts_training(values)
    assert node_accepts == core_accepts(cls, name, value)


# --- the trainer --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer_accepts(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The trainer's parse and pre-load checks (nothing is loaded: the checkpoint is an empty file)."""
    folder = tmp_path_factory.mktemp("settings")
    checkpoint = folder / "model.safetensors"
    checkpoint.write_bytes(b"")
    options = {spec.option(name): (name, spec) for cls in (DistillConfig, TrainSettings)
               for name, (spec, _) in settings_of(cls).items() if spec.cli}  # fmt: skip
    flag_of = {name: flag for flag, (name, _) in options.items()}

    def accepts(values: dict[str, Any]) -> bool:
        argv = ["--pretrained_model", str(checkpoint), "--train_data_dir", str(folder)]
        for name, value in values.items():
            argv += [flag_of[name], str(value)]
        try:
            check_options(build_parser().parse_args(argv))
        except SystemExit:  # argparse: a choice or a type refused, naming the option
            return False
        except TrainerError as error:
            assert flag_of[next(iter(values))] in str(error) or len(values) > 1, error
            return False
        return True

    assert accepts({})
    return accepts


@pytest.mark.parametrize(("cls", "name", "value"), cases("cli"), ids=lambda v: getattr(v, "__name__", repr(v)))
def test_the_trainer_and_the_core_accept_the_same_values(
    trainer_accepts: Any, cls: type, name: str, value: Any, capsys: pytest.CaptureFixture
) -> None:
    values = {name: value, **COMPANIONS.get(name, {})}
    assert trainer_accepts(values) == core_accepts(cls, name, value)


def test_defaults_bounds_and_help_come_from_the_settings(trainer_accepts: Any) -> None:
    """The trainer's defaults are the settings' (the node's widgets are generated from the same fields,
    checked against the saved-workflow contract in test_node_contract)."""
    args = build_parser().parse_args(["--pretrained_model", "x"])
    for cls in (DistillConfig, TrainSettings):
        for name, (spec, default) in settings_of(cls).items():
            if spec.cli:
                assert getattr(args, name) == default, name
    help_text = build_parser().format_help()
    assert "(default: 0.95)" in help_text and "--w_min" in help_text and "--lora_rank" in help_text


def test_the_trainers_help_is_the_tooltip_unless_the_option_means_more_there() -> None:
    """--train_batch_size is per process and repeats images when the data holds fewer: its help says so, where the
    node's tooltip bounds it by the dataset; every other option's help is the node's tooltip."""
    actions = {action.dest: action for action in build_parser()._actions}
    for cls in (DistillConfig, TrainSettings):
        for name, (spec, _) in settings_of(cls).items():
            if spec.cli:
                assert actions[name].help == (spec.cli_tooltip or spec.tooltip), name
    batch = setting_of(TrainSettings, "batch_size")
    assert "dataset size" in batch.tooltip and "per process" in actions["batch_size"].help
    assert "dataset size" not in actions["batch_size"].help


def test_every_setting_field_has_a_tooltip_and_sane_bounds() -> None:
    for cls in (DistillConfig, TrainSettings):
        for field in dataclasses.fields(cls):
            spec, default = settings_of(cls)[field.name]
            assert spec.tooltip, field.name
            if spec.choices is None and spec.kind is not bool:
                assert spec.low is not None and spec.high is not None, field.name
                assert (default is None and spec.optional) or spec.low <= default <= spec.high, field.name


def test_nothing_else_states_a_bound() -> None:
    """No second copy of a setting's numbers: the node module and the trainer's options hold no min= / max=
    of their own for the settings (they are generated)."""
    root = Path(__file__).resolve().parents[1]
    node = (root / "nodes" / "distill_node.py").read_text()
    assert "min=" not in node and "max=" not in node and "default=DEFAULTS" not in node
    options = (root / "tcd_train" / "options.py").read_text()
    for flag in ("--w_min", "--lora_rank", "--learning_rate", "--train_batch_size", "--ema_decay"):
        assert f'"{flag}"' not in options, flag
