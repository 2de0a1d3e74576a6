"""Videos: the logic behind /v1/videos (OpenAI's Videos API shape) on the Video deployment.

A video is a job (kind ``video``): its id is the job's, so it is also visible at
/v1/jobs/{id} with SSE progress at /v1/jobs/{id}/events, and DELETE /v1/jobs/{id} cancels it
(denoising stops at the next step). Always async: POST answers the queued video at once.
The job's params keep every setting (the seed drawn at creation included), so a remix re-runs
them with a new prompt; its result names the stored assets (MP4, poster, preview) and the
clip's duration, fps, size and codec.

Status mapping to OpenAI's: queued → queued, running → in_progress, succeeded → completed,
failed and cancelled → failed (with ``error.code`` "cancelled" for the latter).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import numpy as np

from graphs import middleware, usage
from graphs.errors import ApiError, to_api_error
from graphs.jobs import JobCancelled, JobRunner, Progress, _cancelled_downstream
from graphs.presets import compose_video
from graphs.schemas import Video, VideoCreate, VideoError, VideoList
from models.registry import VideoLimits
from models.video import MAX_SEED, VideoRequest, check_inputs, condition_prompt, frames_for
from router.presets import list_presets as builtin_presets
from storage.assets import asset_key
from storage.records import JobRecord, NewAsset, job_cursor, new_id

logger = logging.getLogger("ray.serve")

KIND = "video"
DEFAULT_SECONDS = 4.0


_STATUS = {"queued": "queued", "running": "in_progress", "succeeded": "completed",
           "failed": "failed", "cancelled": "failed"}
VARIANTS = {"video": "video", "thumbnail": "thumbnail", "preview": "preview"}


def list_presets() -> list[dict[str, Any]]:
    """GET /v1/video-presets (kept for existing clients): the video presets of the one preset
    store (`router.presets`, GET /v1/presets?kind=video), by name."""
    return [{"name": p["id"], **p} for p in builtin_presets("video")]


def parse_size(size: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in size.lower().split("x"))
    except ValueError:
        raise ApiError(400, f"size must be WIDTHxHEIGHT (e.g. 768x512), got {size!r}",
                       param="size") from None
    return w, h


def _ts(when) -> int | None:
    return int(when.timestamp()) if when is not None else None


def video_view(job: JobRecord, urls: dict[str, str] | None = None) -> Video:
    """A job of kind video as OpenAI's video object."""
    p = job.params
    error = None
    if job.status == "failed":
        error = VideoError(code="generation_failed", message=job.error or "failed")
    elif job.status == "cancelled":
        error = VideoError(code="cancelled", message=job.error or "cancelled")
    result = job.result if isinstance(job.result, dict) else {}
    return Video(
        id=job.id, status=_STATUS[job.status], progress=round(job.progress * 100),
        model=job.model or p.get("model", ""), prompt=p.get("prompt"),
        seconds=f"{p['seconds']:g}", size=p["size"], created_at=_ts(job.created_at),
        completed_at=_ts(job.finished_at) if job.status == "succeeded" else None,
        error=error, remixed_from_video_id=p.get("remixed_from"), fps=p.get("fps"),
        seed=p.get("seed"), job_id=job.id,
        metadata={k: result[k] for k in ("frames", "duration_s", "codec", "pixel_format",
                                          "bytes", "assets", "timings") if k in result}
        | {k: p[k] for k in ("preset", "camera", "motion", "steps", "upscaled_from", "upscale",
                            "conditioned_prompt", "input_reference") if p.get(k) is not None}
        | ({"urls": urls} if urls else {}),
    )


