"""Generates the example workflows in workflows/ (UI format, what users drag into ComfyUI).

    .dev/venv/bin/python dev/make_workflows.py                 # /object_info from a ComfyUI started here
    .dev/venv/bin/python dev/make_workflows.py --object-info http://127.0.0.1:8188 \\
        --object-info tests/fixture_packs/ipadapter_schemas/object_info.json
    .dev/venv/bin/python dev/make_workflows.py --check         # exit 1 when a committed file is stale

Each workflow is a compact description below (nodes, their inputs, a layout column); widget
order, defaults and slot types come from /object_info, so the files match the nodes' schemas.
Without --object-info, a ComfyUI server (dev/provision.sh's) is started to read /object_info,
and the ComfyUI_IPAdapter_plus schemas come from IPADAPTER_FIXTURE. The output is deterministic.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from devkit.fixtures import IPADAPTER_OBJECT_INFO_PATH  # noqa: E402
from workflow_tools.object_info import InputSpec, NodeSchema, ObjectInfo, merged_object_info  # noqa: E402

WORKFLOWS_DIR = REPO_ROOT / "workflows"
# ComfyUI_IPAdapter_plus's recorded /object_info (that pack cannot be installed on the test machines).
IPADAPTER_FIXTURE = IPADAPTER_OBJECT_INFO_PATH
PACK_ID = "comfyui-tcd-sampling"
PACK_NODES = {"TrajectoryConsistencySampler", "TrajectoryConsistencyScheduler", "TrajectoryConsistencyLoraLoader"}
IPADAPTER_PACK_ID = "comfyui_ipadapter_plus"
CORE_VERSION = "0.3.75"

# Layout (LiteGraph units): column x from the widest node left of it; nodes stacked per column.
COLUMN_GAP = 60
ROW_GAP = 50
TITLE_HEIGHT = 30
SLOT_HEIGHT = 22
WIDGET_HEIGHT = 26
MULTILINE_HEIGHT = 110
DEFAULT_WIDTH = 320
NOTE_WIDTH = 460


@dataclass(frozen=True)
class Model:
    """A model file a workflow needs: its local name, ComfyUI folder, and where it comes from."""

    name: str
    directory: str
    repo: str  # Hugging Face repository
    url: str  # direct download (the file is saved as `name`)

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo}"

    @property
    def upstream_file(self) -> str:
        return self.url.split("/resolve/main/", 1)[1]


def _hf(repo: str, path: str) -> str:
    return f"https://huggingface.co/{repo}/resolve/main/{path}"


SDXL_BASE = Model(
    "sd_xl_base_1.0.safetensors",
    "checkpoints",
    "stabilityai/stable-diffusion-xl-base-1.0",
    _hf("stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors"),
)
SD15_BASE = Model(
    "v1-5-pruned-emaonly.safetensors",
    "checkpoints",
    "stable-diffusion-v1-5/stable-diffusion-v1-5",  # the mirror of runwayml/stable-diffusion-v1-5
    _hf("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors"),
)
TCD_SDXL = Model(
    "TCD-SDXL-LoRA.safetensors",
    "loras",
    "h1t/TCD-SDXL-LoRA",
    _hf("h1t/TCD-SDXL-LoRA", "pytorch_lora_weights.safetensors"),
)
TCD_SD15 = Model(
    "TCD-SD15-LoRA.safetensors",
    "loras",
    "h1t/TCD-SD15-LoRA",
    _hf("h1t/TCD-SD15-LoRA", "pytorch_lora_weights.safetensors"),
)
PAPERCUT = Model(
    "papercut.safetensors",
    "loras",
    "TheLastBen/Papercut_SDXL",
    _hf("TheLastBen/Papercut_SDXL", "papercut.safetensors"),
)
CANNY_SDXL = Model(
    "controlnet-canny-sdxl-1.0.safetensors",
    "controlnet",
    "diffusers/controlnet-canny-sdxl-1.0",
    _hf("diffusers/controlnet-canny-sdxl-1.0", "diffusion_pytorch_model.fp16.safetensors"),
)
DEPTH_SDXL = Model(
    "controlnet-depth-sdxl-1.0.safetensors",
    "controlnet",
    "diffusers/controlnet-depth-sdxl-1.0",
    _hf("diffusers/controlnet-depth-sdxl-1.0", "diffusion_pytorch_model.fp16.safetensors"),
)
IPADAPTER_SDXL = Model(
    "ip-adapter_sdxl_vit-h.safetensors",
    "ipadapter",
    "h94/IP-Adapter",
    _hf("h94/IP-Adapter", "sdxl_models/ip-adapter_sdxl_vit-h.safetensors"),
)
CLIP_VISION_H = Model(
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    "clip_vision",
    "h94/IP-Adapter",
    _hf("h94/IP-Adapter", "models/image_encoder/model.safetensors"),
)

# Input images the workflows load (users pick their own; tests put generated ones in place).
CANNY_SOURCE = "tcd_canny_source.png"
DEPTH_MAP = "tcd_depth_map.png"
IP_REFERENCE = "tcd_ip_adapter_reference.png"
IMG2IMG_SOURCE = "tcd_img2img_source.png"

PROMPT = (
    "Painting of the orange cat Otto von Garfield, Count of Bismarck-Schönhausen, Duke of Lauenburg, "
    "Minister-President of Prussia. Depicted wearing a Prussian Pickelhaube and eating his favorite meal - lasagna."
)
NEGATIVE = ""
SEED = 0


# --- graph description -> UI JSON ------------------------------------------------------------------


@dataclass(frozen=True)
class Out:
    """Output `slot` of a node, used as an input value to make a link."""

    node: Node
    slot: int


@dataclass
class Node:
    id: int
    type: str
    column: int
    title: str | None
    values: dict[str, Any]
    schema: NodeSchema | None  # None for frontend-only nodes (notes)
    models: tuple[Model, ...] = ()
    size: tuple[int, int] | None = None
    row: float = 0.0  # order within its column (default: creation order)
    widgets_values: list[Any] = field(default_factory=list)
    pos: tuple[int, int] = (0, 0)

    def __getitem__(self, slot: int) -> Out:
        return Out(self, slot)


class Graph:
    """A workflow under construction: add nodes (inputs as keyword arguments), then `build()`."""

    def __init__(self, info: ObjectInfo, name: str) -> None:
        self.info = info
        self.name = name
        self.nodes: list[Node] = []
        self.title = name
        self.summary = ""
        self.models: tuple[Model, ...] = ()

    def add(
        self,
        node_type: str,
        column: int,
        *,
        title: str | None = None,
        models: tuple[Model, ...] = (),
        row: float | None = None,
        **inputs: Any,
    ) -> Node:
        schema = self.info.get(node_type)
        if schema is None:
            raise KeyError(f"{self.name}: /object_info has no node {node_type!r}")
        unknown = set(inputs) - {spec.name for spec in schema.inputs}
        if unknown:
            raise KeyError(f"{self.name}: {node_type} has no inputs {sorted(unknown)}")
        node = Node(len(self.nodes) + 1, node_type, column, title, inputs, schema, models)
        node.row = float(node.id if row is None else row)
        self.nodes.append(node)
        return node

    def describe(
        self, title: str, summary: str, models: tuple[Model, ...], settings: list[str], extra: str = ""
    ) -> Node:
        """Sets what the workflow is for (also listed in workflows/README.md) and adds its note."""
        self.title, self.summary, self.models = title, summary, models
        return self.note(note_text(title, summary, models, settings, extra))

    def note(self, text: str, column: int = 0) -> Node:
        node = Node(len(self.nodes) + 1, "MarkdownNote", column, "Read me: models and settings", {}, None)
        node.row = float(node.id)
        node.widgets_values = [text]
        lines = sum(1 + len(line) // 62 for line in text.splitlines())
        node.size = (NOTE_WIDTH, 60 + 19 * lines)
        self.nodes.append(node)
        return node

    # -- building --

    def _widget_values(self, node: Node) -> list[Any]:
        assert node.schema is not None
        values: list[Any] = []
        widgets = node.schema.widget_inputs
        last_required = max((i for i, spec in enumerate(widgets) if spec.required), default=-1)
        upload = False
        for position, spec in enumerate(widgets):
            value = node.values.get(spec.name, _MISSING)
            if isinstance(value, Out) or value is _MISSING:
                value = _default(spec, node, self.name)
            values.append(value)
            if spec.has_control_widget:
                values.append("fixed")  # examples regenerate the same image until the user changes it
            upload = upload or spec.has_upload_widget
            if upload and position == last_required:
                values.append("image")
                upload = False
        return values

    def _size(self, node: Node) -> tuple[int, int]:
        if node.size is not None:
            return node.size
        assert node.schema is not None
        sockets = [spec for spec in node.schema.inputs if not spec.is_widget]
        widgets = node.schema.widget_inputs
        height = TITLE_HEIGHT + SLOT_HEIGHT * max(len(sockets), len(node.schema.outputs), 1)
        for spec in widgets:
            height += MULTILINE_HEIGHT if spec.options.get("multiline") else WIDGET_HEIGHT
        if any(spec.has_upload_widget for spec in widgets):
            height += WIDGET_HEIGHT + 260  # upload button and image preview
        if node.type in ("SaveImage", "PreviewImage"):
            height = max(height, 300)
        width = 420 if any(spec.options.get("multiline") for spec in widgets) else DEFAULT_WIDTH
        return width, height

    def _layout(self) -> None:
        x = 0
        for column in sorted({node.column for node in self.nodes}):
            members = sorted((node for node in self.nodes if node.column == column), key=lambda n: n.row)
            y = 0
            for node in members:
                node.size = self._size(node)
                node.pos = (x, y)
                y += node.size[1] + ROW_GAP
            x += max(node.size[0] for node in members if node.size) + COLUMN_GAP

    def _order(self) -> dict[int, int]:
        """Execution order (the frontend's `order`): a topological sort, ties by id."""
        deps = {n.id: {v.node.id for v in n.values.values() if isinstance(v, Out)} for n in self.nodes}
        order: dict[int, int] = {}
        while len(order) < len(self.nodes):
            ready = [i for i in sorted(deps) if i not in order and deps[i] <= set(order)]
            if not ready:
                raise ValueError(f"{self.name}: the graph has a cycle")
            order[ready[0]] = len(order)
        return order

    def build(self) -> dict[str, Any]:
        """The UI-format workflow (frontend schema version 0.4)."""
        self._layout()
        order = self._order()
        links: list[list[Any]] = []
        outgoing: dict[tuple[int, int], list[int]] = {}
        inputs_by_node: dict[int, list[dict[str, Any]]] = {}
        for node in self.nodes:
            entries: list[dict[str, Any]] = []
            for spec in node.schema.inputs if node.schema else ():
                value = node.values.get(spec.name)
                if spec.is_widget and not isinstance(value, Out):
                    continue
                entry: dict[str, Any] = {"name": spec.name, "type": spec.type, "link": None}
                if spec.is_widget:
                    entry["widget"] = {"name": spec.name}
                if not spec.required:
                    entry["shape"] = 7  # the frontend draws optional inputs hollow
                if isinstance(value, Out):
                    origin = value.node
                    kind = origin.schema.outputs[value.slot] if origin.schema else "*"
                    link_id = len(links) + 1
                    links.append([link_id, origin.id, value.slot, node.id, len(entries), kind])
                    outgoing.setdefault((origin.id, value.slot), []).append(link_id)
                    entry["link"] = link_id
                elif spec.required:
                    raise ValueError(f"{self.name}: {node.type} input {spec.name!r} is not connected")
                entries.append(entry)
            inputs_by_node[node.id] = entries
        nodes = [self._ui_node(node, order[node.id], inputs_by_node[node.id], outgoing) for node in self.nodes]
        models = _unique(model for node in self.nodes for model in node.models)
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PACK_ID}/workflows/{self.name}")),
            "revision": 0,
            "last_node_id": len(self.nodes),
            "last_link_id": len(links),
            "nodes": nodes,
            "links": links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}},
            "version": 0.4,
            "models": [{"name": m.name, "url": m.url, "directory": m.directory} for m in models],
        }

    def _ui_node(
        self, node: Node, order: int, inputs: list[dict[str, Any]], outgoing: Mapping[tuple[int, int], list[int]]
    ) -> dict[str, Any]:
        assert node.size is not None
        ui: dict[str, Any] = {
            "id": node.id,
            "type": node.type,
            "pos": list(node.pos),
            "size": list(node.size),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": inputs,
            "outputs": [],
            "properties": {},
            "widgets_values": node.widgets_values,
        }
        if node.title:
            ui["title"] = node.title
        if node.schema is None:  # a note
            ui["color"], ui["bgcolor"] = "#432", "#653"
            return ui
        ui["outputs"] = [
            {"name": name, "type": kind, "links": outgoing.get((node.id, slot), []), "slot_index": slot}
            for slot, (name, kind) in enumerate(zip(node.schema.output_names, node.schema.outputs, strict=True))
        ]
        ui["properties"] = _properties(node)
        ui["widgets_values"] = self._widget_values(node)
        return ui


