"""The chat endpoint's logic: a message becomes a plan (Router deployment), the plan's steps
run across the deployments, each step's output image feeding the next, and the session
remembers the result for follow-ups ("make it bigger", "now in watercolor").

`general` messages get a text answer without touching a GPU; a step whose image is missing
gets a text answer asking for it (never an error).

The request path is kept short (BENCHMARKS.md, "Gateway overhead"): messages the router's
rules decide alone (greetings, clear operations) are planned here with the same rules and
thresholds as the Router deployment, without the hop; the rest go to the Router. A text turn
is recorded in one transaction (`RecordStore.add_turn`: new session, the user's message, the
answer); the turns of concurrent requests are committed together (`TurnWriter`: one
transaction for whatever arrived while the previous one was being written), and on SQLite the
session writes go through one writer thread: SQLite takes one writer at a time, and writers
racing for its lock only wait and retry.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from graphs import auth
from graphs.errors import ApiError
from graphs.generation import (
    GenerationService,
    Options,
    composite,
    fit_to_limits,
    resolve_loras,
)
from graphs.jobs import JobRunner, Output
from graphs.schemas import ChatAction, ChatData, ChatImage, ChatResponse
from graphs.tools import ToolService
from router import replies
from router.cascade import Cascade
from router.schemas import SessionContext

EDIT_STRENGTH = 0.65

# Reply texts in the message's language (English or French): router/replies.py.
HELP_TEXT = replies.help_text("en")
INTENT_LABELS = replies.DONE["en"]
# The deployment behind each tool step (its info() says tiny / fallback and why).
TOOL_DEPLOYMENTS = {"background_removal": "matting", "upscale": "upscaler",
                    "face_swap": "faceswap"}


def step_images(step) -> int:
    """Images a plan step makes (what it is charged): a generation or edit its `n`, any other
    image step one."""
    if step.intent == "general":
        return 0
    if step.intent in ("image_generation", "image_edit"):
        return int(step.params.get("n") or 1)
    return 1


class TurnWriter:
    """Group commit of chat turns (`RecordStore.add_turns`). A turn arriving while no write
    is under way is written at once (no added latency when idle); turns arriving during a
    write wait for it to end and are then written together in one transaction. Under load a
    transaction carries several turns, so the per-transaction cost (connection, commit,
    statement set-up), most of a text turn's CPU, is paid once per batch. Each caller gets
    its own turn's session id or error (a failed turn does not fail the others)."""

    def __init__(self, add_turns: Any, write: Any):
        self._add_turns = add_turns  # RecordStore.add_turns
        self._write = write  # async (fn, /, **kwargs) -> result: off the event loop
        self._pending: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._flush_task: asyncio.Task | None = None
        self.batches = 0  # transactions written, and the turns in them (tests, stats)
        self.turns = 0

    async def add(self, **turn: Any) -> str:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((turn, future))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._write(self._add_turns, turns=[t for t, _ in batch])
            except Exception as exc:  # the database itself: every turn of the batch fails
                results = [exc] * len(batch)
            self.batches += 1
            self.turns += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its request was cancelled; the turn is written anyway
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class ChatService:
    def __init__(self, *, router: Any, generation: GenerationService, tools: ToolService,
                 runner: JobRunner):
        self.router = router
        self.generation = generation
        self.tools = tools
        self.runner = runner
        self.records = runner.records
        self._rules = None  # router.cascade.Cascade with the Router's thresholds, no models
        self._router_stages: set[str] = set()
        dialect = getattr(getattr(self.records, "engine", None), "dialect", None)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="chat-writes") \
            if getattr(dialect, "name", None) == "sqlite" else None
        self.turns = TurnWriter(self.records.add_turns, self._write)

    async def _write(self, fn, /, **kwargs):
        """A session write, off the event loop (SQLite: on the one writer thread)."""
        if self._writer is None:
            return await asyncio.to_thread(fn, **kwargs)
        call = functools.partial(contextvars.copy_context().run, fn, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._writer, call)

    # -- sessions -------------------------------------------------------------------------
    async def session(self, session_id: str | None):
        if session_id is None:
            return await self._write(self.records.create_session, project=self.runner.project)
        session = await asyncio.to_thread(self.records.get_session, session_id=session_id,
                                          project=self.runner.project, message_limit=20)
        if session is None:  # missing, or another project's
            raise ApiError(404, f"no session {session_id!r}", param="session_id",
                           code="not_found")
        return session

    async def check_context(self, overrides: dict[str, Any] | None) -> None:
        """Ids the client puts in the context must be the caller's own: an unknown or another
        project's image is a 404, whatever the message asks (a dry-run plan too)."""
        image_id = (overrides or {}).get("last_image_id")
        if image_id is None:
            return
        if not isinstance(image_id, str) or await asyncio.to_thread(
                self.records.get_asset, asset_id=image_id, project=self.runner.project) is None:
            raise ApiError(404, f"no asset {image_id!r}", param="context.last_image_id",
                           code="not_found")

    @staticmethod
    def context(session, overrides: dict[str, Any] | None):
        """The session's context for follow-ups (`session` None: a new session, none yet)."""
        context: dict[str, Any] = {}
        for message in session.messages if session is not None else []:
            context.update(message.data.get("context", {}))
        if overrides:
            context.update(overrides)
        try:
            return SessionContext(**context)
        except ValueError as exc:
            raise ApiError(400, f"context: {exc}", param="context") from None

    async def plan(self, message: str, *, images: int, context=None):
        """The Router's plan: from the rules here when they decide alone (the same plan the
        Router would return), else from the Router deployment."""
        if self._rules is None:
            info = await self.router.info.remote()
            self._router_stages = set(info["stages"])
            self._rules = Cascade(rules_threshold=info["thresholds"]["rules"],
                                  llm_threshold=info["thresholds"]["llm"])
        try:
            plan = self._rules.plan_if_rules_decide(
                message, images, context, embeddings="embedding" in self._router_stages,
                llm="llm" in self._router_stages)
        except ValueError:
            plan = None  # the Router answers invalid arguments, with its message
        if plan is not None:
            return plan
        # Positional: over Serve's gRPC transport (RAY_SERVE_THROUGHPUT_OPTIMIZED) a keyword
        # argument named `context` collides with the replica's own and the call fails.
        return await self.router.plan.remote(message, images, context)

    # -- the endpoint -----------------------------------------------------------------------
    async def chat(self, *, message: str, session_id: str | None,
                   context: dict[str, Any] | None, uploads: list[np.ndarray],
                   base_url: str, async_job: bool = False,
                   loras: list | None = None) -> ChatResponse:
        started = time.perf_counter()
        # LoRA adapters: the `loras` field and <lora:name:w> tags in the message (taken out
        # before planning), checked now (400 before any job); the image steps apply them
        if loras or "<lora:" in message:
            info = await self.generation.model_info()
            message, refs = resolve_loras(message, loras, info)
            loras = [{"name": r.name, "weight": r.weight} for r in refs]
        # a new session is created once the message is planned (a failed plan leaves none)
        session = await self.session(session_id) if session_id is not None else None
        ctx = self.context(session, context)
        await self.check_context(context)
        plan = await self.plan(message, images=len(uploads), context=ctx)
        image_steps = [s for s in plan.steps if s.intent != "general"]
        # every image this plan makes, charged before any of it runs (429 before a job exists)
        runs = bool(image_steps) and not plan.missing_inputs  # else a text answer
        # images the plan takes from the session, resolved in the caller's project now: an
        # unknown or foreign id is a 404 before anything is charged, stored or run
        session_images = await self._session_images(image_steps, ctx) if runs else {}
        charge = await self.runner.charge_images(
            sum(map(step_images, image_steps)) if runs else 0)
        try:
            # uploads are stored once the message is planned: a refused request stores nothing
            upload_ids = [await self.runner.store_image(img, kind="uploads") for img in uploads]
        except BaseException:
            await asyncio.shield(charge.refund_unproduced())
            raise
        user_message = {"role": "user", "content": message, "image_ids": upload_ids,
                        "data": {"context": {"last_image_id": upload_ids[-1]}}
                        if upload_ids else {}}
        metadata: dict[str, Any] = {"stage": plan.stage, "confidence": plan.confidence,
                                    "timings": {f"plan_{k}": v for k, v in plan.timings.items()},
                                    "language": plan.language}
        if plan.llm_error:
            metadata["llm_error"] = plan.llm_error
        plan_json = plan.model_dump(mode="json")
        if not runs:
            text = (plan.clarification if plan.missing_inputs else None) or \
                replies.help_text(plan.language)
            answer = {"role": "assistant", "content": text, "image_ids": [],
                      "data": {"type": "text", "context": {}, "plan": plan_json}}
            recorded = await self.turns.add(
                session_id=session.id if session else None, project=self.runner.project,
                messages=[user_message, answer])
            return ChatResponse(
                session_id=recorded, message=text, type="text",
                data=ChatData(plan=plan_json), metadata=metadata,
                suggestions=[] if plan.missing_inputs else replies.suggestions(
                    "text", plan.language))

        try:
            session_id = await self.turns.add(session_id=session.id if session else None,
                                              project=self.runner.project,
                                              messages=[user_message])
        except BaseException:
            await asyncio.shield(charge.refund_unproduced())
            raise
        images_by_source = {"upload": uploads, "session": session_images}
        ready = replies.image_ready([s.intent for s in image_steps], plan.language)
        last = image_steps[-1]
        prompt = next((s.params.get("prompt") for s in image_steps if s.params.get("prompt")),
                      None)

        async def reply_for(response, assets) -> ChatResponse:
            out_meta = response.metadata
            meta = {**metadata, "timings": {**metadata["timings"], **{
                k: round(v, 4) for k, v in out_meta.timings.items()}},
                "models": out_meta.extra.get("models", {}),
                "steps": out_meta.extra.get("steps", [])}
            # honest about tiny / fallback models, per step (as the image routes are)
            meta["tiny"] = any(st.get("tiny") for st in meta["steps"])
            meta["fallback"] = any(st.get("fallback") for st in meta["steps"])
            if out_meta.extra.get("refined_prompt"):
                meta["refined_prompt"] = out_meta.extra["refined_prompt"]
            meta["timings"]["total"] = time.perf_counter() - started
            # the asset rows as the runner stored them: their records are written with the
            # job's success, after this
            images = [ChatImage(id=asset.id, url=self.runner.asset_url(asset.id, base_url,
                                                                       asset.project),
                                width=asset.width, height=asset.height,
                                format=asset.content_type.split("/")[-1])
                      for asset in assets]
            return ChatResponse(
                session_id=session_id, message=ready, type="image",
                data=ChatData(images=images, plan=plan_json, job_id=out_meta.job_id),
                actions=[
                    # the other reading first ("Generate a new one instead" of an edit)
                    *(ChatAction(id=alt.id, label=alt.label, type="chat",
                                 data={"message": alt.message}) for alt in plan.alternatives),
                    *(ChatAction(**action) for action in replies.image_actions(plan.language)),
                    ChatAction(id="download", label=replies.download_label(plan.language),
                               type="link", data={"url": images[0].url}),
                ],
                suggestions=replies.suggestions("image", plan.language),
                metadata=meta)

        built: dict[str, ChatResponse] = {}

        async def remember(response, assets) -> None:  # the session's context for follow-ups
            built["reply"] = reply = await reply_for(response, assets)
            await self._remember(session_id, reply, {
                "last_image_id": reply.data.images[0].id, "last_intent": last.intent,
                **({"last_prompt": prompt} if prompt else {}),
                **({"last_style": st} if (st := last.params.get("style")) else {})})

        response = await self.runner.run(
            kind="chat", prompt=message, params={"plan": plan_json, "session_id": session_id},
            model_info={"name": "chat", "tiny": False, "fallback": False,
                        "fallback_reason": None},
            work=lambda progress: self._execute(plan, images_by_source, ctx, progress, charge,
                                                loras),
            base_url=base_url, async_job=async_job, on_success=remember, images=charge)
        if isinstance(response, str):  # async: the job runs on; the session learns at the end
            return ChatResponse(
                session_id=session_id, type="processing", data=ChatData(
                    plan=plan_json, job_id=response),
                message=replies.processing(len(image_steps), response, plan.language),
                metadata=metadata)
        return built["reply"]

    async def _remember(self, session_id: str, reply: ChatResponse, context: dict) -> None:
        await self._write(
            self.records.add_message, session_id=session_id, role="assistant",
            content=reply.message, image_ids=[i.id for i in reply.data.images],
            data={"type": reply.type, "context": context, "plan": reply.data.plan})

    # -- executing a plan -------------------------------------------------------------------
    async def _input(self, ref, uploads: dict, outputs: list[np.ndarray], ctx) -> np.ndarray:
        if ref.source == "upload":
            return uploads["upload"][ref.index or 0]
        if ref.source == "previous_step":
            return outputs[ref.index if ref.index is not None else -1]
        return uploads["session"][ref.image_id or ctx.last_image_id]

    async def _session_images(self, steps, ctx) -> dict[str, np.ndarray]:
        """The session images `steps` read, by id, each resolved once through the runner
        (`JobRunner.load_image`: the caller's project only, upload limits)."""
        images: dict[str, np.ndarray] = {}
        for step in steps:
            for ref in step.inputs:
                if ref.source != "session":
                    continue
                image_id = ref.image_id or ctx.last_image_id
                if image_id not in images:
                    images[image_id] = await self.runner.load_image(
                        image_id, param="context.last_image_id")
        return images

    async def _execute(self, plan, uploads: dict, ctx, progress,
                       charge: auth.ImageCharge | None = None,
                       loras: list | None = None) -> Output:
        outputs: list[np.ndarray] = []  # each step's first image, by step index
        models: dict[str, str] = {}
        steps_meta = []
        timings: dict[str, float] = {}
        refined_prompt = None
        last: Output | None = None
        for index, step in enumerate(plan.steps):
            if step.intent == "general":
                outputs.append(outputs[-1] if outputs else None)
                continue
            await progress(index / len(plan.steps), f"step {index + 1}: {step.intent}",
                           force=True)
            inputs: dict[str, list[np.ndarray]] = {}
            for ref in step.inputs:
                inputs.setdefault(ref.role, []).append(
                    await self._input(ref, uploads, outputs, ctx))
            started = time.perf_counter()
            out, refined = await self._run_step(step, inputs, loras)
            if charge is not None:  # a failing later step refunds only what it did not make
                charge.produced(step_images(step))
            refined_prompt = refined or refined_prompt
            timings[f"step{index}_{step.intent}"] = time.perf_counter() - started
            models[step.intent] = out.model
            steps_meta.append({"intent": step.intent, "model": out.model,
                               **({"provider": out.provider} if out.provider else {}),
                               **({"loras": out.loras} if out.loras else {}),
                               "images": len(out.images), **await self._model_info(step.intent)})
            outputs.append(out.images[0])
            last = out
        extra = {"models": models, "steps": steps_meta}
        if refined_prompt:
            extra["refined_prompt"] = refined_prompt
        return Output(images=last.images, model="+".join(models.values()), seeds=last.seeds,
                      timings=timings, extra=extra, provider=last.provider,
                      attempts=last.attempts,
                      loras=next((m["loras"] for m in steps_meta if "loras" in m), []))

    async def _model_info(self, intent: str) -> dict[str, Any]:
        """Whether the model behind a plan step is a tiny or a fallback one, and why: the
        image routes' `tiny` / `fallback` / `fallback_reason`, for each chat step."""
        if intent in TOOL_DEPLOYMENTS:
            info = await self.tools.info(TOOL_DEPLOYMENTS[intent])
        else:  # generation, edit and style transfer run on the generator
            info = await self.generation.model_info()
        return {"tiny": bool(info.get("tiny")), "fallback": bool(info.get("fallback")),
                "fallback_reason": info.get("fallback_reason")}

    async def _run_step(self, step, inputs: dict[str, list[np.ndarray]],
                        loras: list | None = None) -> tuple[Output, str | None]:
        p = step.params
        image = inputs["image"][0] if inputs.get("image") else None
        if image is not None and inputs.get("reference"):  # several images: one composite
            image = composite([image, *inputs["reference"]])
        if step.intent in ("image_generation", "image_edit"):
            refined = await self.router.refine.remote(p.get("prompt") or "an image",
                                                      style=p.get("style"))
            opts = Options(n=p.get("n", 1), seed=p.get("seed"), loras=loras,
                           negative_prompt=", ".join(filter(None, [refined.negative_prompt,
                                                                   p.get("negative_prompt")])))
            info = await self.generation.model_info()
            extra: dict[str, Any] = {}
            auto = None
            if "width" in p and "height" in p:  # asked-for size, fitted to the model's limits
                auto = fit_to_limits(p["width"], p["height"], info["limits"])
            if step.intent == "image_edit":
                extra = dict(mode="img2img", image=image[..., :3], strength=EDIT_STRENGTH)
                auto = auto or fit_to_limits(image.shape[1], image.shape[0], info["limits"])
            req = self.generation.build_request(refined.prompt, opts, info, auto_size=auto,
                                                **extra)
            return await self.generation.run_request(req), refined.prompt
        if step.intent == "background_removal":
            return await self.tools.matting_op(image), None
        if step.intent == "upscale":
            return await self.tools.upscale_op(image, scale=int(p.get("scale") or 2)), None
        if step.intent == "face_swap":
            return await self.tools.faceswap_op(
                inputs["source_face"][0], inputs["target"][0],
                target_face_index=p.get("target_face_index"),
                all_faces=bool(p.get("all_faces"))), None
        if step.intent == "style_transfer":
            request, resolved = await self.tools.style_request(
                image, style=p.get("style") or "watercolor", prompt=p.get("prompt"),
                seed=p.get("seed"), loras=loras)
            return await self.tools.style_run(request, resolved), resolved.prompt
        raise ApiError(400, f"unsupported step {step.intent!r}", param="message")
