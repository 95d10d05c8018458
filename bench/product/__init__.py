"""The product distillation benchmark: ComfyUI's own SD1.5 UNet (scaled down) as the teacher, students trained
only by the pack's TCD Distill LoRA node, sampled through ComfyUI's samplers, scored on 8x8 digits.

Run ``python -m bench.product`` (``--quick`` for a minutes-long smoke run); see bench/product/run.py.
"""