_MISSING = object()


def _default(spec: InputSpec, node: Node, workflow: str) -> Any:
    if "default" in spec.options:
        return spec.options["default"]
    if spec.type == "COMBO" and spec.choices and not spec.name.endswith(("_name", "_file", "image")):
        return spec.choices[0]
    if spec.type in ("INT", "FLOAT"):
        return spec.options.get("min", 0)
    if spec.type == "STRING":
        return ""
    if spec.type == "BOOLEAN":
        return False
    raise ValueError(f"{workflow}: {node.type} widget {spec.name!r} needs a value (it has no default)")


def _properties(node: Node) -> dict[str, Any]:
    if node.type in PACK_NODES:
        cnr_id = PACK_ID
    elif node.schema is not None and node.type.startswith(("IPAdapter", "PrepImageForClipVision")):
        cnr_id = IPADAPTER_PACK_ID
    else:
        cnr_id = "comfy-core"
    properties: dict[str, Any] = {"Node name for S&R": node.type, "cnr_id": cnr_id}
    if cnr_id == "comfy-core":
        properties["ver"] = CORE_VERSION
    if node.models:
        properties["models"] = [{"name": m.name, "url": m.url, "directory": m.directory} for m in node.models]
    return properties


def _unique(models: Any) -> list[Model]:
    seen: dict[str, Model] = {}
    for model in models:
        seen.setdefault(model.name, model)
    return list(seen.values())


