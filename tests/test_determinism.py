"""The same graph and seed give byte-identical PNG files from two separate ComfyUI server processes.

Start a server, run, stop; start another, run the same API graph again; compare the files' bytes. The graph
samples twice, both times with fresh noise on every step: through KSampler with sampler and scheduler `tcd`
(gamma 0.3), and through TCD Scheduler + TCD Sampler (gamma 0.5) in SamplerCustom.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from devkit.host import ComfyServer, txt2img_prompt
from devkit.model_files import default_models_dir

SEED = 424242


def graph(checkpoint: str) -> dict:
    prompt = txt2img_prompt(
        checkpoint, seed=SEED, steps=2, sampler_name="tcd", scheduler="tcd", filename_prefix="tcd-determinism-ksampler"
    )
    prompt["tcd_scheduler"] = {
        "class_type": "TrajectoryConsistencyScheduler",
        "inputs": {"model": ["ckpt", 0], "steps": 2, "original_inference_steps": 50, "strength": 1.0},
    }
    prompt["tcd_sampler"] = {
        "class_type": "TrajectoryConsistencySampler",
        "inputs": {"gamma": 0.5, "gamma_schedule": "constant", "gamma_end": 0.5, "gamma_list": "0.5", "order": 1},
    }
    prompt["custom"] = {
        "class_type": "SamplerCustom",
        "inputs": {
            "model": ["ckpt", 0],
            "add_noise": True,
            "noise_seed": SEED + 1,
            "cfg": 1.0,
            "positive": ["positive", 0],
            "negative": ["negative", 0],
            "sampler": ["tcd_sampler", 0],
            "sigmas": ["tcd_scheduler", 0],
            "latent_image": ["latent", 0],
        },
    }
    prompt["custom_decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["custom", 0], "vae": ["ckpt", 2]}}
    prompt["custom_save"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["custom_decode", 0], "filename_prefix": "tcd-determinism-custom"},
    }
    return prompt


def run_in_a_fresh_server(work_dir: Path, checkpoint: str) -> dict[str, bytes]:
    """Start a server, run the graph once, stop it: {save node id: PNG file bytes}."""
    with ComfyServer(models_dir=default_models_dir(), work_dir=work_dir) as server:
        entry = server.run(graph(checkpoint), timeout=600)
        files = {node: server.output_images(entry, node) for node in ("save", "custom_save")}
        assert all(len(paths) == 1 for paths in files.values()), entry.get("outputs")
        return {node: paths[0].read_bytes() for node, paths in files.items()}


def test_same_graph_and_seed_give_byte_identical_pngs_across_server_restarts(
    tiny_checkpoint: str, tmp_path: Path
) -> None:
    """On the tiny SD1.5-family checkpoint (real CLIP-L and VAE): what is tested is the sampling's noise."""
    first = run_in_a_fresh_server(tmp_path / "first", tiny_checkpoint)
    second = run_in_a_fresh_server(tmp_path / "second", tiny_checkpoint)
    for node in first:
        path = tmp_path / f"{node}.png"
        path.write_bytes(first[node])
        with Image.open(path) as image:
            assert image.size == (64, 64)
            assert max(high - low for low, high in image.convert("RGB").getextrema()) > 0, "a constant image"
        assert first[node] == second[node], f"{node}: the PNG differs between two server runs of the same graph"
    assert first["save"] != first["custom_save"]  # two different samplings, not one image twice
