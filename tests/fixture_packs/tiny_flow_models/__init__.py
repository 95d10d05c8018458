"""Test-only node pack: ``TCDTestTinyFlowModel`` builds a tiny random-weight flow model (devkit/flow_models.py,
ComfyUI's own model classes) inside a ComfyUI server, since ComfyUI's loaders cannot detect models that small.

The session's test servers load it beside the pack (tests/conftest.py: ``ComfyServer(extra_packs=...)``); it never
ships with the pack. The model is built under the server's ``torch.inference_mode``, as a loader node builds one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

FLOW_MODELS_PATH = Path(__file__).resolve().parents[3] / "devkit" / "flow_models.py"


def _flow_models():
    spec = importlib.util.spec_from_file_location("tcd_test_flow_models", FLOW_MODELS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flow_models = _flow_models()
WEIGHT_DTYPES = {"fp32": (torch.float32, None), "fp8_e4m3fn": (torch.float8_e4m3fn, torch.float32)}


class TinyFlowModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "family": (list(flow_models.TINY_MODELS),),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "weight_dtype": (list(WEIGHT_DTYPES),),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "_for_testing"

    def build(self, family: str, seed: int, weight_dtype: str):
        dtype, manual_cast = WEIGHT_DTYPES[weight_dtype]
        return (flow_models.tiny_flow_model(family, seed, dtype, manual_cast),)


NODE_CLASS_MAPPINGS = {"TCDTestTinyFlowModel": TinyFlowModel}
NODE_DISPLAY_NAME_MAPPINGS = {"TCDTestTinyFlowModel": "Tiny flow model (TCD tests)"}