# --- notes -------------------------------------------------------------------------------------------


def model_lines(models: tuple[Model, ...]) -> str:
    lines = []
    for model in models:
        rename = (
            ""
            if model.upstream_file.rsplit("/", 1)[-1] == model.name
            else f" (download `{model.upstream_file}` and save it under this name)"
        )
        lines.append(
            f"- `{model.name}` in `ComfyUI/models/{model.directory}/`: from [{model.repo}]({model.page}){rename}"
        )
    return "\n".join(lines)


def note_text(title: str, summary: str, models: tuple[Model, ...], settings: list[str], extra: str = "") -> str:
    """The MarkdownNote of a workflow: what it does, its model files and where they go, its settings."""
    parts = [
        f"# {title}",
        summary,
        "## Model files",
        model_lines(models),
        "ComfyUI offers to download the files listed in this workflow when they are missing; "
        "otherwise put them in the folders above and press `r` (refresh) in ComfyUI.",
    ]
    if extra:
        parts.append(extra)
    parts += ["## Settings", "\n".join(f"- {line}" for line in settings)]
    return "\n\n".join(parts)


TCD_SETTINGS = [
    "**TCD Scheduler** steps 4 (2-8 work; 8 for anime checkpoints).",
    "**TCD Sampler** gamma 0.3, the reference default (diffusers' `eta`): 0 keeps the most detail, "
    "1 is LCM-like and smoothest.",
    "**CFG 1**: TCD LoRAs are distilled for guidance off, so the negative prompt has no effect.",
]


