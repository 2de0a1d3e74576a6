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
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from graphs import usage
from graphs.errors import ApiError
from graphs.generation import GenerationService, fit_to_limits, resolve_loras
from graphs.jobs import JobRunner
from graphs.schemas import (
    ChatAction,
    ChatData,
    ChatImage,
    ChatResponse,
    SavedWorkflowCreate,
    VideoCreate,
)
from graphs.tools import ToolService
from graphs.workflows import WorkflowService
from router import replies
from router.cascade import Cascade
from router.rules import DESCRIBE_ONLY
from router.schemas import Plan, SessionContext
from router.text import fold
from router.video_intent import detect_video
from workflows.plans import plan_workflow, upload_ref

# Reply texts in the message's language (English or French): router/replies.py.
HELP_TEXT = replies.help_text("en")
INTENT_LABELS = replies.DONE["en"]


# workflow ops whose params take the message's LoRA adapters (`loras`)
LORA_OPS = ("generate", "edit")


def step_images(step) -> int:
    """Images a plan step makes (what it is charged): a generation or edit its `n`, any other
    image step one."""
    if step.intent in ("general", "image_analysis"):
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


# "save this as a workflow (called X)" / "enregistre ça comme workflow": the session's last
# plan becomes a saved workflow
SAVE_AS_WORKFLOW = re.compile(
    r"\b(?:save|keep|store|enregistre\w*|sauvegarde\w*)\b.{0,30}?\b(?:as|into|to|comme|en)"
    r"\s+(?:an?\s+|un\s+|my\s+)?(?:new\s+)?workflow\b(?:\s+(?:called|named|nommé|appelé)\s+"
    r"[\"'«]?(?P<name>[^\"'»]{1,80}?)[\"'»]?\s*[.!]?\s*$)?", re.IGNORECASE)


