"""ComfyUI's side of TCD: a ComfyUI model adapted to tcd_core's sampling and distillation.

- ``sampling``: a model's noise space, TCD sigmas and seeded noise for the TCD Sampler / Scheduler and
  KSampler's ``tcd`` entries;
- ``lora_stack``: LoRAs applied through ComfyUI's own patching, after checking that every patch fits;
- ``distill_model``, ``distill_data``, ``lora_adapters``, ``lora_student``, ``distill_run``: distillation
  on a ComfyUI model (the node's and the ``tcd-train`` command's), whose step is ``tcd_core.distiller``.

Imports ComfyUI's modules, so it is imported once ComfyUI is importable (a running ComfyUI, or the
trainer after ``tcd_train.comfy_host.import_comfyui``). Nothing here declares a node.
"""
