"""tcd-train on a flow model as users have one: a diffusion-model file (models/diffusion_models) with its text
encoder and VAE as separate files, and the single-file checkpoint (SD3.5's form), both through ComfyUI's own loaders.

SD3.5: a tiny random-weight MMDiT-X (depth 2: width 128) built with ComfyUI's classes by the test-only pack
(tests/fixture_packs/tiny_flow_models) with SD3's real text widths (T5's 4096-wide features, a 2048-wide pooled
vector), which ComfyUI's detection reads as SD3, so the files load through ``comfy.sd.load_diffusion_model``,
``load_clip`` (type SD3, CLIP-L alone: its features padded to 4096) and ``VAE`` as Load Diffusion Model, CLIPLoader and
VAE Loader load them (devkit.tiny_checkpoint.build_tiny_sd3_files). Flux.1-dev: detection reads Flux only at its real
width (24 heads of 128), so the file is the smallest such model (one block of each kind, 0.53 B parameters) with a
CLIP-L-wide text input, whose width detection takes from the file (tests/conftest.py, ``flux_file``). Qwen-Image and
Z-Image are not run through the trainer: detection fixes their widths and their text encoders (Qwen2.5-VL 7B, Qwen3
4B) have fixed sizes, so no small file of them loads; their loading is the same code with their own types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_distill_trainer import RANK, STEPS, finish, launch, one_thread, train_here, write_shards

from devkit.inprocess import Comfy, load_comfy
from devkit.model_files import default_models_dir


@pytest.fixture(scope="module")
def comfy(test_models: dict) -> Comfy:
    return load_comfy(default_models_dir())


@pytest.fixture(scope="module")
def files(tiny_sd3_files: dict[str, Path]) -> dict[str, Path]:
    return tiny_sd3_files


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_shards(tmp_path_factory.mktemp("flow-shards"))


def flow_args(model: Path, data: str, out: Path, *extra: str) -> list[str]:
    """A tiny run: 2 steps of batch 2 at 64x64 (8x8 latents), rank 4, true CFG 1..3 (w, SD3.5's range)."""
    return [
        "--cpu", "--pretrained_model", str(model), "--train_shards_path_or_url", data, "--resolution", "64",
        "--train_batch_size", "2", "--max_train_steps", str(STEPS), "--lr_warmup_steps", "0", "--lora_rank",
        str(RANK), "--learning_rate", "1e-2", "--output_dir", str(out), "--report_to", "none",
        "--checkpointing_steps", "100", "--seed", "11", "--w_min", "1", "--w_max", "3", *extra,
    ]  # fmt: skip


def separate(files: dict[str, Path]) -> list[str]:
    return ["--text_encoder", str(files["clip_l"]), "--vae", str(files["vae"])]


def loads_whole_and_changes_the_prediction(
    lora: dict[str, torch.Tensor], patcher: Any, conds: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> set[str]:
    """Assert that a trained ``lora`` holds exactly the node's layers of the loaded ``patcher`` (up, down, alpha each),
    that ComfyUI's LoRA loader turns every key into a patch, and that it changes the prediction on 16-channel 8x8
    latents at sigma 0.7 with ``conds``; returns the layers."""
    import comfy.lora
    import comfy.model_management
    import comfy.sd
    from comfyui_tcd_sampling.tcd_comfy.lora_adapters import lora_targets

    targets = {name for name, _ in lora_targets(patcher.model)}
    assert targets
    assert set(lora) == {f"{t}.{p}" for t in targets for p in ("lora_up.weight", "lora_down.weight", "alpha")}
    with caplog.at_level("WARNING"):
        patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(patcher.model, {}), log_missing=True)
    assert "not loaded" not in caplog.text and len(patches) == len(targets)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))

    def predict(model: Any) -> torch.Tensor:
        comfy.model_management.load_models_gpu([model])
        with torch.no_grad():
            return model.model.apply_model(x, torch.tensor([0.7]), **conds)

    before = predict(patcher)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)
    assert not torch.equal(predict(patched), before)
    return targets


def test_files_are_what_comfyuis_loaders_take_as_sd3(comfy: Comfy, files: dict[str, Path]) -> None:
    import comfy.sd
    from comfyui_tcd_sampling.tcd_train import engine

    family = engine.detect_family(str(files["diffusion_model"]))
    assert (family.name, family.flow, family.diffusion_model_only, family.pixel_multiple) == ("SD3", True, True, 16)
    whole = engine.detect_family(str(files["checkpoint"]))
    assert (whole.name, whole.diffusion_model_only, whole.has_text_encoder, whole.has_vae) == ("SD3", False, True, True)
    patcher = comfy.sd.load_diffusion_model(str(files["diffusion_model"]))
    assert type(patcher.model.model_config).__name__ == "SD3"
    clip = comfy.sd.load_clip([str(files["clip_l"])], clip_type=comfy.sd.CLIPType.SD3)
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a red square"), return_pooled=True)
    assert (cond.shape[-1], pooled.shape[-1]) == (4096, 2048)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(files["vae"])))
    assert vae.encode(torch.zeros(1, 64, 64, 3)).shape == (1, 16, 8, 8)


