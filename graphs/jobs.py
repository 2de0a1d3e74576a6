"""Running one piece of model work as a recorded job, and storing its images.

Nothing is lost: the job record exists before work starts and always ends `succeeded` or
`failed` with a reason (cancellation included); each image is encoded once, written
completely (atomic store) and recorded before it is returned.

Record writes are few: a synchronous job is created already running, and its images are
recorded with its success in one transaction (`RecordStore.finish_job(assets=...)`): two
transactions per job, whatever the number of images. When a job fails after some of its
images were stored, those are recorded as it fails (retention can then find and delete them).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError

from graphs import auth, middleware, usage
from graphs.errors import ApiError, to_api_error
from graphs.images import (
    CONTENT_TYPES,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    Format,
    decode,
    encode,
)
from graphs.schemas import ImageData, ImagesResponse, ResponseMetadata, Usage
from storage.assets import AssetNotFound, AssetStore, asset_key
from storage.records import NewAsset, RecordStore, new_id
from telemetry import metrics

logger = logging.getLogger("ray.serve")


@dataclass
class OutputFile:
    """A file (not an image) a job made: e.g. a video node's MP4 and its poster."""

    name: str  # what it is in the job, e.g. "clip.video"
    data: bytes
    ext: str
    content_type: str
    kind: str  # the asset kind, e.g. "video"
    width: int
    height: int


@dataclass
class Output:
    """What a model step produced, in the shape every tool result is mapped to."""

    images: list[np.ndarray]
    model: str
    seeds: list[int | None] | None = None
    batch_size: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # generator work: the image provider that answered, and each provider tried
    provider: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # kept in the job record's `result` whether the job is sync or async (e.g. a workflow's
    # node timeline)
    record: dict[str, Any] | None = None
    # per image: how to make it again (embedded in the file and kept in its asset record)
    recipes: list[dict[str, Any] | None] | None = None
    loras: list[dict[str, Any]] = field(default_factory=list)  # LoRA adapters applied
    # other files the job made (a workflow's video outputs): stored beside the images, in the
    # same transaction, and listed in the response's `metadata.extra.files`
    files: list[OutputFile] = field(default_factory=list)

    @property
    def remote(self) -> bool:
        """Made by a remote provider (not this gateway's own models)."""
        return self.provider not in (None, "local")


def output_format_for(image: np.ndarray, requested: Format) -> Format:
    """JPEG has no alpha: images with transparency are saved as PNG instead."""
    if requested == "jpeg" and image.ndim == 3 and image.shape[2] == 4:
        return "png"
    return requested


def _cancelled_downstream(exc: BaseException) -> bool:
    """A model call that Serve cancelled (`RequestCancelledError`, a `TaskCancelledError`):
    what a request whose client left (or timed out) sees when its calls are cancelled before
    its own task is. Such a job ends `cancelled`, not `failed`."""
    from ray.exceptions import RayTaskError, TaskCancelledError

    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None:
        exc = exc.cause
    return isinstance(exc, TaskCancelledError)


class JobCancelled(Exception):
    """The job's cancel was requested (DELETE /v1/jobs/{id}): stop the work."""


