"""Distil at scale: a multi-GPU TCD / LCM LoRA trainer on accelerate (``tcd-train --help``).

A command-line trainer for users who outgrow the ``TCD Distill LoRA`` node: single GPU, multi-GPU DDP and
multi-node as ``accelerate launch`` / ``torchrun`` run them, streaming webdataset shards or an image folder.
It shares every line of the math and of the training step (``tcd_core.distill``, ``tcd_core.distiller``)
and the ComfyUI side (LoRA adapters, teacher switch, UNet call, saved-LoRA layout: ``tcd_comfy``) with the
node, and imports no node module; see README, "Distil at scale". Importing this package imports nothing.
"""
