"""``tcd-train``: ``python -m comfyui_tcd_sampling.tcd_train``, ``accelerate launch -m
comfyui_tcd_sampling.tcd_train``, ``torchrun -m comfyui_tcd_sampling.tcd_train``."""

from .train import main

if __name__ == "__main__":
    raise SystemExit(main())
