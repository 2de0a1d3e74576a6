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
    fit_to_limits,
)
from graphs.jobs import JobCancelled, JobRunner, Output
from graphs.schemas import (
    FaceSwapForm,
    ImageGenerationRequest,
    OutputOptions,
    Prompt,
    RemoveBackgroundForm,
    StyleTransferForm,
    UpscaleForm,
    VariationForm,
)
from graphs.tools import ToolService, parse_color
from models.editing import apply_ops, check_ops, parse_edit_request
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

VIDEO_UNAVAILABLE = "no Video deployment on this gateway"
NoFile = SkipJsonSchema[None]
# one run's (loaded input images, keep_intermediates, kept asset ids): its node tasks inherit it
_RUN: ContextVar[tuple[dict, bool, dict]] = ContextVar("workflow_run")


# -- params models: the routes' models, images coming through ports -------------------------
class TextParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Prompt


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


class VideoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Prompt | None = None
    seconds: int = Field(4, ge=1, le=20)


def _n(params) -> int:
    return int(getattr(params, "n", 1) or 1)


IMAGE, TEXT, MASK, VIDEO = "image", "text", "mask", "video"
OPS = [
    OpSpec("prompt", {}, {"text": TEXT}, TextParams, "a text"),
    OpSpec("image_input", {}, {"image": IMAGE}, ImageInputParams,
           "an image asset of the project (or an uploaded file, by its field name)"),
    OpSpec("generate", {"prompt": Port(TEXT, False)}, {"image": IMAGE}, GenerateParams,
           "text → image (POST /v1/images/generations)", images=_n),
    OpSpec("edit", {"image": Port(IMAGE), "mask": Port(MASK, False),
                    "prompt": Port(TEXT, False)}, {"image": IMAGE}, EditParams,
           "image + prompt → image (POST /v1/images/edits)", images=_n),
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
    OpSpec("video", {"image": Port(IMAGE, False), "prompt": Port(TEXT, False)},
           {"video": VIDEO}, VideoParams, "text/image → video"),
    OpSpec("output", {"image": Port("any")}, {}, None, "marks an image the job stores"),
]
CATALOGUE = Catalogue(OPS)