class VideoService:
    def __init__(self, *, video: Any, runner: JobRunner, decode: Any, upscaler: Any = None,
                 presets: Any = None):
        self.presets = presets  # graphs.presets.PresetService: `preset` on a request
        self.upscaler = upscaler  # the Upscaler deployment: video upscaling frame by frame
        self.video = video  # DeploymentHandle of the Video deployment (None: not deployed)
        self.runner = runner
        self.records = runner.records
        self.assets = runner.assets
        self._decode = decode  # upload decoding with the gateway's limits (ToolService.decode)
        self._info: dict[str, Any] | None = None
        self._tasks: set[asyncio.Task] = set()

    def _require(self) -> Any:
        if self.video is None:
            raise ApiError(404, "no video deployment in this gateway (video_model is off)",
                           code="not_deployed")
        return self.video

    async def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = await self._require().info.remote()
        return self._info

    # -- create / remix ---------------------------------------------------------------------
    async def build(self, body: VideoCreate, *, image: np.ndarray | None = None
                    ) -> tuple[VideoRequest, dict[str, Any]]:
        """THE way a /v1/videos request becomes a `VideoRequest` (the route and the workflow
        `video` node): the model checked, its preset applied (request fields win), fps, size
        and frames resolved, camera / motion as prompt conditioning, the seed drawn, then the
        model's own `check_inputs`. Returns the request and the job params to record."""
        info = await self.info()
        limits = info["limits"]
        if body.model not in (None, info["name"]):
            raise ApiError(400, f"model {body.model!r} is not deployed; this gateway's video "
                           f"model is {info['name']!r}", param="model",
                           code="model_not_found")
        asked = body
        if body.preset is not None:
            if self.presets is None:
                raise ApiError(400, "presets are not available here", param="preset")
            body = compose_video(await self.presets.for_video(body.preset), body)
        fps = body.fps or limits["default_fps"]
        if body.size:
            width, height = parse_size(body.size)
        else:
            width, height = limits["default_width"], limits["default_height"]
        seconds = body.seconds or DEFAULT_SECONDS
        frames = frames_for(seconds, fps, multiple=limits["frame_multiple"])
        if frames > limits["max_frames"]:
            raise ApiError(400, f"seconds x fps = {seconds:g} x {fps} needs {frames} frames; "
                           f"this model makes at most {limits['max_frames']}: lower seconds "
                           "or fps", param="seconds")
        seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED)
        req = VideoRequest(
            prompt=condition_prompt(body.prompt, camera=body.camera, motion=body.motion),
            negative_prompt=body.negative_prompt, width=width, height=height,
            num_frames=frames, fps=fps, steps=body.steps or limits["default_steps"],
            guidance_scale=body.guidance_scale if body.guidance_scale is not None else 3.0,
            seed=seed, image=image)
        try:
            check_inputs(req, VideoLimits(**limits))
        except ValueError as exc:
            if getattr(exc, "param", None) == "num_frames":  # frames come from seconds here
                raise ApiError(400, str(exc), param="seconds") from None
            raise
        # what the caller asked (a remix re-applies the preset to its new prompt)
        params = {"prompt": asked.prompt, "size": f"{width}x{height}", "seconds": seconds,
                  "fps": fps, "frames": frames, "steps": req.steps, "seed": seed,
                  "guidance_scale": req.guidance_scale,
                  "negative_prompt": asked.negative_prompt, "camera": asked.camera,
                  "motion": asked.motion, "preset": asked.preset, "preview": asked.preview,
                  "model": info["name"], "conditioned_prompt": req.prompt}
        return req, params

    async def create(self, body: VideoCreate, *, image: bytes | None = None,
                     reference_id: str | None = None, remixed_from: str | None = None,
                     base_url: str | None = None) -> Video:
        reference = None
        if image is not None:
            reference = await self._decode(image, "input_reference", keep_alpha=False)
        elif reference_id is not None:
            reference = await self.runner.load_image(reference_id, param="input_reference")
        req, params = await self.build(body, image=reference)
        if image is not None:  # kept so a remix can use the same first frame
            reference_id = await self.runner.store_image(req.image, kind="video_reference")
        params.update(input_reference=reference_id, remixed_from=remixed_from)
        job_id = await asyncio.to_thread(
            self.records.create_job, kind=KIND, prompt=body.prompt, params=params,
            model=params["model"], project=self.runner.project)
        self._spawn(job_id, self._render(req, body.preview))
        return await self.get(job_id, base_url)

    async def remix(self, video_id: str, prompt: str, base_url: str | None = None) -> Video:
        job = await self._job(video_id)
        p = job.params
        body = VideoCreate(prompt=prompt, seconds=p["seconds"], size=p["size"], fps=p["fps"],
                           seed=p["seed"], steps=p["steps"], guidance_scale=p["guidance_scale"],
                           negative_prompt=p.get("negative_prompt"), camera=p.get("camera"),
                           motion=p.get("motion"), preset=p.get("preset"),
                           preview=p.get("preview"))
        return await self.create(body, reference_id=p.get("input_reference"),
                                 remixed_from=video_id, base_url=base_url)

    # -- upscale -----------------------------------------------------------------------------
    async def upscale(self, video_id: str, scale: int, base_url: str | None = None) -> Video:
        """A new video: a completed one upscaled frame by frame by the Upscaler deployment
        (same fps and length), as a job of its own."""
        if self.upscaler is None:
            raise ApiError(404, "no upscaler deployed", code="not_deployed")
        source = await self._job(video_id)
        if source.status != "succeeded":
            raise ApiError(409, f"video {video_id!r} is {_STATUS[source.status]}: upscale it "
                           "once it is completed", param="video_id", code="video_not_ready")
        width, height = parse_size(source.params["size"])
        params = {**source.params, "size": f"{width * scale}x{height * scale}",
                  "upscaled_from": video_id, "upscale": scale, "remixed_from": None}
        asset = await asyncio.to_thread(self.records.get_asset,
                                        asset_id=source.result["assets"]["video"],
                                        project=self.runner.project)
        if asset is None:
            raise ApiError(404, f"video {video_id!r} has no stored clip", param="video_id",
                           code="not_found")
        job_id = await asyncio.to_thread(
            self.records.create_job, kind=KIND, prompt=source.prompt, params=params,
            model=source.model, project=self.runner.project)

        async def produce(progress: Progress) -> dict[str, Any]:
            from models.upscale import UpscaleRequest
            from models.video import decode_video, encode_video

            data = await asyncio.to_thread(self.assets.get, key=asset.key)
            frames, fps = await asyncio.to_thread(decode_video, data)
            started = time.perf_counter()
            out = []
            for i, frame in enumerate(frames):
                res = await self.upscaler.upscale.remote(UpscaleRequest(image=frame,
                                                                        scale=scale))
                out.append(res.image[..., :3])
                await progress(0.9 * (i + 1) / len(frames),
                               f"upscaling frame {i + 1}/{len(frames)}")
            upscale_s = time.perf_counter() - started
            encoded = await asyncio.to_thread(encode_video, np.stack(out), round(fps))
            return {"video": encoded, "seed": source.params.get("seed"),
                    "model": f"{source.model}+{res.model}",
                    "timings": {"upscale_s": upscale_s, **encoded.timings}}

        self._spawn(job_id, produce)
        return await self.get(job_id, base_url)

    # -- the job ----------------------------------------------------------------------------
    def _spawn(self, job_id: str, produce: Any) -> None:
        task = asyncio.create_task(self._execute(job_id, produce),
                                   context=middleware.detached_context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def render(self, req: VideoRequest, preview: str | None, on_step: Any
                     ) -> dict[str, Any]:
        """One clip on the Video deployment: `await on_step(step, total)` per denoising step,
        then its result (``video``: the encoded clip, ``seed``, ``model``, ``timings``).
        Cancelling stops the replica's denoising at its next step."""
        result = None
        stream = self._require().options(stream=True).generate.remote(req, preview)
        try:
            async for event in stream:
                if event["type"] == "progress":
                    await on_step(event["step"], event["total"])
                elif event["type"] == "result":
                    result = event
        finally:
            stream.cancel()  # stop the replica's work if we leave early (cancel)
        if result is None:
            raise RuntimeError("the video deployment ended without a result")
        return result

    def _render(self, req: VideoRequest, preview: str | None) -> Any:
        """The Video deployment's stream as a job: progress per denoising step, then the
        clip."""
        async def produce(progress: Progress) -> dict[str, Any]:
            async def on_step(step: int, total: int) -> None:
                await progress(0.9 * step / total, f"denoising {step}/{total}",
                               force=step == total)

            return await self.render(req, preview, on_step)

        return produce

    async def _execute(self, job_id: str, produce: Any) -> None:
        """Run `produce(progress)` as the job `job_id`, store its clip (MP4, poster,
        preview) and end the job: succeeded, cancelled, or failed with the reason."""
        began = time.perf_counter()
        heartbeat = None
        stored: list[NewAsset] = []
        try:
            if not await asyncio.to_thread(self.records.start_job, job_id=job_id):
                return  # cancelled while queued
            progress = Progress(self.records, job_id)
            heartbeat = asyncio.create_task(
                self.runner._heartbeat(job_id, asyncio.current_task()))
            result = await produce(progress)
            await progress(0.95, "storing", force=True)
            encoded = result["video"]
            ids: dict[str, str] = {}
            files = [("video", encoded.mp4, "mp4", "video/mp4"),
                     ("thumbnail", encoded.poster, "png", "image/png")]
            if encoded.preview is not None:
                files.append(("preview", encoded.preview, encoded.preview_format,
                              f"image/{encoded.preview_format}"))
            for variant, data, ext, content_type in files:
                asset = await asyncio.to_thread(self._store, data, ext, content_type, job_id,
                                                "video" if variant == "video" else
                                                f"video_{variant}", encoded)
                stored.append(asset)
                ids[variant] = asset.id
            timings = {**result["timings"], "total_s": time.perf_counter() - began}
            done = {"assets": ids, "frames": encoded.frames, "fps": encoded.fps,
                    "duration_s": encoded.seconds, "width": encoded.width,
                    "height": encoded.height, "codec": encoded.codec,
                    "pixel_format": encoded.pixel_format, "bytes": len(encoded.mp4),
                    "seed": result["seed"], "timings": timings}
            finished = await asyncio.to_thread(self.records.finish_job, job_id=job_id,
                                               timings=timings, model=result["model"],
                                               result=done, assets=stored)
            stored = []
            if finished:  # usage accounting (graphs/usage.py): the clip and its model time
                worked = result["timings"]
                usage.note_videos(1, model=result["model"], seconds={
                    "video": worked.get("inference_s", 0.0) + worked.get("encode_s", 0.0)
                    if "upscale_s" not in worked else 0.0,
                    "upscaler": worked.get("upscale_s", 0.0)})
        except (JobCancelled, asyncio.CancelledError) as exc:
            await asyncio.shield(asyncio.to_thread(
                self.runner._end, job_id, stored, self.records.cancel_job,
                reason=str(exc) or "cancelled"))
        except BaseException as exc:  # noqa: BLE001 - the record must never stay running
            if _cancelled_downstream(exc):
                await asyncio.shield(asyncio.to_thread(
                    self.runner._end, job_id, stored, self.records.cancel_job,
                    reason=f"cancelled ({type(exc).__name__})"))
                return
            reason = to_api_error(exc).message if isinstance(exc, Exception) else "interrupted"
            logger.warning("video job %s failed: %s: %s", job_id, type(exc).__name__, reason)
            await asyncio.shield(asyncio.to_thread(
                self.runner._end, job_id, stored, self.records.fail_job,
                error=f"{type(exc).__name__}: {reason}"))
        finally:
            if heartbeat is not None:
                heartbeat.cancel()

    def _store(self, data: bytes, ext: str, content_type: str, job_id: str, kind: str,
               encoded: Any) -> NewAsset:
        asset_id = new_id("vid" if kind == "video" else "img")
        project = self.runner.project
        key = asset_key(project=project, kind=kind, asset_id=asset_id, ext=ext)
        self.assets.put(key=key, data=data, content_type=content_type)
        height, width = encoded.height, encoded.width
        return NewAsset(id=asset_id, job_id=job_id, kind=kind, store=self.assets.name,
                        key=key, content_type=content_type, size_bytes=len(data),
                        width=width, height=height, project=project)

    # -- reads ------------------------------------------------------------------------------
    async def _job(self, video_id: str) -> JobRecord:
        job = await asyncio.to_thread(self.records.get_job, job_id=video_id,
                                      project=self.runner.project)
        if job is None or job.kind != KIND:
            raise ApiError(404, f"no video {video_id!r}", param="video_id", code="not_found")
        return job

    def _view(self, job: JobRecord, base_url: str | None) -> Video:
        """The video object; once completed, with signed URLs of its files (they work in a
        <video>/<img> tag without the API key, and answer Range requests)."""
        assets = (job.result or {}).get("assets", {}) if job.status == "succeeded" else {}
        urls = {variant: self.runner.asset_url(asset_id, base_url, job.project)
                for variant, asset_id in assets.items()} if base_url else None
        return video_view(job, urls)

    async def get(self, video_id: str, base_url: str | None = None) -> Video:
        return self._view(await self._job(video_id), base_url)

    async def list(self, *, after: str | None, limit: int, order: str,
                   base_url: str | None = None) -> VideoList:
        if order != "desc":
            raise ApiError(400, "order must be desc (newest first) here", param="order")
        cursor = job_cursor(await self._job(after)) if after else None
        page = await asyncio.to_thread(self.records.list_jobs, project=self.runner.project,
                                       kind=KIND, limit=limit, cursor=cursor)
        data = [self._view(j, base_url) for j in page.items]
        return VideoList(data=data, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None,
                         has_more=page.next_cursor is not None)

    async def content_asset(self, video_id: str, variant: str) -> str:
        """The asset id of a completed video's `variant` (video | thumbnail | preview)."""
        if variant not in VARIANTS:
            raise ApiError(400, f"variant must be one of {', '.join(VARIANTS)}, got "
                           f"{variant!r}", param="variant")
        job = await self._job(video_id)
        if job.status != "succeeded":
            raise ApiError(409, f"video {video_id!r} is {_STATUS[job.status]}: its content is "
                           "there once it is completed", param="video_id",
                           code="video_not_ready")
        asset_id = (job.result or {}).get("assets", {}).get(variant)
        if asset_id is None:
            raise ApiError(404, f"video {video_id!r} has no {variant} (ask for a preview with "
                           "`preview`: webp or gif)", param="variant", code="not_found")
        return asset_id

    async def delete(self, video_id: str) -> None:
        """Cancel it if still running, delete its files, then its record."""
        job = await self._job(video_id)
        project = self.runner.project
        if job.status in ("queued", "running"):
            await asyncio.to_thread(self.records.request_cancel, job_id=video_id,
                                    project=project)
        for asset_id in job.asset_ids:
            await asyncio.to_thread(self.records.delete_asset, asset_id=asset_id,
                                    project=project, assets=self.assets)
        await asyncio.to_thread(self.records.delete_job, job_id=video_id, project=project)

