"""Distil at scale: a multi-GPU TCD / LCM LoRA trainer on accelerate (``python -m tcd_train --help``).

A command-line trainer for users who outgrow the ``TCD Distill LoRA`` node: single GPU, multi-GPU DDP and
multi-node as ``accelerate launch`` / ``torchrun`` run them, streaming webdataset shards or an image folder.
It shares every line of the math (``tcd_core.distill``) and the ComfyUI side (LoRA adapters, teacher
switch, UNet call, saved-LoRA layout: ``nodes/distill_training.py``) with the node; see README,
"Distil at scale". Nothing here is imported by the nodes, and importing this package imports nothing.
"""