# --- the workflows -----------------------------------------------------------------------------------


@dataclass
class Pipeline:
    """The nodes most workflows share, returned by `tcd_pipeline` for wiring extras in."""

    checkpoint: Node
    model: Out
    clip: Out
    positive: Out
    negative: Out


def tcd_base(g: Graph, checkpoint: Model, lora: Model, *, style: Model | None = None, prompt: str = PROMPT) -> Pipeline:
    """Checkpoint -> TCD LoRA Loader (with an optional style LoRA) -> prompts."""
    ckpt = g.add("CheckpointLoaderSimple", 1, ckpt_name=checkpoint.name, models=(checkpoint,))
    lora_inputs: dict[str, Any] = {"model": ckpt[0], "tcd_lora": lora.name, "tcd_lora_strength": 1.0}
    models = (lora,)
    if style is not None:
        lora_inputs.update(clip=ckpt[1], style_lora_1=style.name, style_lora_1_strength=1.0)
        models = (lora, style)
    loader = g.add("TrajectoryConsistencyLoraLoader", 2, models=models, **lora_inputs)
    clip = loader[1] if style is not None else ckpt[1]
    positive = g.add("CLIPTextEncode", 3, title="Positive prompt", text=prompt, clip=clip)
    negative = g.add("CLIPTextEncode", 3, title="Negative prompt (no effect at CFG 1)", text=NEGATIVE, clip=clip)
    return Pipeline(ckpt, loader[0], clip, positive[0], negative[0])


