"""Workflow logic behind /v1/workflows: the op catalogue (ports + the routes' own params
models), validation as HTTP errors, and execution as one recorded job whose nodes call the
same services the routes do (`GenerationService`, `ToolService`).

Params models: each op's params are checked with the model its route uses (the form models
of `graphs.schemas`, less their file fields: in a workflow, images arrive through ports).
"""

from __future__ import annotations

import asyncio
import collections
import json
from contextvars import ContextVar
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from graphs.errors import ApiError, to_api_error
from graphs.generation import (
    INPUT_FIDELITY_STRENGTH,
    VARIATION_PROMPT,
    VARIATION_STRENGTH,
    GenerationService,
    Options,
    _streaming,
    composite,
    fit_to_limits,
)
from graphs.jobs import JobCancelled, JobRunner, Output, OutputFile
from graphs.presets import USER_PREFIX, compose_generation
from graphs.schemas import (
    FaceSwapForm,
    ImageGenerationRequest,
    OutputOptions,
    Prompt,
    RemoveBackgroundForm,
    SavedWorkflow,
    SavedWorkflowCreate,
    SavedWorkflowList,
    SavedWorkflowUpdate,
    StyleTransferForm,
    UpscaleForm,
    VariationForm,
    VideoCreate,
)
from graphs.tools import ToolService, parse_color
from models.editing import apply_ops, check_ops, parse_edit_request
from router.presets import builtin
from workflows import (
    Catalogue,
    Engine,
    Limits,
    NodeContext,
    OpSpec,
    Port,
    ValidGraph,
    WorkflowInvalid,
    validate,
)
from workflows.examples import EXAMPLES, example

VIDEO_UNAVAILABLE = "no Video deployment on this gateway"
# the deployment behind each tool op (its info() says tiny / fallback and why)
TOOL_DEPLOYMENTS = {"remove_background": "matting", "upscale": "upscaler",
                    "face_swap": "faceswap"}
NoFile = SkipJsonSchema[None]
# one run's (loaded images, keep_intermediates, kept asset ids, live): its nodes inherit it
_RUN: ContextVar[tuple[dict, bool, dict, bool]] = ContextVar("workflow_run")


# -- params models: the routes' models, images coming through ports -------------------------
class TextParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Prompt


class RefineParams(BaseModel):
    """POST /v1/prompts/refine's fields (`graphs.schemas.PromptRequest`), `text` optional
    when a text node feeds `prompt`."""

    model_config = ConfigDict(extra="forbid")
    text: Prompt | None = None
    style: str | None = Field(None, max_length=300)


class ImageInputParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    asset_id: str = Field(..., min_length=1, max_length=64,
                          description="an image asset of the caller's project")


class GenerateParams(ImageGenerationRequest):
    prompt: Prompt | None = Field(None, description="or connect a text node to `prompt`")
    stream: SkipJsonSchema[bool] = Field(False, exclude=True)


class EditParams(OutputOptions):
    prompt: Prompt | None = None
    input_fidelity: str = Field("low", pattern="^(high|low)$")


class VariationParams(VariationForm):
    image: NoFile = Field(None, exclude=True)


class StyleTransferParams(StyleTransferForm):
    image: NoFile = Field(None, exclude=True)


class RemoveBackgroundParams(RemoveBackgroundForm):
    image: NoFile = Field(None, exclude=True)


class FaceSwapParams(FaceSwapForm):
    source: NoFile = Field(None, exclude=True)
    target: NoFile = Field(None, exclude=True)


class UpscaleParams(UpscaleForm):
    image: NoFile = Field(None, exclude=True)


class EditOpsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ops: list[dict[str, Any]] = Field(..., min_length=1, max_length=64)

    @field_validator("ops")
    @classmethod
    def _ops(cls, value):
        parse_edit_request(value)  # the route's own check (its InputError is a ValueError)
        return value


class CompositeParams(BaseModel):
    """The `composite` op's own params (no route: the ingress joins two images in memory)."""

    model_config = ConfigDict(extra="forbid")
    opacity: float = Field(1.0, ge=0, le=1, description="the cut-out's opacity over the "
                           "background")
    feather: int = Field(0, ge=0, le=64, description="soften the cut-out's edge: Gaussian "
                         "blur radius of its matte, in pixels")