def test_a_diffusion_model_file_with_separate_text_encoder_and_vae_trains_through_tcd_train(
    comfy: Comfy, files: dict[str, Path], shards: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The command (a fresh process) on the diffusion-model file, --text_encoder and --vae: the LoRA holds the node's
    SD3 layers, ComfyUI's LoRA loader turns every key into a patch, and it changes the prediction."""
    import comfy.sd

    out = tmp_path / "separate"
    code, output = finish(launch(flow_args(files["diffusion_model"], shards, out, *separate(files))))
    assert code == 0, output[-6000:]
    patcher = comfy.sd.load_diffusion_model(str(files["diffusion_model"]))
    conds = {"c_crossattn": torch.randn(1, 77, 4096), "y": torch.randn(1, 2048)}
    targets = loads_whole_and_changes_the_prediction(load_file(out / "tcd_lora.safetensors"), patcher, conds, caplog)
    assert all(".joint_blocks." in name for name in targets)


def test_flux_dev_as_users_have_it_trains_through_tcd_train(
    comfy: Comfy, flux_file: Path, files: dict[str, Path], shards: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Flux.1-dev's diffusion-model file (ComfyUI detects Flux only at its real width: one double- and one single-stream
    block of width 3072, tests/conftest.py) with CLIP-L (--text_encoder, type FLUX) and the 16-channel VAE, the
    embedded guidance drawn in 3..4 and no CFG pass: the LoRA holds the node's Flux layers (double and single blocks),
    ComfyUI's LoRA loader turns every key into a patch, and it changes the prediction at g = 3.5."""
    import comfy.sd
    from comfyui_tcd_sampling.tcd_train import engine
    from comfyui_tcd_sampling.tcd_train.options import build_parser
    from comfyui_tcd_sampling.tcd_train.train import train

    family = engine.detect_family(str(flux_file))
    assert (family.name, family.flow, family.diffusion_model_only) == ("Flux", True, True)
    out = tmp_path / "flux"
    argv = flow_args(flux_file, shards, out, *separate(files), "--w_min", "0", "--w_max", "0",
                     "--embedded_guidance_min", "3", "--embedded_guidance_max", "4")  # fmt: skip
    argv[argv.index("--train_batch_size") + 1], argv[argv.index("--max_train_steps") + 1] = "1", "1"  # 0.5 B weights
    result = train(build_parser().parse_args(argv))
    assert result["steps"] == 1 and torch.isfinite(torch.tensor(result["loss"]))
    patcher = comfy.sd.load_diffusion_model(str(flux_file))
    assert type(patcher.model.model_config).__name__ == "Flux"
    conds = {"c_crossattn": torch.randn(1, 77, 768), "y": torch.randn(1, 768), "guidance": torch.tensor([3.5])}
    targets = loads_whole_and_changes_the_prediction(load_file(out / "tcd_lora.safetensors"), patcher, conds, caplog)
    assert {t.split(".")[1] for t in targets} == {"double_blocks", "single_blocks"}


def test_the_single_file_checkpoint_trains_the_lora_of_the_separate_files(
    files: dict[str, Path], shards: str, tmp_path: Path
) -> None:
    """SD3.5's single-file form (the same tensors under model.diffusion_model., text_encoders.clip_l., first_stage_
    model.) trains the LoRA the separate files train, bit for bit; fp8 weights (--weight_dtype fp8_e4m3fn) train an
    fp32 LoRA close to it."""
    with one_thread():
        split = train_here(flow_args(files["diffusion_model"], shards, tmp_path / "split", *separate(files)))
        whole = train_here(flow_args(files["checkpoint"], shards, tmp_path / "whole"))
        fp8 = train_here(flow_args(files["diffusion_model"], shards, tmp_path / "fp8", *separate(files),
                                   "--weight_dtype", "fp8_e4m3fn"))  # fmt: skip
    a, b, c = (load_file(run["lora"]) for run in (split, whole, fp8))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the checkpoint trained another LoRA"
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in c.values())
    moved = sum(float((a[k] - c[k]).abs().max()) for k in a if k.endswith("lora_up.weight"))
    assert moved > 0, "fp8 weights trained exactly the full-precision LoRA: were they fp8?"


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ((), ("--text_encoder:", "holds no text encoder (a diffusion-model file", "CLIP-L, CLIP-G and / or T5-XXL")),
        (("--text_encoder", "CLIP"), ("--vae:", "holds no VAE")),
        (("--text_encoder", "CLIP", "--vae", "VAE", "--resolution", "72"),
         ("--resolution 72x72: this SD3 model takes sides that are multiples of 16 pixels",)),
        (("--text_encoder", "CLIP", "--vae", "VAE", "--embedded_guidance_min", "3.5", "--embedded_guidance_max", "3.5"),
         ("--embedded_guidance_min: this SD3 / SD3.5 model has no embedded guidance input",)),
        (("--text_encoder", "no-such.safetensors"), ("--text_encoder no-such.safetensors: no such file",)),
        (("--embedded_guidance_min", "5", "--embedded_guidance_max", "2"),
         ("--embedded_guidance_min 5.0: must be <= --embedded_guidance_max",)),
    ],
    ids=["no-text-encoder", "no-vae", "resolution", "embedded-guidance", "missing-file", "embedded-order"],
)  # fmt: skip
def test_bad_flow_options_are_refused_before_training(
    files: dict[str, Path], shards: str, tmp_path: Path, extra: tuple, fragments: tuple
) -> None:
    from comfyui_tcd_sampling.tcd_train.options import TrainerError

    named = {"CLIP": str(files["clip_l"]), "VAE": str(files["vae"])}
    argv = flow_args(files["diffusion_model"], shards, tmp_path / "bad", *(named.get(x, x) for x in extra))
    with pytest.raises(TrainerError) as error:
        train_here(argv)
    for fragment in fragments:
        assert fragment in str(error.value)
    assert not (tmp_path / "bad" / "tcd_lora.safetensors").exists()
