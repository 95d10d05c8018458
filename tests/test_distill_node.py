"""TCD Distill LoRA inside a real ComfyUI: in process on a tiny SD1.5-family UNet (real BaseModel,
ModelPatcher, weight adapters and LoRA loading) for the fine checks, and through the HTTP server for
training, saving, reloading, sampling and Cancel, on a single-file checkpoint that ComfyUI's
CheckpointLoaderSimple detects as SD1.5 (devkit.tiny_checkpoint: the test checkpoint's real-size CLIP-L
and VAE, a one-level UNet), so that a training step takes milliseconds instead of a minute."""

from __future__ import annotations

import functools
import importlib
import shutil
import time
import urllib.request
import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from devkit.build_test_models import SD15_UNET_CONFIG
from devkit.host import ComfyServer
from devkit.inprocess import Comfy, load_comfy, run_node
from devkit.model_files import default_models_dir

NODE_ID = "TrajectoryConsistencyDistillLoRA"
CKPT = "tcd-tiny-sd15.safetensors"  # devkit.tiny_checkpoint.NAME, built into the models folder by ``tiny_checkpoint``
CONTEXT_DIM = 64
# ComfyUI's SD1.5 UNet layout, shrunk: the same block kinds (resnets, spatial transformers, down/up samplers).
TINY_SD15_UNET = {
    **SD15_UNET_CONFIG,
    "model_channels": 32,
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "channel_mult": [1, 2],
    "context_dim": CONTEXT_DIM,
    "num_heads": 2,
    "transformer_depth_output": [1, 1, 1, 1],
}


# --- in process ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comfy(test_models: dict) -> Comfy:
    return load_comfy(default_models_dir())


@pytest.fixture(scope="module")
def node(comfy: Comfy) -> Any:
    return comfy.node(NODE_ID)


@pytest.fixture(scope="module")
def training(comfy: Comfy) -> SimpleNamespace:
    """The pack's distillation modules as ComfyUI loaded them, as one namespace."""
    return comfy.pack_names(
        "tcd_comfy.distill_model",
        "tcd_comfy.distill_data",
        "tcd_comfy.lora_adapters",
        "tcd_comfy.distill_run",
        "tcd_core.distill",
        "tcd_core.distiller",
    )


def host_training(training: SimpleNamespace) -> Any:
    return importlib.import_module(f"{training.DistillRun.__module__.rsplit('.', 1)[0]}.host_training")


def tiny_model(seed: int = 0) -> Any:
    """A random-weight SD1.5-family model (ComfyUI's SD15 config class) in a real ModelPatcher, fp32."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from devkit.build_test_models import fill_module

    config = comfy.supported_models.SD15(dict(TINY_SD15_UNET, dtype=torch.float32))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    fill_module(base.diffusion_model, torch.Generator().manual_seed(seed), weight_std=0.05)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def conditioning(seed: int, count: int = 1) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, CONTEXT_DIM, generator=gen), {}] for _ in range(count)]


def latents(count: int = 2, size: int = 8, seed: int = 7) -> dict:
    return {"samples": torch.randn(count, 4, size, size, generator=torch.Generator().manual_seed(seed))}


# The widgets of a tiny run (2 steps, rank 4, fp32), in-process and through the server.
DISTILL_WIDGETS = {
    "batch_size": 2,
    "grad_accumulation_steps": 1,
    "steps": 2,
    "learning_rate": 0.01,  # large, so that 2 steps visibly change a random-weight model's image
    "rank": 4,
    "optimizer": "AdamW",
    "seed": 0,
    "training_dtype": "fp32",
    "lora_dtype": "fp32",
    "gradient_checkpointing": True,
    "existing_lora": "None",
    "guidance_min": 3.0,
    "guidance_max": 15.0,
    "num_ddim_timesteps": 50,
    "ema_decay": 0.0,
    "loss": "huber",
    "huber_c": 0.001,
    "s_rule": "uniform",
    "s_zero_share": 0.2,
    "method": "tcd",
}


def inputs(**overrides: Any) -> dict:
    """The node's inputs as ComfyUI passes them to an is_input_list node: every value in a list."""
    values = {
        "model": tiny_model(),
        "latents": latents(),
        "positive": conditioning(1),
        "negative": conditioning(2),
        **DISTILL_WIDGETS,
        "learning_rate": 1e-3,
    }
    values.update(overrides)
    return {name: value if isinstance(value, list) and name in ("latents", "positive", "negative") else [value]
            for name, value in values.items()}  # fmt: skip