def composite_over(image: np.ndarray, background: np.ndarray, mask: np.ndarray | None = None,
                   *, opacity: float = 1.0, feather: int = 0) -> np.ndarray:
    """`image` (a cut-out) over `background`, at the background's size: the matte is `mask`
    when given (e.g. remove_background's `mask`), else the image's alpha. An RGB background
    gives RGB; an RGBA one gives RGBA ("over"). ValueError: no matte (an opaque image and no
    mask). Pure numpy/PIL (runs on the ingress's image-work pool)."""
    from PIL import Image, ImageFilter

    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if mask is None:
        if image.shape[2] != 4:
            raise ValueError("the image has no transparency: connect a cut-out "
                             "(remove_background's image) or a mask")
        matte = image[..., 3]
    else:
        matte = mask if mask.ndim == 2 else mask[..., -1]
    h, w = background.shape[:2]
    rgb = np.ascontiguousarray(image[..., :3])
    if rgb.shape[:2] != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    matte_img = Image.fromarray(np.ascontiguousarray(matte, dtype=np.uint8))
    if matte_img.size != (w, h):
        matte_img = matte_img.resize((w, h), Image.BILINEAR)
    if feather:
        matte_img = matte_img.filter(ImageFilter.GaussianBlur(feather))
    a = (np.asarray(matte_img, np.float32) / 255.0 * opacity)[..., None]
    bg = background if background.ndim == 3 else np.repeat(background[..., None], 3, axis=2)
    bg_rgb = bg[..., :3].astype(np.float32)
    if bg.shape[2] == 4:
        ba = bg[..., 3:4].astype(np.float32) / 255.0
        out_a = a + ba * (1 - a)
        out_rgb = (rgb * a + bg_rgb * ba * (1 - a)) / np.maximum(out_a, 1e-6)
        out = np.concatenate([out_rgb, out_a * 255.0], axis=2)
    else:
        out = rgb * a + bg_rgb * (1 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class VideoParams(VideoCreate):
    """POST /v1/videos's fields; the image comes through the `image` port (image → video)."""

    prompt: Prompt | None = Field(None, description="or connect a text node to `prompt`")


def _n(params) -> int:
    return int(getattr(params, "n", 1) or 1)


IMAGE, TEXT, MASK, VIDEO = "image", "text", "mask", "video"
OPS = [
    OpSpec("prompt", {}, {"text": TEXT}, TextParams, "a text"),
    OpSpec("image_input", {}, {"image": IMAGE}, ImageInputParams,
           "an image asset of the project (or an uploaded file, by its field name)"),
    OpSpec("refine", {"prompt": Port(TEXT, False)},
           {"prompt": TEXT, "negative_prompt": TEXT}, RefineParams,
           "prompt refinement (POST /v1/prompts/refine): quality terms, style, negative"),
    OpSpec("generate", {"prompt": Port(TEXT, False), "negative_prompt": Port(TEXT, False)},
           {"image": IMAGE}, GenerateParams, "text → image (POST /v1/images/generations); "
           "with n > 1 its `image` is the first, and all n are stored when it is an output",
           images=_n),
    OpSpec("edit", {"image": Port(IMAGE), "mask": Port(MASK, False),
                    "prompt": Port(TEXT, False), "negative_prompt": Port(TEXT, False),
                    "reference": Port(IMAGE, False), "reference2": Port(IMAGE, False),
                    "reference3": Port(IMAGE, False)}, {"image": IMAGE}, EditParams,
           "image + prompt → image (POST /v1/images/edits); references: composited with "
           "the image, as the route does with several images", images=_n),
    OpSpec("inpaint", {"image": Port(IMAGE), "mask": Port(MASK), "prompt": Port(TEXT, False)},
           {"image": IMAGE}, EditParams, "repaint the mask's white area", images=_n),
    OpSpec("variation", {"image": Port(IMAGE)}, {"image": IMAGE}, VariationParams,
           "POST /v1/images/variations", images=_n),
    OpSpec("style_transfer", {"image": Port(IMAGE), "prompt": Port(TEXT, False)},
           {"image": IMAGE}, StyleTransferParams, "POST /v1/images/style-transfer",
           images=lambda p: 1),
    OpSpec("remove_background", {"image": Port(IMAGE)}, {"image": IMAGE, "mask": MASK},
           RemoveBackgroundParams, "POST /v1/images/remove-background; `mask`: the subject",
           images=lambda p: 1),
    OpSpec("face_swap", {"source": Port(IMAGE), "target": Port(IMAGE)}, {"image": IMAGE},
           FaceSwapParams, "POST /v1/images/face-swap", images=lambda p: 1),
    OpSpec("upscale", {"image": Port(IMAGE)}, {"image": IMAGE}, UpscaleParams,
           "POST /v1/images/upscale", images=lambda p: 1),
    OpSpec("edit_ops", {"image": Port(IMAGE)}, {"image": IMAGE}, EditOpsParams,
           "POST /v1/images/edit-ops (crop, resize, rotate, ...)", images=lambda p: 1),
    OpSpec("composite", {"image": Port(IMAGE), "background": Port(IMAGE),
                         "mask": Port(MASK, False)}, {"image": IMAGE}, CompositeParams,
           "a cut-out over a background, at the background's size (in the ingress, no "
           "model); the matte: `mask` if connected, else the image's alpha",
           images=lambda p: 1),
    OpSpec("video", {"image": Port(IMAGE, False), "prompt": Port(TEXT, False)},
           {"video": VIDEO}, VideoParams, "text/image → video (POST /v1/videos): as an "
           "output, its MP4 and poster are stored with the job (`metadata.extra.files`)"),
    OpSpec("output", {"image": Port("any")}, {}, None, "marks an image the job stores"),
]
CATALOGUE = Catalogue(OPS)


def with_preset(node_id: str, node) -> dict[str, Any]:
    """A node's params with its `preset`: generate takes it as its `preset` param (applied as
    it runs, to the prompt it gets); style_transfer as its style. A built-in preset must
    exist (a project's own, ``pr_...``, is looked up as the node runs)."""
    params = dict(node.params)
    name = node.preset
    if name is None:
        return params
    if not name.startswith(USER_PREFIX) and builtin(name) is None:
        raise ValueError(f"no preset {name!r} (GET /v1/presets lists them)")
    found = builtin(name)
    if node.op in ("generate", "video"):
        kind = "image" if node.op == "generate" else "video"
        if found is not None and found.kind != kind:
            raise ValueError(f"preset {name!r} is a {found.kind} preset; op {node.op!r} takes "
                             f"{kind} presets (GET /v1/presets?kind={kind})")
        params.setdefault("preset", name)
    elif node.op == "style_transfer" and found is not None:
        params.setdefault("style", found.id)
    else:
        raise ValueError(f"op {node.op!r} takes no preset (generate, video and style_transfer "
                         "do)")
    return params


def problems_error(exc: WorkflowInvalid) -> ApiError:
    """A 400 naming every problem (the first's node and field in `param`)."""
    first = exc.problems[0]
    count = len(exc.problems)
    message = (f"the workflow has {count} problems: " if count > 1 else
               "the workflow is invalid: ") + "; ".join(p.message for p in exc.problems)
    return ApiError(400, message, param=first.param, code=first.code)


class Clip:
    """A video node's output: the encoded clip (`models.video.EncodedVideo`), kept in memory
    between nodes; as a workflow output, its MP4 and poster become the job's files."""

    def __init__(self, encoded: Any):
        self.encoded = encoded

    def describe(self) -> dict[str, Any]:  # in node_succeeded events
        e = self.encoded
        return {"width": e.width, "height": e.height, "frames": e.frames, "fps": e.fps}

    def files(self, name: str) -> list[OutputFile]:
        e = self.encoded
        return [OutputFile(name=name, data=e.mp4, ext="mp4", content_type="video/mp4",
                           kind="video", width=e.width, height=e.height),
                OutputFile(name=f"{name}.poster", data=e.poster, ext="png",
                           content_type="image/png", kind="video_thumbnail", width=e.width,
                           height=e.height)]


class EventLog:
    """One workflow job's node events in this replica: replayed to each SSE listener, then
    followed live until the job ends."""

    def __init__(self):
        self.events: list[dict[str, Any]] = []
        self.closed = False
        self._changed = asyncio.Event()

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def follow(self):
        i = 0
        while True:
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.closed:
                return
            self._changed.clear()
            if i < len(self.events):
                continue
            await self._changed.wait()


class WorkflowService:
    def __init__(self, *, generation: GenerationService, tools: ToolService, runner: JobRunner,
                 router: Any = None, presets: Any = None, limits: Limits = Limits(),
                 videos: Any = None):
        """`videos`: the `graphs.video.VideoService` of a gateway with a Video deployment
        (None: the `video` op is declared but not available)."""
        self.router = router
        self.videos = videos
        self.presets = presets  # graphs.presets.PresetService (None: built-ins only)
        self.generation = generation
        self.tools = tools
        self.runner = runner
        self.records = runner.records
        self.limits = limits
        reasons = {} if videos is not None else {"video": VIDEO_UNAVAILABLE}
        self.catalogue = CATALOGUE.with_unavailable(reasons)
        self.engine = Engine({
            "prompt": self._prompt, "image_input": self._image_input, "refine": self._refine,
            "generate": self._generate, "edit": self._edit, "inpaint": self._edit,
            "variation": self._variation, "style_transfer": self._style_transfer,
            "remove_background": self._remove_background, "face_swap": self._face_swap,
            "upscale": self._upscale, "edit_ops": self._edit_ops, "video": self._video,
            "composite": self._composite, "output": self._output})
        self.logs: collections.OrderedDict[str, EventLog] = collections.OrderedDict()

    # -- validation -------------------------------------------------------------------------
    def validate(self, graph: Any) -> ValidGraph:
        try:
            return validate(graph, self.catalogue, self.limits, prepare=with_preset)
        except WorkflowInvalid as exc:
            raise problems_error(exc) from None

    def with_inputs(self, raw: Any, inputs: dict[str, dict[str, Any]]) -> ValidGraph:
        """`raw` with each node's params overridden by `inputs[node]`, validated."""
        if inputs:
            if not isinstance(raw, dict) or not isinstance(raw.get("nodes"), dict):
                raise ApiError(400, "workflow must be an object with `nodes`", param="workflow")
            unknown = sorted(set(inputs) - set(raw["nodes"]))
            if unknown:
                raise ApiError(400, f"inputs names node(s) the workflow does not have: "
                               f"{', '.join(unknown)}; nodes: {', '.join(raw['nodes'])}",
                               param=f"inputs.{unknown[0]}", code="unknown_node")
            nodes = {}
            for node_id, node in raw["nodes"].items():
                if node_id in inputs and isinstance(node, dict):
                    node = {**node, "params": {**(node.get("params") or {}),
                                               **inputs[node_id]}}
                nodes[node_id] = node
            raw = {**raw, "nodes": nodes}
        return self.validate(raw)

    # -- saved workflows (per project) + the shipped examples --------------------------------
    def _available(self, graph: dict[str, Any]) -> bool:
        nodes = graph.get("nodes") or {}
        return all((op := self.catalogue.get(n.get("op"))) is not None and not op.unavailable
                   for n in nodes.values() if isinstance(n, dict))

    def _view(self, record) -> SavedWorkflow:
        return SavedWorkflow(id=record.id, name=record.name, description=record.description,
                             workflow=record.body, version=record.version,
                             available=self._available(record.body),
                             created_at=record.created_at, updated_at=record.updated_at)

    def _example_view(self, e: dict[str, Any]) -> SavedWorkflow:
        return SavedWorkflow(id=e["id"], name=e["name"], description=e["description"],
                             workflow=e["workflow"], builtin=True,
                             available=self._available(e["workflow"]))

    def _checked(self, graph: dict[str, Any]) -> dict[str, Any]:
        """A graph to save: validated (an unavailable op is allowed: it may be deployed
        later), stored as given."""
        try:
            validate(graph, CATALOGUE, self.limits, prepare=with_preset)
        except WorkflowInvalid as exc:
            raise problems_error(exc) from None
        return graph

    async def saved_list(self, *, limit: int, cursor: str | None) -> SavedWorkflowList:
        page = await asyncio.to_thread(self.records.list_library_items,
                                       project=self.runner.project, kind="workflow",
                                       limit=limit, cursor=cursor)
        examples = [self._example_view(e) for e in EXAMPLES] if cursor is None else []
        return SavedWorkflowList(data=examples + [self._view(r) for r in page.items],
                                 next_cursor=page.next_cursor)

    async def saved(self, workflow_id: str) -> SavedWorkflow:
        found = example(workflow_id)
        if found is not None:
            return self._example_view(found)
        record = await asyncio.to_thread(self.records.get_library_item, item_id=workflow_id,
                                         project=self.runner.project, kind="workflow")
        if record is None:
            raise ApiError(404, f"no workflow {workflow_id!r} (GET /v1/workflows lists them)",
                           param="workflow_id", code="not_found")
        return self._view(record)

    async def saved_graph(self, workflow_id: str) -> dict[str, Any]:
        return (await self.saved(workflow_id)).workflow

    async def save(self, body: SavedWorkflowCreate) -> SavedWorkflow:
        record = await asyncio.to_thread(
            self.records.create_library_item, project=self.runner.project, kind="workflow",
            name=body.name, description=body.description, body=self._checked(body.workflow))
        return self._view(record)

    async def update(self, workflow_id: str, body: SavedWorkflowUpdate) -> SavedWorkflow:
        if example(workflow_id) is not None:
            raise ApiError(403, f"{workflow_id!r} is a shipped example: save a copy to change "
                           "it (POST /v1/workflows)", param="workflow_id", code="read_only")
        values = body.model_dump(exclude_unset=True)
        if "workflow" in values:
            values["body"] = self._checked(values.pop("workflow"))
        record = await asyncio.to_thread(self.records.update_library_item, item_id=workflow_id,
                                         project=self.runner.project, kind="workflow", **values)
        if record is None:
            raise ApiError(404, f"no workflow {workflow_id!r}", param="workflow_id",
                           code="not_found")
        return self._view(record)

    async def delete(self, workflow_id: str) -> None:
        if example(workflow_id) is not None:
            raise ApiError(403, f"{workflow_id!r} is a shipped example and cannot be deleted",
                           param="workflow_id", code="read_only")
        if not await asyncio.to_thread(self.records.delete_library_item, item_id=workflow_id,
                                       project=self.runner.project, kind="workflow"):
            raise ApiError(404, f"no workflow {workflow_id!r}", param="workflow_id",
                           code="not_found")

    def ops(self) -> list[dict[str, Any]]:
        return [op.describe() for op in self.catalogue.ops.values()]

    # -- execution --------------------------------------------------------------------------
    async def execute(self, graph: ValidGraph, *, base_url: str, async_job: bool = False,
                      keep_intermediates: bool = False, uploads: dict[str, np.ndarray]
                      | None = None, kind: str = "workflow", prompt: str | None = None,
                      on_success=None, charge=None, params: dict[str, Any] | None = None,
                      intents: dict[str, str] | None = None, denoising_events: bool = True):
        """Run `graph` as one job (its images charged first, or by the caller: `charge`): the
        outputs are its images, the node timeline its record (`result.workflow`). `uploads`:
        images given with the request, by the asset id its image_input nodes name.
        `intents` (chat plans): each step node's plan intent, for the reply's per-step
        metadata. `denoising_events`: async jobs stream the denoising progress of
        their local generate nodes (an unbatched call on the Generator)."""
        uploads = uploads or {}
        # asset ids are resolved before the job starts: a foreign id is a 404, nothing runs
        loaded: dict[str, np.ndarray] = {}
        for node_id, node in graph.graph.nodes.items():
            if node.op == "image_input":
                asset = graph.params[node_id].asset_id
                if asset in uploads:
                    loaded[node_id] = uploads[asset]
                else:
                    loaded[node_id] = await self.runner.load_image(
                        asset, param=f"nodes.{node_id}.params.asset_id")

        async def work(progress) -> Output:
            return await self._work(graph, progress, loaded, keep_intermediates, charge,
                                    intents or {}, denoising_events)

        return await self.runner.run(
            kind=kind, prompt=prompt, params=params or {"workflow": graph.graph.dump()},
            model_info={"name": "workflow", "tiny": False, "fallback": False,
                        "fallback_reason": None},
            work=work, base_url=base_url, async_job=async_job, on_success=on_success,
            images=charge if charge is not None else max(1, graph.images))

    async def _work(self, graph: ValidGraph, progress, loaded: dict[str, np.ndarray],
                    keep_intermediates: bool, charge, intents: dict[str, str],
                    denoising_events: bool = True) -> Output:
        job_id = progress.job_id
        log = EventLog()
        if job_id is not None:
            self.logs[job_id] = log
            while len(self.logs) > 256:
                self.logs.popitem(last=False)
        worker = asyncio.current_task()
        total = len(graph.order)
        finished = 0
        writes: set[asyncio.Task] = set()
        kept: dict[str, str] = {}

        async def record(step: str, force: bool) -> None:
            try:
                await progress(min(0.9, 0.9 * finished / total), step, force=force)
            except JobCancelled:
                worker.cancel("cancelled")

        def emit(event: dict[str, Any]) -> None:
            nonlocal finished
            if job_id is not None:
                event = {**event, "job_id": job_id}
            log.add(event)
            kind = event["event"]
            if kind in ("node_succeeded", "node_failed", "node_skipped"):
                finished += 1
            if kind == "node_succeeded" and charge is not None:
                # a failing later node refunds only what the job did not make
                spec = self.catalogue.get(event["op"])
                if spec.images is not None:
                    charge.produced(spec.images(graph.params.get(event["node"])))
            if progress.live:
                step = f"{event['node']}: {event.get('step') or kind}"
                task = asyncio.ensure_future(record(step, force=kind != "progress"))
                writes.add(task)
                task.add_done_callback(writes.discard)

        token = _RUN.set((loaded, keep_intermediates, kept,
                          progress.live and denoising_events))
        try:
            result = await self.engine.run(graph, emit=emit)
        finally:
            _RUN.reset(token)
            log.close()
            for task in list(writes):
                task.cancel()
        if not result.ok:
            first = result.nodes[result.failed[0]]["exception"]
            error = to_api_error(first)
            raise ApiError(error.status if error.status < 500 else 502, result.reason(),
                           param=f"nodes.{result.failed[0]}", code="workflow_node_failed")
        images = []
        names = []
        files: list[OutputFile] = []
        for node, port in graph.outputs:
            value = result.values.get((node, port))
            if value is None and graph.graph.nodes[node].op == "output":
                continue
            if isinstance(value, Clip):
                files += value.files(f"{node}.{port}")
                continue
            many = result.values.get((node, "images")) if port == "image" else None
            for image in many or [value]:
                if isinstance(image, np.ndarray):
                    images.append(image if image.ndim == 3 else np.dstack([image] * 3))
                    names.append(f"{node}.{port}")
        if not images and not files:
            raise ApiError(400, "the workflow produced no image or video output",
                           param="outputs")
        recipes = self._recipes(graph, result, names)
        timeline = {n: {k: v for k, v in info.items() if k != "exception"}
                    for n, info in result.nodes.items()}
        extra = {"workflow": {"nodes": timeline, "stages": graph.stages,
                              "outputs": names + [f.name for f in files if f.kind == "video"],
                              **({"intermediates": kept} if kept else {})}}
        models = [info.get("meta", {}).get("model") for info in timeline.values()]
        timings = {f"node_{n}_s": info.get("seconds", 0.0) for n, info in timeline.items()}
        if intents:  # a chat plan: the reply's per-step metadata
            extra.update(await self._plan_meta(timeline, intents))
        last = result.nodes[graph.outputs[0][0]].get("meta", {}) if graph.outputs else {}
        return Output(images=images, model="+".join(m for m in models if m) or "workflow",
                      extra=extra, record={"workflow": extra["workflow"]}, timings=timings,
                      recipes=recipes, files=files,
                      seeds=last.get("seeds"), provider=last.get("provider"),
                      attempts=last.get("attempts") or [])

    @staticmethod
    def _recipes(graph: ValidGraph, result, names: list[str]) -> list[dict[str, Any]]:
        """Each output image's recipe: the graph, the output it is, every node's seed (a
        remix pins them), and the generation details of the node that made it."""
        seeds = {n: info["meta"]["seed"] for n, info in result.nodes.items()
                 if info.get("meta", {}).get("seed") is not None}
        dumped = graph.graph.dump()
        recipes = []
        for name in names:
            node = name.split(".", 1)[0]
            meta = result.nodes[node].get("meta", {})
            recipes.append({"v": 1, "kind": "workflow", "workflow": dumped, "node": name,
                            "seeds": seeds, **{k: meta[k] for k in (
                                "prompt", "model", "seed", "steps") if meta.get(k) is not None},
                            **({"preset": p} if (p := getattr(graph.params.get(node),
                                                              "preset", None)) else {})})
        return recipes

    async def _plan_meta(self, timeline: dict[str, dict], intents: dict[str, str]
                         ) -> dict[str, Any]:
        """models per intent, each step's model / images / tiny / fallback, the refined
        prompt: what the chat reply reports."""
        steps, models, refined = [], {}, None
        for node, intent in intents.items():
            info = timeline[node]
            meta = info.get("meta", {})
            model_info = await self._model_info(info["op"])
            models[intent] = meta.get("model")
            steps.append({"intent": intent, "model": meta.get("model"),
                          **({"provider": meta["provider"]} if meta.get("provider") else {}),
                          "images": meta.get("images", 1),
                          "tiny": bool(model_info.get("tiny")),
                          "fallback": bool(model_info.get("fallback")),
                          "fallback_reason": model_info.get("fallback_reason")})
            refined = meta.get("refined_prompt") or refined
        return {"models": models, "steps": steps,
                **({"refined_prompt": refined} if refined else {})}

    async def _model_info(self, op: str) -> dict[str, Any]:
        """The deployment behind an op: tiny / fallback and why."""
        if op in TOOL_DEPLOYMENTS:
            return await self.tools.info(TOOL_DEPLOYMENTS[op])
        if op in ("generate", "edit", "inpaint", "variation", "style_transfer"):
            return await self.generation.model_info()
        return {}

    async def _streamed(self, ctx: NodeContext, req) -> Output:
        result = None
        async with _streaming(self.generation.generator, req, 0) as events:
            async for event in events:
                if event["type"] == "progress":
                    await ctx.progress(event["step"] / event["total"],
                                       f"denoising step {event['step']}/{event['total']}")
                elif event["type"] == "result":
                    result = event["result"]
        return Output(images=result.images, model=result.model, seeds=result.seeds,
                      timings=result.timings, provider="local")

    async def _maybe_keep(self, ctx: NodeContext, image: np.ndarray) -> dict[str, Any]:
        _, keep, kept, _ = _RUN.get()
        if not keep:
            return {}
        asset_id = await self.runner.store_image(image, kind="workflow-intermediates")
        kept[ctx.node] = asset_id
        return {"asset_id": asset_id}

    # -- ops (the same service calls as the routes) -----------------------------------------
    async def _prompt(self, ctx: NodeContext) -> dict[str, Any]:
        return {"text": ctx.params.text}

    async def _refine(self, ctx: NodeContext) -> dict[str, Any]:
        text = ctx.inputs.get("prompt") or ctx.params.text
        if not text:
            raise ApiError(400, f"node {ctx.node!r}: give params.text or connect a text node "
                           "to its `prompt` input", param=f"nodes.{ctx.node}.params.text")
        refined = await self.router.refine.remote(text, style=ctx.params.style)
        return {"prompt": refined.prompt, "negative_prompt": refined.negative_prompt,
                "_meta": {"prompt": refined.prompt}}

    async def _image_input(self, ctx: NodeContext) -> dict[str, Any]:
        loaded, _, _, _ = _RUN.get()
        return {"image": loaded[ctx.node]}

    async def _output(self, ctx: NodeContext) -> dict[str, Any]:
        return {}

    async def _gen(self, ctx: NodeContext, prompt: str, opts: Options, **extra) -> dict:
        info = await self.generation.model_info()
        if ctx.inputs.get("negative_prompt"):
            opts.negative_prompt = ", ".join(filter(None, [ctx.inputs["negative_prompt"],
                                                           opts.negative_prompt]))
        auto = None
        image = extra.get("image")
        if image is not None:
            auto = fit_to_limits(image.shape[1], image.shape[0], info["limits"])
        route = self.generation.route(opts, info)
        req = self.generation.build_request(prompt, opts, info, auto_size=auto, route=route,
                                            **extra)
        _, _, _, live = _RUN.get()
        if live and route.direct(self.generation.router):
            out = await self._streamed(ctx, req)  # denoising progress as node events
        else:
            out = await self.generation.run_request(req, route)
        first = out.images[0]
        meta = {"model": out.model, "seed": (out.seeds or [None])[0], "steps": req.steps,
                "prompt": prompt, "images": len(out.images), "seeds": out.seeds,
                "provider": out.provider, "attempts": out.attempts,
                **({"refined_prompt": prompt} if "prompt" in ctx.inputs else {}),
                **await self._maybe_keep(ctx, first)}
        values = {"image": first, "_meta": meta}
        if len(out.images) > 1:
            values["images"] = out.images  # all n, stored when the node is an output
        return values

    def _text(self, ctx: NodeContext) -> str | None:
        return ctx.inputs.get("prompt") or getattr(ctx.params, "prompt", None)

    async def _generate(self, ctx: NodeContext) -> dict[str, Any]:
        prompt = self._text(ctx)
        if not prompt:
            raise ApiError(400, f"node {ctx.node!r}: give params.prompt or connect a text "
                           "node to its `prompt` input", param=f"nodes.{ctx.node}.params.prompt")
        params = ctx.params
        if params.preset:  # its template wraps the prompt (which may come from a text node)
            preset = await self._preset(params.preset)
            body = compose_generation(preset, params.model_copy(update={"prompt": prompt}))
            prompt, params = body.prompt, body
        return await self._gen(ctx, prompt, Options.of(params))

    async def _preset(self, preset_id: str):
        if self.presets is not None:
            return await self.presets.get(preset_id)
        found = builtin(preset_id)
        if found is None:
            raise ApiError(400, f"no preset {preset_id!r}", param="preset")
        return found

    async def _edit(self, ctx: NodeContext) -> dict[str, Any]:
        prompt = self._text(ctx) or "the same image"
        image = ctx.inputs["image"][..., :3]
        mask = ctx.inputs.get("mask")
        if mask is not None:
            if mask.ndim == 3:
                mask = mask[..., -1]
            if mask.shape[:2] != image.shape[:2]:
                from PIL import Image
                mask = np.asarray(Image.fromarray(mask).resize((image.shape[1],
                                                                image.shape[0])))
            repaint = np.where(mask >= 128, 255, 0).astype(np.uint8)
            return await self._gen(ctx, prompt, Options.of(ctx.params), mode="inpaint",
                                   image=image, mask=repaint, strength=1.0)
        references = [ctx.inputs[k] for k in ("reference", "reference2", "reference3")
                      if ctx.inputs.get(k) is not None]
        if references:  # several images: one composite, as POST /v1/images/edits does
            return await self._gen(ctx, prompt, Options.of(ctx.params), mode="img2img",
                                   image=composite([ctx.inputs["image"], *references]),
                                   strength=INPUT_FIDELITY_STRENGTH[ctx.params.input_fidelity])
        strength = INPUT_FIDELITY_STRENGTH[ctx.params.input_fidelity]
        return await self._gen(ctx, prompt, Options.of(ctx.params), mode="img2img",
                               image=image, strength=strength)

    async def _variation(self, ctx: NodeContext) -> dict[str, Any]:
        p = ctx.params
        opts = Options(n=p.n, size=p.size, model=p.model, seed=p.seed, provider=p.provider)
        return await self._gen(ctx, VARIATION_PROMPT, opts, mode="img2img",
                               image=ctx.inputs["image"][..., :3], strength=VARIATION_STRENGTH)

    async def _style_transfer(self, ctx: NodeContext) -> dict[str, Any]:
        p = ctx.params
        request, resolved = await self.tools.style_request(
            ctx.inputs["image"][..., :3], style=p.style, prompt=self._text(ctx),
            strength=p.strength, seed=p.seed, steps=p.steps)
        out = await self.tools.style_run(request, resolved)
        return await self._tool_result(ctx, out, style=out.extra.get("style"),
                                       refined_prompt=resolved.prompt)

    async def _tool_result(self, ctx: NodeContext, out: Output, **meta) -> dict[str, Any]:
        first = out.images[0]
        return {"image": first, "_meta": {"model": out.model, **meta,
                                          **await self._maybe_keep(ctx, first)}}

    async def _remove_background(self, ctx: NodeContext) -> dict[str, Any]:
        p = ctx.params
        out = await self.tools.matting_op(ctx.inputs["image"], output=p.output,
                                          bg_color=parse_color(p.bg_color),
                                          alpha_matting=p.alpha_matting)
        values = await self._tool_result(ctx, out)
        image = out.images[0]
        values["mask"] = image[..., 3] if image.ndim == 3 and image.shape[2] == 4 else (
            image if image.ndim == 2 else image[..., 0])
        return values

    async def _face_swap(self, ctx: NodeContext) -> dict[str, Any]:
        p = ctx.params
        out = await self.tools.faceswap_op(ctx.inputs["source"][..., :3],
                                           ctx.inputs["target"][..., :3],
                                           target_face_index=p.target_face_index,
                                           all_faces=p.all_faces)
        return await self._tool_result(ctx, out, faces_swapped=out.extra["faces_swapped"])

    async def _upscale(self, ctx: NodeContext) -> dict[str, Any]:
        out = await self.tools.upscale_op(ctx.inputs["image"], scale=ctx.params.scale)
        return await self._tool_result(ctx, out)

    async def _edit_ops(self, ctx: NodeContext) -> dict[str, Any]:
        image = ctx.inputs["image"]
        edit = parse_edit_request(ctx.params.ops)
        limit = self.tools.limits.max_pixels
        check_ops((image.shape[1], image.shape[0]), edit.ops, max_pixels=limit)
        out = await self.tools.pool.run(apply_ops, image, edit.ops, max_pixels=limit)
        return await self._tool_result(ctx, Output(images=[out], model="edit-ops"))

    async def _composite(self, ctx: NodeContext) -> dict[str, Any]:
        p = ctx.params
        try:
            out = await self.tools.pool.run(composite_over, ctx.inputs["image"],
                                            ctx.inputs["background"], ctx.inputs.get("mask"),
                                            opacity=p.opacity, feather=p.feather)
        except ValueError as exc:
            # the job names the node: "node 'x' (composite) failed: <this>"
            raise ApiError(400, str(exc), param=f"nodes.{ctx.node}.in.mask",
                           code="invalid_input") from None
        return await self._tool_result(ctx, Output(images=[out], model="composite"))

    async def _video(self, ctx: NodeContext) -> dict[str, Any]:
        """The same request building (`VideoService.build`: preset, fps, frames, conditioning)
        and the same Video deployment stream as POST /v1/videos; denoising steps are node
        progress events; the clip stays in memory until the job stores its outputs."""
        prompt = self._text(ctx)
        if not prompt:
            raise ApiError(400, f"node {ctx.node!r}: give params.prompt or connect a text "
                           "node to its `prompt` input", param=f"nodes.{ctx.node}.params.prompt")
        body = VideoCreate.model_validate({**ctx.params.model_dump(exclude_unset=True),
                                           "prompt": prompt})
        image = ctx.inputs.get("image")
        req, params = await self.videos.build(
            body, image=None if image is None else np.ascontiguousarray(image[..., :3]))

        async def on_step(step: int, total: int) -> None:
            await ctx.progress(step / total, f"denoising step {step}/{total}")

        out = await self.videos.render(req, body.preview, on_step)
        clip = Clip(out["video"])
        return {"video": clip, "_meta": {"model": out["model"], "seed": out["seed"],
                                         "steps": req.steps, "prompt": body.prompt,
                                         "frames": clip.encoded.frames, "fps": clip.encoded.fps,
                                         **({"preset": body.preset} if body.preset else {}),
                                         "conditioned_prompt": params["conditioned_prompt"]}}

    # -- SSE ----------------------------------------------------------------------------------
    def replay(self, record: Any) -> list[dict[str, Any]]:
        """A finished job's node events from its record (another replica ran it, or its log
        here is gone): started/succeeded per node, in start order."""
        nodes = ((record.result or {}).get("workflow") or {}).get("nodes") or {}
        events = []
        for node, info in nodes.items():
            if "started_at" in info:
                events.append({"event": "node_started", "node": node, "op": info["op"],
                               "t": info["started_at"], "job_id": record.id})
            end = {"succeeded": "node_succeeded", "skipped": "node_skipped"}.get(
                info["status"], "node_failed")
            events.append({"event": end, "node": node, "op": info["op"],
                           "t": info.get("ended_at", info.get("started_at", 0)),
                           "job_id": record.id, **({"error": info["error"]}
                                                   if "error" in info else {}),
                           **info.get("meta", {})})
        return sorted(events, key=lambda e: (e["t"], e["event"] != "node_started"))


def sse(event: dict[str, Any]) -> dict[str, str]:
    return {"event": event["event"], "data": json.dumps(event, default=str)}