def tcd_sample(
    g: Graph,
    p: Pipeline,
    latent: Out,
    *,
    model: Out | None = None,
    positive: Out | None = None,
    negative: Out | None = None,
    strength: float = 1.0,
    prefix: str = "tcd",
) -> None:
    """RandomNoise + CFGGuider (CFG 1) + TCD Sampler + TCD Scheduler -> SamplerCustomAdvanced -> save."""
    model = model or p.model
    noise = g.add("RandomNoise", 4, noise_seed=SEED)
    guider = g.add(
        "CFGGuider", 4, model=model, positive=positive or p.positive, negative=negative or p.negative, cfg=1.0
    )
    sampler = g.add("TrajectoryConsistencySampler", 4, gamma=0.3, gamma_schedule="constant", gamma_end=0.3, order=1)
    sigmas = g.add(
        "TrajectoryConsistencyScheduler", 4, model=model, steps=4, original_inference_steps=50, strength=strength
    )
    sample = g.add(
        "SamplerCustomAdvanced",
        5,
        noise=noise[0],
        guider=guider[0],
        sampler=sampler[0],
        sigmas=sigmas[0],
        latent_image=latent,
    )
    decode = g.add("VAEDecode", 5, samples=sample[0], vae=p.checkpoint[2])
    g.add("SaveImage", 6, images=decode[0], filename_prefix=prefix)


def controlnet_sample(g: Graph, p: Pipeline, controlnet: Model, image: Out, *, prefix: str) -> None:
    """ControlNet at the official demo's strength 0.5 on the prompt, then a 1024x1024 TCD sample."""
    control = g.add("ControlNetLoader", 2, control_net_name=controlnet.name, models=(controlnet,))
    apply = g.add(
        "ControlNetApplyAdvanced",
        3,
        positive=p.positive,
        negative=p.negative,
        control_net=control[0],
        image=image,
        strength=0.5,
        start_percent=0.0,
        end_percent=1.0,
    )
    latent = g.add("EmptyLatentImage", 4, width=1024, height=1024, batch_size=1, row=100)
    tcd_sample(g, p, latent[0], positive=apply[0], negative=apply[1], prefix=prefix)


def sdxl_text_to_image(info: ObjectInfo) -> Graph:
    g = Graph(info, "tcd_sdxl_text_to_image")
    models = (SDXL_BASE, TCD_SDXL)
    g.describe(
        "TCD: SDXL text-to-image",
        "Trajectory Consistency Distillation with the TCD SDXL LoRA: 4 steps, CFG 1, gamma 0.3.",
        models,
        TCD_SETTINGS + ["1024x1024, SDXL's native size."],
    )
    p = tcd_base(g, SDXL_BASE, TCD_SDXL)
    latent = g.add("EmptyLatentImage", 4, width=1024, height=1024, batch_size=1, row=100)
    tcd_sample(g, p, latent[0], prefix="tcd/sdxl")
    return g


def sd15_text_to_image(info: ObjectInfo) -> Graph:
    g = Graph(info, "tcd_sd15_text_to_image")
    models = (SD15_BASE, TCD_SD15)
    g.describe(
        "TCD: SD1.5 text-to-image",
        "Trajectory Consistency Distillation with the TCD SD1.5 LoRA: 4 steps, CFG 1, gamma 0.3. "
        "runwayml/stable-diffusion-v1-5 was withdrawn; its mirror stable-diffusion-v1-5/stable-diffusion-v1-5 "
        "holds the same file. Any SD1.5 fine-tune works with the same LoRA.",
        models,
        TCD_SETTINGS + ["512x512, SD1.5's native size."],
    )
    p = tcd_base(g, SD15_BASE, TCD_SD15, prompt="a photo of an orange cat wearing a Prussian Pickelhaube, best quality")
    latent = g.add("EmptyLatentImage", 4, width=512, height=512, batch_size=1, row=100)
    tcd_sample(g, p, latent[0], prefix="tcd/sd15")
    return g