def run(node: Any, **overrides: Any) -> tuple:
    """Execute the node as ComfyUI does: under torch.inference_mode."""
    with torch.inference_mode():
        return tuple(node.execute(**inputs(**overrides)).args)


@functools.cache
def default_run(node: Any) -> tuple:
    """``run(node)`` once per module: the reference the mechanism tests compare with."""
    return run(node)


def unet_output(model: Any, seed: int = 3) -> torch.Tensor:
    """The model's raw UNet output on fixed input, as sampling computes it (ComfyUI loads and patches it)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    context = torch.randn(1, 77, CONTEXT_DIM, generator=gen)
    with torch.no_grad():
        return model.model.diffusion_model(x, torch.tensor([500.0]), context=context).clone()


def weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}


def test_the_node_is_registered_with_train_loras_outputs(comfy: Comfy, node: Any) -> None:
    schema = node.define_schema()
    assert (schema.node_id, schema.display_name, schema.category) == (NODE_ID, "TCD Distill LoRA", "training")
    assert [o.io_type for o in schema.outputs] == ["MODEL", "LORA_MODEL", "LOSS_MAP", "INT"]
    train_lora = comfy.node("TrainLoraNode").define_schema()
    # Train LoRA's outputs are 0.3.75's MODEL, LORA_MODEL, LOSS_MAP, INT; newer ComfyUI drops MODEL. Every one of
    # them is here, in Train LoRA's order, so SaveLoRA / LossGraphNode take ours unchanged on either version.
    ours = [o.io_type for o in schema.outputs]
    theirs = [o.io_type for o in train_lora.outputs]
    assert [t for t in ours if t in theirs] == theirs
    names = [i.id for i in schema.inputs]
    assert names[:4] == ["model", "latents", "positive", "negative"]
    shared = {"batch_size", "grad_accumulation_steps", "steps", "learning_rate", "rank", "optimizer", "seed",
              "training_dtype", "lora_dtype", "gradient_checkpointing", "existing_lora"}  # fmt: skip
    assert shared <= set(names) and shared <= {i.id for i in train_lora.inputs}
    assert all(i.tooltip for i in schema.inputs)


def test_training_leaves_the_input_model_and_its_weights_untouched(node: Any) -> None:
    model = tiny_model()
    before_out, before_weights = unet_output(model), weights(model)
    patches, wrappers = dict(model.patches), dict(model.weight_wrapper_patches)
    model_lora, lora, loss_map, steps = run(node, model=model)

    assert steps == 2 and len(loss_map["loss"]) == 2 and all(np.isfinite(loss_map["loss"]))
    assert model.patches == patches and model.weight_wrapper_patches == wrappers
    after = weights(model)
    assert after.keys() == before_weights.keys()
    assert all(torch.equal(after[k], before_weights[k]) for k in after), "the teacher's weights changed"
    for module in model.model.diffusion_model.modules():
        assert not getattr(module, "weight_function", []), "a training adapter was left on a layer"
        assert not getattr(module, "bias_function", []), "a training wrapper was left on a layer"
    torch.testing.assert_close(unet_output(model), before_out, rtol=0, atol=0)
    assert not unet_output(model_lora).equal(before_out), "the returned model does not carry the LoRA"


def test_lora_is_in_train_loras_format_and_every_key_patches(node: Any, training: SimpleNamespace) -> None:
    import comfy.lora

    model = tiny_model()
    _, lora, _, _ = run(node, model=model)
    targets = [name for name, _ in training.lora_targets(model.model)]
    assert targets and all(name.startswith("diffusion_model.") for name in targets)
    expected = {f"{name}.{part}" for name in targets for part in ("lora_up.weight", "lora_down.weight", "alpha")}
    assert set(lora) == expected
    assert all(t.dtype == torch.float32 and not t.requires_grad and t.device.type == "cpu" for t in lora.values())
    assert all(lora[f"{name}.lora_down.weight"].shape[0] == 4 for name in targets)

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(lora, key_map)
    assert len(patches) == len(targets)
    assert set(model.clone().add_patches(patches, 1.0)) == {f"{name}.weight" for name in targets}


@pytest.mark.parametrize("bypass", [False, True], ids=["weight-wrappers", "bypass-mechanism"])
def test_teacher_is_the_model_with_adapters_off_and_only_the_lora_trains(
    training: SimpleNamespace, bypass: bool
) -> None:
    """With weight wrappers, and in bypass mode (forward hooks) on a host that has it (else refused)."""
    host = host_training(training).HostTraining(bypass_mode=bypass)
    if bypass and host.missing():
        with pytest.raises(ValueError, match="bypass_mode: .*ComfyUI 0.30.0 or newer has it"):
            host.check_host()
        return
    model = tiny_model()
    reference = unet_output(model)
    args = inputs(model=model)
    facts = training.model_facts(model)
    dataset = training.build_dataset(model, args["latents"], args["positive"], args["negative"], facts)
    config = training.DistillConfig(prediction_type=facts.prediction_type)
    settings = training.TrainSettings(rank=4, batch_size=2, learning_rate=1e-3, training_dtype="fp32")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    context = torch.randn(1, 77, CONTEXT_DIM, generator=gen)
    t = torch.tensor([500])
    with training.DistillRun(model, dataset, facts, config, settings, host=host) as trainer:
        trainer.step()
        params = trainer.model.params
        grads_seen = [p for p in params if p.grad is not None]
        assert not grads_seen, "gradients were left after the optimizer step"
        for batch in trainer.micro_batch():
            trainer.distiller.loss(batch).backward()
        assert all(p.grad is not None for p in params), "a LoRA factor got no gradient"
        assert not any(p.requires_grad for p in model.model.parameters()), "base weights are trainable"
        with torch.no_grad():
            teacher = trainer.model.teacher(x, t, {"c_crossattn": context})
            student = trainer.model.student(x, t, {"c_crossattn": context})
        torch.testing.assert_close(teacher, reference, rtol=0, atol=0)
        assert not torch.equal(student, teacher), "the trained adapters do not act on the student"
        assert trainer.model.lora.switch.enabled


def test_same_seed_same_losses_and_another_seed_differs(node: Any) -> None:
    first = run(node, seed=5)[2]["loss"]
    assert run(node, seed=5)[2]["loss"] == first
    assert run(node, seed=6)[2]["loss"] != first


@pytest.mark.parametrize(
    "overrides",
    [
        {"ema_decay": 0.95, "loss": "l2"},
        {"method": "lcm", "s_rule": "uniform+zero-ramp", "grad_accumulation_steps": 2, "optimizer": "SGD"},
        {"guidance_min": 0.0, "guidance_max": 0.0, "training_dtype": "bf16", "lora_dtype": "bf16"},
    ],
    ids=["ema-l2", "lcm-accumulation", "unguided-bf16"],
)
def test_other_settings_train(node: Any, overrides: dict) -> None:
    _, lora, loss_map, _ = run(node, **overrides)
    assert len(loss_map["loss"]) == 2 and all(np.isfinite(loss_map["loss"]))
    dtype = torch.bfloat16 if overrides.get("lora_dtype") == "bf16" else torch.float32
    assert all(t.dtype == dtype for t in lora.values())
    assert any(k.endswith("lora_down.weight") and t.abs().sum() > 0 for k, t in lora.items()), "nothing trained"


def test_a_diverging_run_stops_with_an_error_naming_the_step_and_returns_nothing(node: Any) -> None:
    """RMSprop at learning rate 1 with guidance 100 overflows within a few steps (seeded: at step 3)."""
    with pytest.raises(RuntimeError, match=r"TCD Distill LoRA: training diverged at step \d+: the loss is not finite"
                       r".*No LoRA was returned: lower learning_rate"):  # fmt: skip
        run(node, optimizer="RMSprop", learning_rate=1.0, steps=8, guidance_min=100.0, guidance_max=100.0)


def test_batched_latent_and_list_of_latents_train_the_same(node: Any) -> None:
    batched = latents(2)
    as_list = [{"samples": batched["samples"][i : i + 1]} for i in range(2)]
    per_image = conditioning(1) + conditioning(1)
    one = run(node, latents=[batched], positive=[conditioning(1)])
    two = run(node, latents=as_list, positive=[[entry] for entry in per_image])
    assert one[2]["loss"] == two[2]["loss"]
    assert all(torch.equal(one[1][k], two[1][k]) for k in one[1])


def test_mixed_sizes_train(node: Any) -> None:
    mixed = [latents(1, 8, seed=1), latents(1, 16, seed=2)]
    assert len(run(node, latents=mixed)[2]["loss"]) == 2


def test_continuing_from_a_saved_lora_starts_from_its_weights(node: Any, training: SimpleNamespace) -> None:
    model = tiny_model()
    lora = run(node, model=model)[1]
    adapters = training.read_existing_lora(model.model, lora)
    assert set(adapters) == {k.rsplit(".", 2)[0] for k in lora if k.endswith("lora_up.weight")}
    continued = training.attach_lora(model.clone(), rank=8, dtype=torch.float32, seed=0, existing=adapters)
    for key, tensor in continued.state_dict().items():
        torch.testing.assert_close(tensor, lora[key], rtol=0, atol=0)


def test_v_prediction_is_distilled_as_v_and_other_samplings_refused(comfy: Comfy, training: SimpleNamespace) -> None:
    sampling = comfy.node("ModelSamplingDiscrete")
    model = tiny_model()
    v_model = run_node(sampling, model=model, sampling="v_prediction", zsnr=False)[0]
    assert training.model_facts(v_model).prediction_type == "v"
    assert training.model_facts(model).prediction_type == "eps"
    for kind, fragment in (("x0", "prediction type x0"), ("lcm", "1000-step")):
        with pytest.raises(ValueError, match=fragment):
            training.model_facts(run_node(sampling, model=model, sampling=kind, zsnr=False)[0])
    flow = run_node(comfy.node("ModelSamplingSD3"), model=model, shift=3.0)[0]
    with pytest.raises(ValueError, match="samples as a flow model .*remove the ModelSampling node that changed it"):
        training.model_facts(flow)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"latents": [{"samples": torch.zeros(0, 4, 8, 8)}]}, ("TCD Distill LoRA latents:", "the dataset is empty")),
        ({"latents": []}, ("TCD Distill LoRA latents:", "the dataset is empty")),
        ({"positive": [conditioning(1, 3)]}, ("TCD Distill LoRA positive:", "3 conditionings for 2 latents")),
        ({"negative": [conditioning(2, 3)]}, ("TCD Distill LoRA negative:", "3 conditionings for 2 latents")),
        ({"latents": [{"samples": torch.zeros(2, 16, 8, 8)}]}, ("TCD Distill LoRA latents:", "4-channel")),
        ({"latents": [{"samples": torch.zeros(2, 4, 9, 9)}]}, ("TCD Distill LoRA latents:", "multiples of 8")),
        ({"guidance_min": 8.0, "guidance_max": 4.0}, ("TCD Distill LoRA guidance_min:", "<= guidance_max")),
        ({"existing_lora": "no-such.safetensors"}, ("TCD Distill LoRA existing_lora:", "not in ComfyUI's loras")),
    ],
    ids=[
        "empty-batch",
        "no-latents",
        "positive-count",
        "negative-count",
        "channels",
        "odd-size",
        "guidance",
        "existing-lora",
    ],  # fmt: skip
)
def test_bad_inputs_are_refused_before_training(node: Any, overrides: dict, fragments: tuple) -> None:
    with pytest.raises(ValueError) as error:
        run(node, **overrides)
    for fragment in fragments:
        assert fragment in str(error.value)


# --- Train LoRA's newer inputs (issue 19): algorithm, training_dtype none, bucket mode, preview, host checks ---------


@pytest.mark.parametrize("algorithm", ["LoHa", "LoKr", "OFT"])
def test_other_adapter_families_train_and_every_key_patches(
    node: Any, training: SimpleNamespace, algorithm: str, caplog: pytest.LogCaptureFixture
) -> None:
    import comfy.lora
    import comfy.sd

    model = tiny_model()
    before = unet_output(model)
    _, lora, loss_map, _ = run(node, model=model, algorithm=algorithm, learning_rate=0.01)
    assert all(np.isfinite(loss_map["loss"]))
    assert not any("lora_up" in key for key in lora), f"{algorithm} saved LoRA factors"
    targets = {name for name, _ in training.lora_targets(model.model)}
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    with caplog.at_level("WARNING"):
        patches = comfy.lora.load_lora(lora, key_map, log_missing=True)
    assert "not loaded" not in caplog.text, "a saved key was dropped"
    assert set(patches) == {f"{name}.weight" for name in targets}, "a layer's adapter did not load"
    assert {type(patch).__name__ for patch in patches.values()} == {f"{algorithm}Adapter"}
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)
    assert not unet_output(patched).equal(before), f"the trained {algorithm} does not change the prediction"


def test_training_dtype_none_on_an_fp32_model_trains_the_fp32_lora(node: Any) -> None:
    fp32 = run(node, training_dtype="fp32")
    native = run(node, training_dtype="none")
    assert native[2]["loss"] == fp32[2]["loss"]
    assert all(torch.equal(native[1][k], fp32[1][k]) for k in fp32[1])


def test_bucket_mode_draws_every_batch_from_one_size(node: Any, training: SimpleNamespace) -> None:
    """ResolutionBucket's output (one batched latent per size, one conditioning list per bucket) in bucket mode:
    each batch holds one size, the buckets drawn in proportion to their size; off, a batch mixes sizes."""
    model = tiny_model()
    buckets = [latents(3, 8, seed=1), latents(1, 16, seed=2)]
    positive = [conditioning(1, 3), conditioning(1, 1)]
    args = inputs(model=model, latents=buckets, positive=positive, batch_size=2)
    facts = training.model_facts(model)
    dataset = training.build_dataset(model, args["latents"], args["positive"], args["negative"], facts)
    assert dataset.buckets() == [[0, 1, 2], [3]]
    config = training.DistillConfig(prediction_type=facts.prediction_type)
    settings = training.TrainSettings(rank=4, batch_size=2, training_dtype="fp32")
    host_module = host_training(training)
    for bucket_mode in (True, False):
        host = host_module.HostTraining(bucket_mode=bucket_mode)
        run_ = training.DistillRun(model, dataset, facts, config, settings, host=host)
        draws = [run_.draw_indices() for _ in range(200)]
        sizes = {len({tuple(dataset.latents[i].shape) for i in draw}) for draw in draws}
        if bucket_mode:
            assert sizes == {1}, "a bucket-mode batch mixed sizes"
            share_small = sum(draw[0] < 3 for draw in draws) / len(draws)
            assert 0.6 < share_small < 0.9, share_small  # 3 of 4 images are in the small bucket
            assert {len(draw) for draw in draws} == {1, 2}  # the 1-image bucket gives a batch of 1
        else:
            assert 2 in sizes, "off, batches mix sizes as before"
    trained = run(node, latents=buckets, positive=positive, bucket_mode=True)
    assert len(trained[2]["loss"]) == 2 and all(np.isfinite(trained[2]["loss"]))


def test_previews_show_the_student_and_do_not_change_what_is_trained(comfy: Comfy, node: Any) -> None:
    import comfy.utils
    from PIL import Image

    shown: list[tuple[int, Any]] = []

    def hook(value: int, total: int, preview: Any, node_id: Any = None) -> None:
        if preview is not None:
            shown.append((value, preview))

    plain = run(node, steps=4)
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        previewed = run(node, steps=4, preview_every=2)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert [value for value, _ in shown] == [2, 4]
    for _, (kind, image, _size) in shown:
        assert kind == "JPEG" and isinstance(image, Image.Image) and image.size == (8, 8)
    first, last = (np.asarray(image, dtype=np.float32) for _, (_, image, _) in shown)
    assert np.abs(first - last).max() > 0, "the preview did not follow the student"
    assert previewed[2]["loss"] == plain[2]["loss"]
    assert all(torch.equal(previewed[1][k], plain[1][k]) for k in plain[1]), "previews changed the LoRA"


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"algorithm": "LoHa", "existing_lora": "x.safetensors"}, ("TCD Distill LoRA algorithm:", "set algorithm to")),
        ({"algorithm": "GLoRA"}, ("TCD Distill LoRA algorithm", "must be one of 'LoRA'")),
        ({"checkpoint_depth": 9}, ("TCD Distill LoRA checkpoint_depth", "1..5")),
        ({"preview_every": -1}, ("TCD Distill LoRA preview_every", "0..100000")),
        ({"training_dtype": "fp8"}, ("TCD Distill LoRA training_dtype", "'none'")),
    ],
    ids=["algorithm-existing", "algorithm", "depth", "preview", "dtype"],
)
def test_bad_newer_inputs_are_refused_before_training(node: Any, overrides: dict, fragments: tuple) -> None:
    with pytest.raises(ValueError) as error:
        run(node, **overrides)
    for fragment in fragments:
        assert fragment in str(error.value)


def fp8_model(seed: int = 0) -> Any:
    """``tiny_model``'s weights stored as float8_e4m3fn (computed in fp32 through ComfyUI's manual cast), as an
    fp8 checkpoint loads."""
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(TINY_SD15_UNET, dtype=torch.float8_e4m3fn))
    config.set_inference_dtype(torch.float8_e4m3fn, torch.float32)
    base = config.get_model({})
    reference = tiny_model(seed)
    base.diffusion_model.load_state_dict(reference.model.diffusion_model.state_dict())
    device = reference.load_device
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


# What each newer mechanism is asked with; on a host that has it, it trains the LoRA the default run trains (the
# same math, run another way: bit for bit, or to float rounding for bypass's separate adapter matmul).
MECHANISM_RUNS = {
    "bypass_mode": ({"bypass_mode": True}, 1e-4),
    "offloading": ({"offloading": True}, 0.0),
    "checkpoint_depth": ({"checkpoint_depth": 3}, 0.0),
    "quantized_backward": ({"quantized_backward": True}, 0.0),
}


@pytest.mark.parametrize("name", list(MECHANISM_RUNS))
def test_each_newer_mechanism_trains_on_a_host_that_has_it_and_is_refused_on_one_that_lacks_it(
    node: Any, training: SimpleNamespace, name: str
) -> None:
    host = host_training(training)
    overrides, tolerance = MECHANISM_RUNS[name]
    if not host.host_has(name):  # ComfyUI 0.3.75
        with pytest.raises(ValueError) as error:
            run(node, **overrides)
        message = str(error.value)
        assert message.startswith(f"TCD Distill LoRA {name}:") and "ComfyUI 0.30.0 or newer has it" in message
        return
    default = default_run(node)
    asked = run(node, **overrides)
    assert all(np.isfinite(asked[2]["loss"]))
    for key, tensor in default[1].items():
        torch.testing.assert_close(asked[1][key], tensor, rtol=tolerance, atol=tolerance)


def test_bypass_mode_trains_on_fp8_weights_with_the_teacher_the_untouched_base(
    node: Any, training: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    import comfy.lora
    import comfy.sd

    host = host_training(training)
    model = fp8_model()
    if not host.host_has("bypass_mode"):
        with pytest.raises(ValueError, match="TCD Distill LoRA bypass_mode: .*ComfyUI 0.30.0 or newer has it"):
            run(node, model=model, bypass_mode=True)
        return
    before_out, before_weights = unet_output(model), weights(model)
    assert {t.dtype for k, t in before_weights.items() if k.endswith(".weight")} == {torch.float8_e4m3fn}
    _, lora, loss_map, _ = run(node, model=model, bypass_mode=True, learning_rate=0.01)
    assert all(np.isfinite(loss_map["loss"]))
    after = weights(model)
    for key, tensor in before_weights.items():
        assert after[key].dtype == tensor.dtype and torch.equal(after[key].float(), tensor.float()), key
    for module in model.model.diffusion_model.modules():  # ejecting a hook re-binds the layer's own forward
        assert getattr(module.forward, "__func__", None) is type(module).forward, "a bypass hook was left on a layer"
    torch.testing.assert_close(unet_output(model), before_out, rtol=0, atol=0)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    with caplog.at_level("WARNING"):
        patches = comfy.lora.load_lora(lora, key_map, log_missing=True)
    assert "not loaded" not in caplog.text and len(patches) == len(lora) // 3, "a saved key was dropped"
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)
    assert not unet_output(patched).equal(before_out), "the LoRA trained on fp8 weights does not act"


# --- through the real server, on the SD1.5 test checkpoint ------------------------------------------------

Graph = dict[str, dict[str, Any]]


def training_images(server: ComfyServer, count: int = 2, size: int = 64) -> list[str]:
    """Seeded noise images in the server's input folder (64x64 pixels = 8x8 latents)."""
    rng = np.random.default_rng(11)
    names = []
    for i in range(count):
        name = f"tcd-distill-{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(server.input_dir / name)
        names.append(name)
    return names


