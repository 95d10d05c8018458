"""The flow half of the product distillation benchmark: ComfyUI's own SD3 model class (MMDiT, scaled down) as a
flow-matching teacher trained here on the same 8x8 digits, students trained only by the pack's TCD Distill LoRA
node on its flow path, sampled through ComfyUI (the teacher with Euler), scored as bench/product scores.

Everything but the flow family's own pieces (latents, prompts, model, samplers, targets, report text) is
bench/product's: data split, classifier and Frechet distance, caches, the run loop, the node call, the tables.
Run ``python -m bench.product_flow`` (``--quick`` for a smoke run, ``--teacher-only`` before the node's flow path).
"""