def sdxl_controlnet_canny(info: ObjectInfo) -> Graph:
    g = Graph(info, "tcd_sdxl_controlnet_canny")
    models = (SDXL_BASE, TCD_SDXL, CANNY_SDXL)
    g.describe(
        "TCD: SDXL + Canny ControlNet",
        "The edges of your image (ComfyUI's core Canny node) steer a 4-step TCD image, as in TCD's "
        "official ControlNet demo: ControlNet strength 0.5.",
        models,
        TCD_SETTINGS + ["**Apply ControlNet** strength 0.5; raise it to follow the edges more closely."],
        f"## Input image\n\nLoad any picture in **Load Image** (upload it, or put it in `ComfyUI/input/`; "
        f"the workflow names `{CANNY_SOURCE}`). Canny thresholds 0.4 / 0.8; the preview shows the edges.",
    )
    p = tcd_base(g, SDXL_BASE, TCD_SDXL, prompt="a red sports car in a neon city at night, best quality")
    image = g.add("LoadImage", 1, title="Image for edges", image=CANNY_SOURCE)
    canny = g.add("Canny", 2, image=image[0], low_threshold=0.4, high_threshold=0.8)
    g.add("PreviewImage", 3, title="Canny edges", images=canny[0], row=100)
    controlnet_sample(g, p, CANNY_SDXL, canny[0], prefix="tcd/sdxl_canny")
    return g


def sdxl_controlnet_depth(info: ObjectInfo) -> Graph:
    g = Graph(info, "tcd_sdxl_controlnet_depth")
    models = (SDXL_BASE, TCD_SDXL, DEPTH_SDXL)
    g.describe(
        "TCD: SDXL + Depth ControlNet",
        "A depth map steers a 4-step TCD image, as in TCD's official ControlNet demo: ControlNet strength 0.5.",
        models,
        TCD_SETTINGS + ["**Apply ControlNet** strength 0.5; raise it to follow the depth map more closely."],
        f"## Depth map\n\nLoad a depth map as an image in **Load Image** (white = near, black = far; the "
        f"workflow names `{DEPTH_MAP}`). Make one with a depth estimator, e.g. the DPT/MiDaS or Depth "
        "Anything preprocessors of comfyui_controlnet_aux, or any depth tool.",
    )
    p = tcd_base(g, SDXL_BASE, TCD_SDXL, prompt="a stormtrooper giving a lecture in a university hall, best quality")
    depth = g.add("LoadImage", 1, title="Depth map", image=DEPTH_MAP)
    controlnet_sample(g, p, DEPTH_SDXL, depth[0], prefix="tcd/sdxl_depth")
    return g


def sdxl_ip_adapter(info: ObjectInfo) -> Graph:
    g = Graph(info, "tcd_sdxl_ip_adapter")
    models = (SDXL_BASE, TCD_SDXL, IPADAPTER_SDXL, CLIP_VISION_H)
    g.describe(
        "TCD: SDXL + IP-Adapter",
        "A reference image steers a 4-step TCD image through IP-Adapter at weight 0.5, as in TCD's official "
        "IP-Adapter demo. Needs the custom node pack **ComfyUI_IPAdapter_plus** (cubiq), e.g. from "
        "ComfyUI-Manager.",
        models,
        TCD_SETTINGS + ["**IPAdapter Advanced** weight 0.5; raise it to follow the reference more closely."],
        f"## Reference image\n\nLoad it in **Load Image** (the workflow names `{IP_REFERENCE}`). "
        "`ip-adapter_sdxl_vit-h` pairs with the ViT-H image encoder listed above.",
    )
    p = tcd_base(g, SDXL_BASE, TCD_SDXL, prompt="best quality, high quality, wearing sunglasses on the beach")
    reference = g.add("LoadImage", 1, title="Reference image", image=IP_REFERENCE)
    ipadapter = g.add("IPAdapterModelLoader", 2, ipadapter_file=IPADAPTER_SDXL.name, models=(IPADAPTER_SDXL,))
    vision = g.add("CLIPVisionLoader", 2, clip_name=CLIP_VISION_H.name, models=(CLIP_VISION_H,))
    apply = g.add(
        "IPAdapterAdvanced",
        3,
        model=p.model,
        ipadapter=ipadapter[0],
        image=reference[0],
        clip_vision=vision[0],
        weight=0.5,
        weight_type="linear",
        combine_embeds="concat",
        start_at=0.0,
        end_at=1.0,
        embeds_scaling="V only",
    )
    latent = g.add("EmptyLatentImage", 4, width=1024, height=1024, batch_size=1, row=100)
    tcd_sample(g, p, latent[0], model=apply[0], prefix="tcd/sdxl_ip_adapter")
    return g