class ChatService:
    def __init__(self, *, router: Any, generation: GenerationService, tools: ToolService,
                 runner: JobRunner, videos: Any = None, analysis: Any = None,
                 workflows: WorkflowService | None = None):
        self.videos = videos  # graphs.video.VideoService ("make a video of…", "animate this")
        self.router = router
        self.analysis = analysis  # graphs.analysis.AnalysisService: "what is in this photo?"
        # the one executor: a plan runs as its workflow (workflows/plans.py)
        self.workflows = workflows or WorkflowService(generation=generation, tools=tools,
                                                      runner=runner, router=router)
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

    async def workflow_of(self, plan, ctx, loras: list | None = None):
        """The plan's workflow, validated (a 400 names what the engine cannot run), and each
        step node's intent. `loras`: the message's LoRA adapters, on its generate and edit
        nodes."""
        info = await self.generation.model_info()
        raw, intents = plan_workflow(
            plan, session_image=ctx.last_image_id if ctx is not None else None,
            fit_size=lambda w, h: fit_to_limits(w, h, info["limits"]))
        for node in raw["nodes"].values():
            if loras and node["op"] in LORA_OPS:
                node.setdefault("params", {})["loras"] = loras
        return self.workflows.validate(raw), intents

    async def plan_with_workflow(self, message: str, *, images: int, context=None
                                 ) -> dict[str, Any]:
        """/v1/chat/plan: the plan, and the workflow graph it runs as (None when the plan
        needs images nobody gave, or makes none)."""
        plan = await self.plan(message, images=images, context=context)
        workflow = None
        if any(s.intent != "general" for s in plan.steps) and not plan.missing_inputs:
            graph, _ = await self.workflow_of(plan, context)
            workflow = graph.graph.dump()
        return {**plan.model_dump(mode="json"), "workflow": workflow}

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
            message, refs = resolve_loras(message, loras, info,
                                          available=self.generation.lora_specs(info["name"]))
            loras = [{"name": r.name, "weight": r.weight} for r in refs]
        # a new session is created once the message is planned (a failed plan leaves none)
        session = await self.session(session_id) if session_id is not None else None
        ctx = self.context(session, context)
        await self.check_context(context)
        wanted = detect_video(message, len(uploads)) if self.videos is not None \
            and self.videos.video is not None else None
        if wanted is not None:
            return await self._video(wanted, message=message, session=session,
                                     uploads=uploads, base_url=base_url)
        wants_save = SAVE_AS_WORKFLOW.search(message)
        if wants_save and not uploads:
            return await self._save_as_workflow(message, session, wants_save.group("name"))
        plan = await self.plan(message, images=len(uploads), context=ctx)
        if plan.llm_tokens:  # usage accounting: the router's LLM stage
            usage.note_tokens(*plan.llm_tokens)
            usage.note_model_seconds("llm", plan.timings.get("llm", 0.0))
        if self._describes(plan):
            return await self._describe(plan, message=message, session=session, ctx=ctx,
                                        uploads=uploads, started=started)
        # analysis steps inside an image plan make nothing and are skipped
        image_steps = [s for s in plan.steps if s.intent not in ("general", "image_analysis")]
        # every image this plan makes, charged before any of it runs (429 before a job exists)
        runs = bool(image_steps) and not plan.missing_inputs  # else a text answer
        # images the plan takes from the session, resolved in the caller's project now: an
        # unknown or foreign id is a 404 before anything is charged, stored or run
        session_images = await self._session_images(image_steps, ctx) if runs else {}
        graph, intents = await self.workflow_of(plan, ctx, loras) if runs else (None, {})
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
        images = {**{upload_ref(k): image for k, image in enumerate(uploads)},
                  **session_images}
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

        # the plan runs as its workflow, on the workflow engine (one executor)
        response = await self.workflows.execute(
            graph, base_url=base_url, async_job=async_job, uploads=images, kind="chat",
            prompt=message, params={"plan": plan_json, "session_id": session_id,
                                    "workflow": graph.graph.dump()},
            on_success=remember, charge=charge, intents=intents, denoising_events=False)
        if isinstance(response, str):  # async: the job runs on; the session learns at the end
            return ChatResponse(
                session_id=session_id, type="processing", data=ChatData(
                    plan=plan_json, job_id=response),
                message=replies.processing(len(image_steps), response, plan.language),
                metadata=metadata)
        return built["reply"]

    async def _video(self, wanted, *, message: str, session, uploads: list[np.ndarray],
                     base_url: str) -> ChatResponse:
        """A video request (router/video_intent.py): an always-async video job (text-to-video,
        or image-to-video from the last attached image); the reply carries its job id."""
        reference = None
        if wanted.kind == "image_to_video":
            reference = await self.runner.store_image(uploads[-1], kind="video_reference")
        video = await self.videos.create(VideoCreate(prompt=wanted.prompt),
                                         reference_id=reference, base_url=base_url)
        french = bool(re.search(r"[éèàç]|\b(?:vidéo|fais|crée|anime|cette)\b", message,
                                re.IGNORECASE))
        text = (f"Votre vidéo est en cours ({video.id}) : suivez /v1/videos/{video.id}."
                if french else
                f"Your video is on its way ({video.id}): follow /v1/videos/{video.id}.")
        user = {"role": "user", "content": message, "image_ids": [reference] if reference
                else [], "data": {}}
        answer = {"role": "assistant", "content": text, "image_ids": [],
                  "data": {"type": "processing", "context": {}, "video_id": video.id}}
        session_id = await self.turns.add(session_id=session.id if session else None,
                                          project=self.runner.project,
                                          messages=[user, answer])
        plan = {"intent": wanted.kind, "prompt": wanted.prompt, "stage": "rules"}
        return ChatResponse(session_id=session_id, type="processing", message=text,
                            data=ChatData(plan=plan, job_id=video.id),
                            metadata={"stage": "rules", "video": video.model_dump(mode="json")})

    # -- "what is in this picture?" -----------------------------------------------------------
    def _describes(self, plan) -> bool:
        """A plan that only asks about an image (and has it): answered with text, no job."""
        steps = [s for s in plan.steps if s.intent != "general"]
        return (self.analysis is not None and bool(steps) and not plan.missing_inputs
                and all(s.intent == "image_analysis" for s in steps))

    async def _describe(self, plan, *, message: str, session, ctx, uploads, started
                        ) -> ChatResponse:
        step = next(s for s in plan.steps if s.intent == "image_analysis")
        ref = step.inputs[0]
        session_images = await self._session_images([step], ctx)
        image = await self._input(ref, {"upload": uploads, "session": session_images}, [],
                                  ctx)
        info = await self.analysis.vision_info()
        # a real question goes to the VQA model; "describe it" wants the caption only
        question = None
        if not DESCRIBE_ONLY.search(fold(message)) and info and info["limits"].get("questions"):
            question = message
        analysis = await self.analysis.analyze(image, question=question)
        upload_ids = [await self.runner.store_image(img, kind="uploads") for img in uploads]
        image_id = upload_ids[ref.index or 0] if ref.source == "upload" else \
            (ref.image_id or ctx.last_image_id)
        data = analysis.model_dump(mode="json")
        text = replies.image_description(data, plan.language)
        plan_json = plan.model_dump(mode="json")
        user = {"role": "user", "content": message, "image_ids": upload_ids,
                "data": {"context": {"last_image_id": upload_ids[-1]}} if upload_ids else {}}
        answer = {"role": "assistant", "content": text, "image_ids": [],
                  "data": {"type": "text", "plan": plan_json, "analysis": data,
                           "context": {"last_image_id": image_id,
                                       "last_intent": "image_analysis"}}}
        recorded = await self.turns.add(session_id=session.id if session else None,
                                        project=self.runner.project, messages=[user, answer])
        metadata = {"stage": plan.stage, "confidence": plan.confidence,
                    "language": plan.language, "models": {"vision": (info or {}).get("name")},
                    "tiny": bool((info or {}).get("tiny")),
                    "fallback": bool((info or {}).get("fallback")),
                    "timings": {**{f"plan_{k}": v for k, v in plan.timings.items()},
                                **analysis.metadata.get("timings", {}),
                                "total": time.perf_counter() - started}}
        return ChatResponse(session_id=recorded, message=text, type="text",
                            data=ChatData(plan=plan_json, analysis=data),
                            suggestions=replies.suggestions("image", plan.language),
                            metadata=metadata)

    async def _save_as_workflow(self, message: str, session, name: str | None
                                ) -> ChatResponse:
        """The session's last image plan, saved as a workflow of the project (its uploads and
        session images become image_input nodes naming their stored assets)."""
        found = None
        messages = list(session.messages) if session is not None else []
        for i in range(len(messages) - 1, -1, -1):
            m = messages[i]
            plan = m.data.get("plan") if m.role == "assistant" else None
            if plan and m.data.get("type") == "image":
                user = next((messages[j] for j in range(i - 1, -1, -1)
                             if messages[j].role == "user"), None)
                found = (Plan(**plan), user)
                break
        language = "fr" if re.search(r"enregistre|sauvegarde|comme", message, re.I) else "en"
        if found is None:
            text = ("Rien à enregistrer : demandez d'abord une image, puis « enregistre ça "
                    "comme workflow ».") if language == "fr" else (
                "Nothing to save yet: ask for an image first, then say \"save this as a "
                "workflow\".")
            recorded = await self.turns.add(
                session_id=session.id if session else None, project=self.runner.project,
                messages=[{"role": "user", "content": message, "image_ids": [], "data": {}},
                          {"role": "assistant", "content": text, "image_ids": [],
                           "data": {"type": "text", "context": {}}}])
            return ChatResponse(session_id=recorded, message=text, type="text")
        plan, user = found
        graph, _ = plan_workflow(plan)
        uploaded = user.image_ids if user is not None else []
        for node in graph["nodes"].values():
            asset = node.get("params", {}).get("asset_id", "")
            if node["op"] == "image_input" and asset.startswith("upload:"):
                index = int(asset.split(":", 1)[1])
                if index < len(uploaded):
                    node["params"]["asset_id"] = uploaded[index]
        title = (name or (user.content if user is not None else "chat plan"))[:200].strip()
        saved = await self.workflows.save(SavedWorkflowCreate(
            name=title or "chat plan", description=f"saved from chat: {user.content}"[:2000]
            if user is not None else "saved from chat", workflow=graph))
        text = (f"Enregistré comme workflow « {saved.name} » ({saved.id}).") \
            if language == "fr" else f"Saved as workflow \"{saved.name}\" ({saved.id})."
        await self._write(
            self.records.add_message, session_id=session.id, role="user", content=message,
            image_ids=[], data={})
        await self._write(
            self.records.add_message, session_id=session.id, role="assistant", content=text,
            image_ids=[], data={"type": "text", "context": {}, "workflow_id": saved.id})
        return ChatResponse(
            session_id=session.id, message=text, type="text",
            data=ChatData(plan=plan.model_dump(mode="json")),
            actions=[ChatAction(id="open_workflow", label=saved.name, type="link",
                                data={"url": f"/v1/workflows/{saved.id}",
                                      "workflow_id": saved.id})])

    async def _remember(self, session_id: str, reply: ChatResponse, context: dict) -> None:
        await self._write(
            self.records.add_message, session_id=session_id, role="assistant",
            content=reply.message, image_ids=[i.id for i in reply.data.images],
            data={"type": reply.type, "context": context, "plan": reply.data.plan})

    # -- executing a plan -------------------------------------------------------------------
    async def _input(self, ref, uploads: dict, outputs: list[np.ndarray], ctx) -> np.ndarray:
        """The image a plan step's input names: an upload, an earlier step's output, or a
        session image (`uploads["session"]`, resolved by `_session_images`)."""
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