class Progress:
    """What a job's work reports as it goes. Synchronous requests get a silent one (`live`
    False: nobody polls them); async jobs write progress and heartbeats to the record store
    (throttled) and learn there when a cancel was requested."""

    def __init__(self, records: RecordStore | None = None, job_id: str | None = None,
                 min_interval_s: float = 0.25):
        self.records = records
        self.job_id = job_id
        self.live = records is not None
        self._min_interval_s = min_interval_s
        self._last = 0.0

    async def __call__(self, fraction: float, step: str | None = None, *,
                       force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last < self._min_interval_s:
            return
        self._last = now
        stop = await asyncio.to_thread(self.records.update_progress, job_id=self.job_id,
                                       progress=min(max(fraction, 0.0), 1.0), step=step)
        if stop:
            raise JobCancelled(f"job {self.job_id} was cancelled")


Work = Callable[[Progress], Awaitable[Output]]
# called with the response and its images' asset rows (not yet in the record store)
OnSuccess = Callable[[ImagesResponse, list[NewAsset]], Awaitable[None]]


class JobRunner:
    def __init__(self, *, assets: AssetStore, records: RecordStore, project: str = "default",
                 gate: auth.Gate | None = None, heartbeat_s: float = 10.0,
                 max_image_pixels: int = DEFAULT_MAX_PIXELS,
                 max_image_bytes: int = DEFAULT_MAX_BYTES):
        self.assets = assets
        self.records = records
        self.gate = gate  # signs asset URLs, charges images (None: auth off, nothing charged)
        self._project = project  # when no API key says otherwise (auth off, tests)
        self.heartbeat_s = heartbeat_s  # running jobs beat this often (see check_health)
        # a stored image read back by id is checked like an upload (it may predate a limit)
        self.max_image_pixels = max_image_pixels
        self.max_image_bytes = max_image_bytes
        self._tasks: set[asyncio.Task] = set()
        # called with [(asset id, image)] of each succeeded job's images, once recorded (the
        # gallery's auto-tagging: graphs/analysis.py); None: nothing
        self.after_images: Callable[[list[tuple[str, np.ndarray]]], None] | None = None

    @property
    def project(self) -> str:
        """The project of the request being handled: its API key's (graphs.auth)."""
        return auth.current_project(default=self._project)

    async def charge_images(self, n: int) -> auth.ImageCharge:
        """Charge `n` images to the caller's day before work runs (`auth.Gate.charge_images`:
        429 when over it); the charge refunds what failed work did not make."""
        if self.gate is None:
            return auth.ImageCharge(None, 0)
        return await self.gate.charge_images(n)

    async def run(
        self,
        *,
        kind: str,
        prompt: str | None,
        params: dict[str, Any],
        model_info: dict[str, Any],
        work: Work,
        base_url: str,
        response_format: str = "b64_json",
        output_format: Format = "png",
        compression: int | None = None,
        revised_prompt: str | None = None,
        async_job: bool = False,
        on_success: OnSuccess | None = None,
        images: int | auth.ImageCharge = 1,
    ) -> ImagesResponse | str:
        """Run `work` as a recorded job and store its images. With `async_job`, return the job
        id at once and run it in the background (GET /v1/jobs/{id} and /events follow it).
        `images` are charged to the caller's daily quota first (429 when over it), or were
        charged by the caller (an `auth.ImageCharge`); if the job does not succeed, what its
        work did not produce (`ImageCharge.produced`) is refunded.

        `on_success(response, assets)` runs once the images are stored, before the job is
        recorded succeeded (its failure fails the job). The images' asset records are written
        with the job's success, after it: read their size and type from `assets`, not from
        the record store."""
        charge = images if isinstance(images, auth.ImageCharge) else \
            await self.charge_images(images)
        try:
            job_id = await asyncio.to_thread(
                self.records.create_job, kind=kind, prompt=prompt, params=params,
                model=model_info["name"], project=self.project, start=not async_job)
        except BaseException:
            await asyncio.shield(charge.refund_unproduced())
            raise
        # A synchronous job starts at once and nobody else knows its id: created running. An
        # async one is created queued: its id goes out in the 202, and a DELETE may cancel
        # it before the background task starts it.
        execute = self._execute(
            job_id, kind=kind, model_info=model_info, work=work, base_url=base_url,
            response_format=response_format, output_format=output_format,
            compression=compression, revised_prompt=revised_prompt, live=async_job,
            started=not async_job, on_success=on_success, charge=charge)
        if not async_job:
            return await execute
        # detached: the request that started it answers 202 now; its timeout must not cancel it
        task = asyncio.create_task(execute, context=middleware.detached_context())
        self._tasks.add(task)  # keep a reference until it ends
        task.add_done_callback(self._job_done)
        return job_id

    def _job_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.info("async job ended with %s", type(task.exception()).__name__)

    async def _execute(self, job_id: str, *, kind: str, model_info: dict[str, Any], work: Work,
                       base_url: str, response_format: str, output_format: Format,
                       compression: int | None, revised_prompt: str | None,
                       live: bool, started: bool, charge: auth.ImageCharge,
                       on_success: OnSuccess | None = None) -> ImagesResponse:
        began = time.perf_counter()
        heartbeat: asyncio.Task | None = None
        unrecorded: list[NewAsset] = []  # stored images whose records are not written yet
        try:
            if not started and not await asyncio.to_thread(self.records.start_job,
                                                           job_id=job_id):
                raise JobCancelled(f"job {job_id} was cancelled before it started")
            progress = Progress(self.records, job_id) if live else Progress()
            # Every running job beats, sync ones too: the stale-job sweeper tells a dead worker
            # from a slow one by the heartbeat alone.
            heartbeat = asyncio.create_task(self._heartbeat(job_id, asyncio.current_task()))
            with metrics.stage_timer("model", kind=kind):
                worked = time.perf_counter()
                out = await work(progress)
                worked = time.perf_counter() - worked
            pixels = sum(int(i.shape[0]) * int(i.shape[1]) for i in out.images)
            usage.note_output(kind, model=out.model, provider=out.provider,
                              images=len(out.images), pixels=pixels, seconds=worked,
                              timings=out.timings)
            await progress(0.95, "storing", force=True)
            stored = time.perf_counter()
            data: list[ImageData] = []
            formats = []
            seeds = out.seeds or [None] * len(out.images)
            recipes = out.recipes or [None] * len(out.images)
            for image, seed, recipe in zip(out.images, seeds, recipes, strict=True):
                fmt = output_format_for(image, output_format)
                asset, blob = await asyncio.to_thread(
                    self._store, image, fmt, job_id, kind, compression,
                    out.provider if out.remote else None, recipe)
                unrecorded.append(asset)
                formats.append(fmt)
                item = ImageData(
                    id=asset.id,
                    seed=seed,
                    revised_prompt=revised_prompt,
                    b64_json=base64.b64encode(blob).decode()
                    if response_format == "b64_json" else None,
                    url=await self.public_url(asset.id, asset.key, base_url)
                    if response_format == "url" else None,
                )
                item._blob = blob  # for a client that asks for the bytes (Accept: image/…)
                data.append(item)
            files = []
            for file in out.files:
                asset = await asyncio.to_thread(self._store_file, file, job_id)
                unrecorded.append(asset)
                files.append({"name": file.name, "id": asset.id, "kind": file.kind,
                              "content_type": file.content_type,
                              "url": self.asset_url(asset.id, base_url, self.project)})
            timings = {**out.timings, "store_s": time.perf_counter() - stored,
                       "total_s": time.perf_counter() - began}
            height, width = out.images[0].shape[:2] if out.images else \
                (out.files[0].height, out.files[0].width)
            response = ImagesResponse(
                created=int(time.time()),
                data=data,
                size=f"{width}x{height}",
                output_format=formats[0] if formats else output_format,
                metadata=ResponseMetadata(
                    job_id=job_id,
                    model=out.model,
                    tiny=False if out.remote else model_info["tiny"],
                    fallback=False if out.remote else model_info["fallback"],
                    fallback_reason=None if out.remote else model_info["fallback_reason"],
                    batch_size=out.batch_size,
                    timings=timings,
                    extra={**out.extra, **({"files": files} if files else {})},
                    provider=out.provider,
                    attempts=out.attempts,
                    loras=out.loras,
                ),
                usage=Usage(images=len(out.images), pixels=pixels,
                            model_seconds=round(worked, 4)),
            )
            result = None
            if live:  # what GET /v1/jobs/{id} returns: the response, with URLs not base64
                result = response.model_dump(mode="json")
                for item in result["data"]:
                    item["b64_json"] = None
                    item["url"] = self.asset_url(item["id"], base_url, self.project)
            elif out.provider is not None or out.loras:  # the job record says who answered,
                # the tries and the LoRA adapters applied
                result = {"metadata": {"provider": out.provider, "attempts": out.attempts,
                                       **({"loras": out.loras} if out.loras else {})}}
            if out.record:
                result = {**(result or {}), **out.record}
            if on_success is not None:  # e.g. the chat remembers its images in the session
                await on_success(response, list(unrecorded))
            # the images' records and the job's success in one transaction (the records are
            # written even when the job had ended meanwhile, e.g. failed as stale)
            await asyncio.to_thread(self.records.finish_job, job_id=job_id, timings=timings,
                                    model=out.model, result=result, assets=unrecorded)
            if self.after_images is not None:
                self.after_images([(item.id, image) for item, image in zip(
                    data, out.images, strict=True)])
            unrecorded = []
            metrics.record_images(kind, len(data))
            return response
        except (JobCancelled, asyncio.CancelledError) as exc:
            # cancelled by DELETE /v1/jobs/{id}, or the client went away mid-request. One
            # shielded task ends it: a second cancel of this task (a disconnect and a timeout
            # both firing) must not skip recording the end.
            await asyncio.shield(self._ended(charge, job_id, unrecorded, self.records.cancel_job,
                                             reason=str(exc) or "cancelled"))
            raise
        except BaseException as exc:  # the record must never stay running
            if _cancelled_downstream(exc):  # its model call was cancelled: the client left
                await asyncio.shield(self._ended(charge, job_id, unrecorded,
                                                 self.records.cancel_job,
                                                 reason=f"cancelled ({type(exc).__name__})"))
                raise
            reason = to_api_error(exc).message if isinstance(exc, Exception) else "interrupted"
            await asyncio.shield(self._ended(charge, job_id, unrecorded, self.records.fail_job,
                                             error=f"{type(exc).__name__}: {reason}"))
            raise
        finally:
            if heartbeat is not None:
                heartbeat.cancel()

    async def _ended(self, charge: auth.ImageCharge, job_id: str, unrecorded: list[NewAsset],
                     end: Callable[..., bool], **kwargs: Any) -> None:
        """Refund what the job did not make, then record its end (`_end`, in a thread)."""
        try:
            await charge.refund_unproduced()
        finally:
            await asyncio.to_thread(self._end, job_id, unrecorded, end, **kwargs)

    def _end(self, job_id: str, unrecorded: list[NewAsset], end: Callable[..., bool],
             **kwargs: Any) -> None:
        """(In a thread.) Record the images a failing job had stored, then end it with `end`
        (cancel_job / fail_job). The job is ended even when the images cannot be recorded."""
        if unrecorded:
            try:
                self.records.add_assets(assets=unrecorded)
            except IntegrityError:  # finish_job committed them as the job was interrupted
                logger.info("job %s: its images were recorded already", job_id)
            except Exception:
                logger.exception("job %s: could not record its %d stored image(s) %s",
                                 job_id, len(unrecorded), [a.key for a in unrecorded])
        end(job_id=job_id, **kwargs)

    async def _heartbeat(self, job_id: str, worker: asyncio.Task) -> None:
        """Beat while the job runs; cancel the worker when a cancel is requested."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if await asyncio.to_thread(self.records.heartbeat, job_id=job_id):
                worker.cancel(f"job {job_id} was cancelled")
                return

    async def store_image(self, image: np.ndarray, *, kind: str, job_id: str | None = None,
                          fmt: Format = "png") -> str:
        """Store one image outside a job's outputs (e.g. a chat upload) and record it at once;
        return its id."""
        def store_and_record() -> str:
            asset, _ = self._store(image, fmt, job_id, kind)
            self.records.add_assets(assets=[asset])
            return asset.id

        return await asyncio.to_thread(store_and_record)

    async def load_asset_bytes(self, asset_id: str, *, param: str = "asset_id") -> bytes:
        """The stored bytes of an asset of the caller's project (`load_image`'s rules)."""
        if not isinstance(asset_id, str) or not asset_id:
            raise ApiError(400, f"{param} must be an asset id", param=param)
        record = await asyncio.to_thread(self.records.get_asset, asset_id=asset_id,
                                         project=self.project)
        if record is None:
            raise ApiError(404, f"no asset {asset_id!r}", param=param, code="not_found")
        try:
            return await asyncio.to_thread(self.assets.get, key=record.key)
        except AssetNotFound:
            raise ApiError(404, f"asset {asset_id!r} is recorded but its bytes are gone",
                           param=param, code="not_found") from None

    async def load_image(self, asset_id: str, *, param: str = "asset_id") -> np.ndarray:
        """THE resolver of "an image referenced by id" (chat context and plans, and every
        route or workflow that takes an asset id): the asset must belong to the caller's
        project (another project's id is a 404, exactly like a missing one) and is decoded with
        the upload limits. `param` names the request field that carried the id."""
        data = await self.load_asset_bytes(asset_id, param=param)
        return await asyncio.to_thread(decode, data, field=param,
                                       max_pixels=self.max_image_pixels,
                                       max_bytes=self.max_image_bytes)

    def _store(self, image: np.ndarray, fmt: Format, job_id: str | None, kind: str,
               compression: int | None = None, provider: str | None = None,
               recipe: dict[str, Any] | None = None) -> tuple[NewAsset, bytes]:
        """(In a thread.) Encode and store one image; return its asset row, not yet recorded
        (the caller records it), and the encoded bytes. `provider`: the remote provider that
        made it (its key gets a provider segment)."""
        with metrics.stage_timer("encode", kind=kind):
            blob = encode(image, fmt, quality=90 if compression is None else compression,
                          recipe=recipe)
        asset_id = new_id("img")
        key = asset_key(project=self.project, kind=kind, asset_id=asset_id, ext=fmt,
                        provider=provider)
        started = time.perf_counter()
        self.assets.put(key=key, data=blob, content_type=CONTENT_TYPES[fmt])
        metrics.observe_stage("store", time.perf_counter() - started, kind=kind)
        height, width = image.shape[:2]
        return NewAsset(id=asset_id, job_id=job_id, kind=kind, store=self.assets.name, key=key,
                        content_type=CONTENT_TYPES[fmt], size_bytes=len(blob), width=width,
                        height=height, project=self.project, recipe=recipe), blob

    def _store_file(self, file: OutputFile, job_id: str) -> NewAsset:
        """(In a thread.) Store one `OutputFile`; its asset row, not yet recorded."""
        asset_id = new_id("vid" if file.kind == "video" else "img")
        key = asset_key(project=self.project, kind=file.kind, asset_id=asset_id, ext=file.ext)
        self.assets.put(key=key, data=file.data, content_type=file.content_type)
        return NewAsset(id=asset_id, job_id=job_id, kind=file.kind, store=self.assets.name,
                        key=key, content_type=file.content_type, size_bytes=len(file.data),
                        width=file.width, height=file.height, project=self.project)

    async def public_url(self, asset_id: str, key: str, base_url: str) -> str:
        """A presigned URL from S3/Supabase stores; the gateway's own URL for local disk."""
        return await asyncio.to_thread(self.assets.url, key=key) or \
            self.asset_url(asset_id, base_url, self.project)

    def asset_url(self, asset_id: str, base_url: str, project: str) -> str:
        """The URL of an asset of `project`; with auth on, signed so it works without the API
        key until it expires (graphs.auth)."""
        signed = self.gate.sign(asset_id, project) if self.gate is not None else ""
        return f"{base_url.rstrip('/')}/v1/assets/{asset_id}{signed}"