def sdxl_papercut(info: ObjectInfo) -> Graph:
    g = Graph(info, "tcd_sdxl_papercut_lora")
    models = (SDXL_BASE, TCD_SDXL, PAPERCUT)
    g.describe(
        "TCD: SDXL + Papercut style LoRA",
        "The TCD LoRA with the Papercut style LoRA stacked on it, both at strength 1.0, in the TCD LoRA "
        "Loader, as in TCD's official demo. Papercut's trigger word **\"papercut\"** starts the prompt.",
        models,
        TCD_SETTINGS
        + ["**TCD LoRA Loader**: tcd_lora strength 1.0, style_lora_1 `papercut.safetensors` strength 1.0."],
    )
    p = tcd_base(g, SDXL_BASE, TCD_SDXL, style=PAPERCUT, prompt="papercut, a cute fox")
    latent = g.add("EmptyLatentImage", 4, width=1024, height=1024, batch_size=1, row=100)
    tcd_sample(g, p, latent[0], prefix="tcd/sdxl_papercut")
    return g


def sdxl_img2img(info: ObjectInfo) -> Graph:
    g = Graph(info, "tcd_sdxl_img2img")
    models = (SDXL_BASE, TCD_SDXL)
    g.describe(
        "TCD: SDXL image-to-image",
        "Repaints an image in 4 TCD steps. The **TCD Scheduler**'s strength has diffusers' meaning: the "
        "timestep grid is cut at the top, sampling starts near timestep 1000 x strength and still takes all "
        "4 steps (KSampler's denoise instead spreads steps/denoise steps and keeps the last ones).",
        models,
        [*TCD_SETTINGS, "**TCD Scheduler** strength 0.5: lower keeps more of the image, 1.0 ignores it."],
        f"## Input image\n\nLoad it in **Load Image** (the workflow names `{IMG2IMG_SOURCE}`); it is "
        "scaled to 1024x1024.",
    )
    p = tcd_base(g, SDXL_BASE, TCD_SDXL, prompt="a watercolor painting of a cat, best quality")
    image = g.add("LoadImage", 1, title="Input image", image=IMG2IMG_SOURCE)
    scaled = g.add("ImageScale", 2, image=image[0], upscale_method="lanczos", width=1024, height=1024, crop="center")
    latent = g.add("VAEEncode", 3, pixels=scaled[0], vae=p.checkpoint[2])
    tcd_sample(g, p, latent[0], strength=0.5, prefix="tcd/sdxl_img2img")
    return g


def sdxl_ksampler(info: ObjectInfo) -> Graph:
    g = Graph(info, "tcd_sdxl_ksampler")
    models = (SDXL_BASE, TCD_SDXL)
    g.describe(
        "TCD: SDXL in the plain KSampler",
        "This pack adds `tcd` to KSampler's sampler and scheduler lists: TCD from the plain KSampler, no "
        "custom sampling nodes. KSampler's `tcd` sampler uses gamma 0.3; use the TCD Sampler node for another "
        "gamma.",
        models,
        [
            "**KSampler**: sampler `tcd`, scheduler `tcd`, steps 4, CFG 1.0, denoise 1.0.",
            "**TCD LoRA Loader** loads the TCD LoRA at strength 1.0 (ComfyUI's own LoRA loaders work too).",
            "KSampler's denoise below 1 gives image-to-image with KSampler's meaning: the `tcd` schedule is "
            "spread over steps / denoise steps and the last `steps` are kept.",
        ],
    )
    p = tcd_base(g, SDXL_BASE, TCD_SDXL)
    latent = g.add("EmptyLatentImage", 3, width=1024, height=1024, batch_size=1, row=100)
    sample = g.add(
        "KSampler",
        4,
        model=p.model,
        positive=p.positive,
        negative=p.negative,
        latent_image=latent[0],
        seed=SEED,
        steps=4,
        cfg=1.0,
        sampler_name="tcd",
        scheduler="tcd",
        denoise=1.0,
    )
    decode = g.add("VAEDecode", 4, samples=sample[0], vae=p.checkpoint[2])
    g.add("SaveImage", 5, images=decode[0], filename_prefix="tcd/sdxl_ksampler")
    return g