def problems_error(exc: WorkflowInvalid) -> ApiError:
    """A 400 naming every problem (the first's node and field in `param`)."""
    first = exc.problems[0]
    count = len(exc.problems)
    message = (f"the workflow has {count} problems: " if count > 1 else
               "the workflow is invalid: ") + "; ".join(p.message for p in exc.problems)
    return ApiError(400, message, param=first.param, code=first.code)


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
                 limits: Limits = Limits(), video_available: bool = False):
        self.generation = generation
        self.tools = tools
        self.runner = runner
        self.limits = limits
        reasons = {} if video_available else {"video": VIDEO_UNAVAILABLE}
        self.catalogue = CATALOGUE.with_unavailable(reasons)
        self.engine = Engine({
            "prompt": self._prompt, "image_input": self._image_input,
            "generate": self._generate, "edit": self._edit, "inpaint": self._edit,
            "variation": self._variation, "style_transfer": self._style_transfer,
            "remove_background": self._remove_background, "face_swap": self._face_swap,
            "upscale": self._upscale, "edit_ops": self._edit_ops, "output": self._output})
        self.logs: collections.OrderedDict[str, EventLog] = collections.OrderedDict()

    # -- validation -------------------------------------------------------------------------
    def validate(self, graph: Any) -> ValidGraph:
        try:
            return validate(graph, self.catalogue, self.limits)
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

    def ops(self) -> list[dict[str, Any]]:
        return [op.describe() for op in self.catalogue.ops.values()]

    # -- execution --------------------------------------------------------------------------
    async def execute(self, graph: ValidGraph, *, base_url: str, async_job: bool = False,
                      keep_intermediates: bool = False, uploads: dict[str, np.ndarray]
                      | None = None, kind: str = "workflow", prompt: str | None = None,
                      on_success=None, charge=None, params: dict[str, Any] | None = None):
        """Run `graph` as one job (its images charged first): the outputs are its images, the
        node timeline its record (`result.workflow`)."""
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
            return await self._work(graph, progress, loaded, keep_intermediates)

        return await self.runner.run(
            kind=kind, prompt=prompt, params=params or {"workflow": graph.graph.dump()},
            model_info={"name": "workflow", "tiny": False, "fallback": False,
                        "fallback_reason": None},
            work=work, base_url=base_url, async_job=async_job, on_success=on_success,
            images=charge if charge is not None else max(1, graph.images))

    async def _work(self, graph: ValidGraph, progress, loaded: dict[str, np.ndarray],
                    keep_intermediates: bool) -> Output:
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

        async def record(step: str) -> None:
            try:
                await progress(min(0.9, 0.9 * finished / total), step, force=True)
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
            if progress.live and kind != "progress":
                task = asyncio.ensure_future(record(f"{event['node']}: {kind}"))
                writes.add(task)
                task.add_done_callback(writes.discard)

        token = _RUN.set((loaded, keep_intermediates, kept))
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
        for node, port in graph.outputs:
            value = result.values.get((node, port))
            if value is None and graph.graph.nodes[node].op == "output":
                continue
            if isinstance(value, np.ndarray):
                images.append(value if value.ndim == 3 else np.dstack([value] * 3))
                names.append(f"{node}.{port}")
        if not images:
            raise ApiError(400, "the workflow produced no image output", param="outputs")
        timeline = {n: {k: v for k, v in info.items() if k != "exception"}
                    for n, info in result.nodes.items()}
        extra = {"workflow": {"nodes": timeline, "stages": graph.stages, "outputs": names,
                              **({"intermediates": kept} if kept else {})}}
        models = [info.get("meta", {}).get("model") for info in timeline.values()]
        return Output(images=images, model="+".join(m for m in models if m) or "workflow",
                      extra=extra, record={"workflow": extra["workflow"]})

    async def _maybe_keep(self, ctx: NodeContext, image: np.ndarray) -> dict[str, Any]:
        _, keep, kept = _RUN.get()
        if not keep:
            return {}
        asset_id = await self.runner.store_image(image, kind="workflow-intermediates")
        kept[ctx.node] = asset_id
        return {"asset_id": asset_id}

    # -- ops (the same service calls as the routes) -----------------------------------------
    async def _prompt(self, ctx: NodeContext) -> dict[str, Any]:
        return {"text": ctx.params.text}

    async def _image_input(self, ctx: NodeContext) -> dict[str, Any]:
        loaded, _, _ = _RUN.get()
        return {"image": loaded[ctx.node]}

    async def _output(self, ctx: NodeContext) -> dict[str, Any]:
        return {}

    async def _gen(self, ctx: NodeContext, prompt: str, opts: Options, **extra) -> dict:
        info = await self.generation.model_info()
        auto = None
        image = extra.get("image")
        if image is not None:
            auto = fit_to_limits(image.shape[1], image.shape[0], info["limits"])
        req = self.generation.build_request(prompt, opts, info, auto_size=auto, **extra)
        out = await self.generation.run_request(req)
        first = out.images[0]
        meta = {"model": out.model, "seed": (out.seeds or [None])[0], "steps": req.steps,
                "prompt": prompt, **await self._maybe_keep(ctx, first)}
        return {"image": first, "_meta": meta}

    def _text(self, ctx: NodeContext) -> str | None:
        return ctx.inputs.get("prompt") or getattr(ctx.params, "prompt", None)

    async def _generate(self, ctx: NodeContext) -> dict[str, Any]:
        prompt = self._text(ctx)
        if not prompt:
            raise ApiError(400, f"node {ctx.node!r}: give params.prompt or connect a text "
                           "node to its `prompt` input", param=f"nodes.{ctx.node}.params.prompt")
        return await self._gen(ctx, prompt, Options.of(ctx.params))

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
        return await self._tool_result(ctx, out, style=out.extra.get("style"))

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