def distill_graph(server: ComfyServer, **widgets: Any) -> Graph:
    """Checkpoint, two images -> ImageBatch -> VAE Encode (one batched LATENT), captions -> TCD Distill LoRA."""
    first, second = training_images(server)
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": "a paper cut fox", "clip": ["ckpt", 1]}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "image_1": {"class_type": "LoadImage", "inputs": {"image": first}},
        "image_2": {"class_type": "LoadImage", "inputs": {"image": second}},
        "images": {"class_type": "ImageBatch", "inputs": {"image1": ["image_1", 0], "image2": ["image_2", 0]}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["images", 0], "vae": ["ckpt", 2]}},
        "distill": {
            "class_type": NODE_ID,
            "inputs": {
                "model": ["ckpt", 0],
                "latents": ["encode", 0],
                "positive": ["positive", 0],
                "negative": ["negative", 0],
                **DISTILL_WIDGETS,
                **widgets,
            },
        },
    }


def add_sampling(graph: Graph, name: str, model: list, seed: int = 77, latent: list | None = None) -> None:
    """A 2-step TCD txt2img (TCD Scheduler + TCD Sampler, CFG 1) of ``model`` at 64x64, saved as ``name``."""
    if latent is None:
        graph["empty"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
        latent = ["empty", 0]
    graph[f"{name}_sigmas"] = {
        "class_type": "TrajectoryConsistencyScheduler",
        "inputs": {"model": model, "steps": 2, "original_inference_steps": 50, "strength": 1.0},
    }
    graph[f"{name}_sampler"] = {
        "class_type": "TrajectoryConsistencySampler",
        "inputs": {"gamma": 0.3, "gamma_schedule": "constant", "gamma_end": 0.3, "gamma_list": "0.3", "order": 1},
    }
    graph[f"{name}_sample"] = {
        "class_type": "SamplerCustom",
        "inputs": {
            "model": model,
            "add_noise": True,
            "noise_seed": seed,
            "cfg": 1.0,
            "positive": ["positive", 0],
            "negative": ["negative", 0],
            "sampler": [f"{name}_sampler", 0],
            "sigmas": [f"{name}_sigmas", 0],
            "latent_image": latent,
        },
    }
    graph[f"{name}_decode"] = {
        "class_type": "VAEDecode",
        "inputs": {"samples": [f"{name}_sample", 0], "vae": ["ckpt", 2]},
    }
    graph[name] = {"class_type": "SaveImage", "inputs": {"images": [f"{name}_decode", 0], "filename_prefix": name}}


def pixels(server: ComfyServer, entry: dict, node: str) -> np.ndarray:
    (path,) = server.output_images(entry, node)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def sampling_graph(server: ComfyServer) -> Graph:
    graph = distill_graph(server)
    return {k: v for k, v in graph.items() if k in ("ckpt", "positive", "negative")}


def test_trained_lora_saves_reloads_and_changes_tcd_sampling(comfy_server: ComfyServer, tiny_checkpoint: str) -> None:
    server = comfy_server
    before = sampling_graph(server)
    add_sampling(before, "plain_before", ["ckpt", 0])
    plain_before = pixels(server, server.run(before), "plain_before")

    prefix = f"loras/tcd-distill-{uuid.uuid4().hex[:8]}"
    graph = distill_graph(server)
    graph["save_lora"] = {
        "class_type": "SaveLoRA",
        "inputs": {"lora": ["distill", 1], "prefix": prefix, "steps": ["distill", 3]},
    }
    graph["loss_graph"] = {
        "class_type": "LossGraphNode",
        "inputs": {"loss": ["distill", 2], "filename_prefix": "tcd-loss"},
    }
    graph["lora_model"] = {
        "class_type": "LoraModelLoader",
        "inputs": {"model": ["ckpt", 0], "lora": ["distill", 1], "strength_model": 1.0},
    }
    loader_inputs = comfy_server.get_json("/object_info/LoraModelLoader")["LoraModelLoader"]["input"]["required"]
    if "bypass" in loader_inputs:  # newer ComfyUI (0.30): a required switch; off is 0.3.75's behaviour
        graph["lora_model"]["inputs"]["bypass"] = False
    add_sampling(graph, "trained", ["distill", 0])
    add_sampling(graph, "lora_model_loader", ["lora_model", 0])
    started = time.monotonic()
    entry = server.run(graph, timeout=600)
    print(f"training graph (2 steps, 2 latents 8x8, rank 4, fp32) ran in {time.monotonic() - started:.1f} s")
    assert server.output_images(entry, "loss_graph"), "Plot Loss Graph showed nothing"
    saved = sorted((server.output_dir / "loras").glob(prefix.split("/")[1] + "_2_steps_*.safetensors"))
    assert len(saved) == 1, list((server.output_dir / "loras").iterdir())
    trained = pixels(server, entry, "trained")
    assert not np.array_equal(trained, plain_before), "the trained LoRA does not change TCD sampling"
    np.testing.assert_array_equal(pixels(server, entry, "lora_model_loader"), trained)

    loras_dir = default_models_dir() / "loras"
    name = f"{saved[0].stem}-{uuid.uuid4().hex[:6]}.safetensors"
    shutil.copyfile(saved[0], loras_dir / name)
    try:
        reload = sampling_graph(server)
        reload["lora_loader"] = {
            "class_type": "LoraLoader",
            "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_name": name, "strength_model": 1.0,
                       "strength_clip": 0.0},
        }  # fmt: skip
        styles = {f"style_lora_{i}": "None" for i in (1, 2, 3)} | {f"style_lora_{i}_strength": 1.0 for i in (1, 2, 3)}
        reload["tcd_lora_loader"] = {
            "class_type": "TrajectoryConsistencyLoraLoader",
            "inputs": {"model": ["ckpt", 0], "tcd_lora": name, "tcd_lora_strength": 1.0, **styles},
        }
        reload["unchanged"] = {"class_type": "LatentMultiply", "inputs": {"samples": ["empty", 0], "multiplier": 1.0}}
        add_sampling(reload, "comfy_lora_loader", ["lora_loader", 0])
        add_sampling(reload, "tcd_lora_loader_image", ["tcd_lora_loader", 0])
        add_sampling(reload, "plain_after", ["ckpt", 0], latent=["unchanged", 0])  # a fresh run of the plain model
        entry = server.run(reload, timeout=600)
    finally:
        (loras_dir / name).unlink()
    np.testing.assert_array_equal(pixels(server, entry, "comfy_lora_loader"), trained)
    np.testing.assert_array_equal(pixels(server, entry, "tcd_lora_loader_image"), trained)
    np.testing.assert_array_equal(pixels(server, entry, "plain_after"), plain_before)
    log = server.log_text()
    assert "lora key not loaded" not in log and "fits this model partly" not in log