WORKFLOWS: dict[str, Callable[[ObjectInfo], Graph]] = {
    "tcd_sdxl_text_to_image": sdxl_text_to_image,
    "tcd_sd15_text_to_image": sd15_text_to_image,
    "tcd_sdxl_controlnet_canny": sdxl_controlnet_canny,
    "tcd_sdxl_controlnet_depth": sdxl_controlnet_depth,
    "tcd_sdxl_ip_adapter": sdxl_ip_adapter,
    "tcd_sdxl_papercut_lora": sdxl_papercut,
    "tcd_sdxl_img2img": sdxl_img2img,
    "tcd_sdxl_ksampler": sdxl_ksampler,
}
# Workflows that need nodes from other packs (the rest use only ComfyUI core and this pack).
NEEDS_OTHER_PACKS = {"tcd_sdxl_ip_adapter": "ComfyUI_IPAdapter_plus"}


def build_workflows(info: ObjectInfo) -> dict[str, dict[str, Any]]:
    """{file name: UI workflow} for every workflow in WORKFLOWS."""
    return {f"{name}.json": make(info).build() for name, make in WORKFLOWS.items()}


def render(workflow: Mapping[str, Any]) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def index_markdown(graphs: Mapping[str, Graph]) -> str:
    """workflows/README.md: the workflows, what each needs, and where the model files come from."""
    lines = [
        "# Example workflows",
        "",
        "Drag a file into ComfyUI, or open it from the template browser under this pack's name. Each holds a "
        "note naming the model files it needs, where they go and where to get them; ComfyUI offers to download "
        "the files listed in a workflow's `models` when they are missing.",
        "",
        "| Workflow | What it shows | Model files (folder under `ComfyUI/models/`) |",
        "|---|---|---|",
    ]
    for name, graph in graphs.items():
        summary = graph.summary
        if name in NEEDS_OTHER_PACKS:
            summary += f" Needs the {NEEDS_OTHER_PACKS[name]} custom nodes."
        files = ", ".join(f"`{m.name}` ({m.directory})" for m in graph.models)
        lines.append(f"| [{graph.title.removeprefix('TCD: ')}]({name}.json) | {summary} | {files} |")
    lines += ["", "## Where the model files come from", ""]
    for model in _unique(m for graph in graphs.values() for m in graph.models):
        lines.append(f"- `{model.name}`: `{model.upstream_file}` from [{model.repo}]({model.page})")
    lines += [
        "",
        "Generated by `dev/make_workflows.py` (edit the descriptions there, not the JSON). Check the files "
        "against a running ComfyUI with `python -m workflow_tools validate workflows/*.json --object-info "
        "http://127.0.0.1:8188`.",
        "",
    ]
    return "\n".join(lines)


def build_files(info: ObjectInfo) -> dict[str, str]:
    """{file name in workflows/: text}: every workflow's JSON and the README listing them."""
    graphs = {name: make(info) for name, make in WORKFLOWS.items()}
    files = {f"{name}.json": render(graph.build()) for name, graph in graphs.items()}
    files["README.md"] = index_markdown(graphs)
    return files


def _live_object_info() -> dict[str, Any]:
    """/object_info of a ComfyUI started for the purpose (dev/provision.sh's, or $COMFYUI_PATH)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from devkit.host import ComfyServer

    with ComfyServer() as server:
        return server.object_info()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object-info", action="append", metavar="FILE_OR_URL", help="instead of starting ComfyUI")
    parser.add_argument("--out", type=Path, default=WORKFLOWS_DIR)
    parser.add_argument("--check", action="store_true", help="compare with the files in --out; write nothing")
    options = parser.parse_args(argv)
    if options.object_info:
        info = merged_object_info(options.object_info)
    else:
        info = merged_object_info([_live_object_info(), IPADAPTER_FIXTURE])
    stale = []
    for name, text in build_files(info).items():
        path = options.out / name
        if options.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    if stale:
        print(f"stale (run dev/make_workflows.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
