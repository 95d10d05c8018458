"""Development tools: the provisioned ComfyUI host, test models, workflows, the browser harness.

Importing it makes this checkout importable as ``comfyui_tcd_sampling`` (devkit.pack_import).
"""

from .pack_import import make_importable

make_importable()