def test_cancel_stops_training_within_a_step_and_the_server_keeps_serving(
    comfy_server: ComfyServer, tiny_checkpoint: str
) -> None:
    """Cancel is checked before every step: a 100000-step run stops within a few seconds of /interrupt
    (a step of the tiny UNet takes milliseconds), saves nothing, and the server samples afterwards."""
    server = comfy_server
    marker = 900_000 + int(uuid.uuid4().int % 1000)
    total = 100_000
    graph = distill_graph(server, steps=total, seed=marker)
    graph["save_lora"] = {"class_type": "SaveLoRA", "inputs": {"lora": ["distill", 1], "prefix": "loras/cancelled"}}
    prompt_id = server.queue(graph)
    deadline = time.monotonic() + 300
    started = f"TCD Distill LoRA: training with seed {marker}"
    while f"| 0/{total} [" not in server.log_text().partition(started)[2]:  # the console bar: training began
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    time.sleep(1.0)  # some steps in
    interrupted = time.monotonic()
    urllib.request.urlopen(urllib.request.Request(server.url + "/interrupt", data=b"", method="POST"), timeout=30)
    while (entry := server.history(prompt_id)) is None or entry["status"].get("completed") is None:
        assert time.monotonic() - interrupted < 120, "training did not stop after /interrupt"
        time.sleep(0.1)
    stopped_after = time.monotonic() - interrupted
    print(f"training stopped {stopped_after:.1f} s after /interrupt")
    events = [event for event, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in events, entry["status"]
    assert not list((server.output_dir / "loras").glob("cancelled*")), "a cancelled run saved a LoRA"
    assert stopped_after < 30, "Cancel did not stop within a step"  # a missed Cancel would run 100000 steps
    assert f"| {total}/{total} [" not in server.log_text().partition(started)[2], "training went on past the Cancel"

    after = sampling_graph(server)
    add_sampling(after, "after_cancel", ["ckpt", 0], seed=78)
    assert pixels(server, server.run(after), "after_cancel").shape == (64, 64, 3)


def test_a_diverging_run_fails_in_the_server_which_keeps_serving(
    comfy_server: ComfyServer, tiny_checkpoint: str
) -> None:
    """Through the HTTP server: the error names the node and the step, SaveLoRA writes nothing, and the next
    prompt runs."""
    server = comfy_server
    prefix = f"loras/diverged-{uuid.uuid4().hex[:8]}"
    graph = distill_graph(server, optimizer="RMSprop", learning_rate=1.0, steps=20, guidance_min=100.0,
                          guidance_max=100.0)  # fmt: skip
    graph["save_lora"] = {"class_type": "SaveLoRA", "inputs": {"lora": ["distill", 1], "prefix": prefix}}
    prompt_id = server.queue(graph)
    deadline = time.monotonic() + 300
    while (entry := server.history(prompt_id)) is None or entry["status"].get("completed") is None:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert errors and "training diverged at step" in errors[0]["exception_message"], entry["status"]
    assert not list((server.output_dir / "loras").glob(prefix.split("/")[1] + "*")), "a diverged run saved a LoRA"
    after = sampling_graph(server)
    add_sampling(after, "after_divergence", ["ckpt", 0], seed=79)
    assert pixels(server, server.run(after), "after_divergence").shape == (64, 64, 3)
