"""Image analysis: what is in an image — caption, description, tags, dominant colours,
transparency, size/format, faces, and answers to a question.

`AnalysisService.analyze(image, ...)` is THE entry point: the route (POST /v1/images/analyze),
the chat ("what is in this picture?") and later callers (dataset auto-captions, gallery
search by tags) all use it. It runs three things at once: the Vision deployment (BLIP caption
+ VQA; optional: without it there is no caption and questions are refused), the FaceSwap
deployment's detector (faces and boxes), and the pixel statistics (`models.analysis`, in the
ingress's image pool). The description and tags are composed here from those facts, so they
never say more than was measured.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import numpy as np

from graphs import middleware, usage
from graphs.errors import ApiError
from graphs.images import image_format
from graphs.schemas import (
    AnalyzedColor,
    AnalyzedFaces,
    EnhancedPrompt,
    FaceBox,
    ImageAnalysis,
    PromptChange,
)
from models.analysis import PixelStats, pixel_stats
from models.vision import check_question
from router.prompts import prompt_changes
from router.schemas import RefinedPrompt
from storage.records import MAX_TAGS
from storage.tables import MAX_TAG_CHARS

logger = logging.getLogger("ray.serve")
AUTO_TAG_ROUTE = "(auto-tag)"  # the usage route of background tagging

STOPWORDS = frozenset(
    "a an the of in on with and or is are was there this that it its at to for by from "
    "picture photo image photograph some two one three his her their".split())


def orientation(width: int, height: int) -> str:
    if abs(width - height) <= 0.05 * max(width, height):
        return "square"
    return "landscape" if width > height else "portrait"


def compose_tags(caption: str | None, stats: PixelStats, faces: int) -> list[str]:
    """Caption nouns-ish words, main colour names, orientation, transparency, faces."""
    tags: list[str] = []
    for word in re.findall(r"[a-z][a-z-]+", (caption or "").lower()):
        if word not in STOPWORDS and len(tags) < 6:
            tags.append(word)
    tags += [c.name for c in stats.colours if c.share >= 0.1]
    tags.append(orientation(stats.width, stats.height))
    if stats.has_alpha:
        tags.append("transparent")
    if faces:
        tags += ["face", "people"] if faces > 1 else ["face"]
    return list(dict.fromkeys(tags))


def compose_description(caption: str | None, stats: PixelStats, faces: int,
                        fmt: str | None) -> str:
    names = list(dict.fromkeys(c.name for c in stats.colours if c.share >= 0.1))[:2]
    parts = []
    if caption:
        parts.append(caption[:1].upper() + caption[1:].rstrip(".") + ".")
    what = f"A {stats.width}x{stats.height} {orientation(stats.width, stats.height)}"
    what += f" {fmt.upper()}" if fmt else ""
    what += " image"
    if names:
        what += " mostly " + " and ".join(names)
    if faces:
        what += f", with {faces} face{'s' if faces != 1 else ''}"
    if stats.has_alpha:
        what += ", partly transparent"
    parts.append(what + ".")
    return " ".join(parts)


class AnalysisService:
    def __init__(self, *, vision: Any | None, faceswap: Any, pool: Any, runner: Any):
        self.vision = vision  # the Vision deployment's handle, or None (not deployed)
        self.faceswap = faceswap
        self.pool = pool  # the ingress's image pool (graphs/workpool.py)
        self.runner = runner
        self._info: dict[str, Any] = {}
        self._tasks: set[asyncio.Task] = set()  # background auto-tagging

    async def vision_info(self) -> dict[str, Any] | None:
        if self.vision is None:
            return None
        if "vision" not in self._info:
            self._info["vision"] = await self.vision.info.remote()
        return self._info["vision"]

    async def analyze(self, image: np.ndarray, *, question: str | None = None,
                      colors: int = 5, data: bytes | None = None,
                      asset_id: str | None = None) -> ImageAnalysis:
        """Analyse a decoded image (HxWx3/4 uint8); `data`: its file's bytes (format and
        size are reported from them)."""
        try:
            question = check_question(question)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="question") from None
        info = await self.vision_info()
        if question is not None and (info is None or not info["limits"].get("questions")):
            raise ApiError(400, "no vision-language model that answers questions is "
                           "deployed here: leave question out", param="question",
                           code="questions_unsupported")
        started = time.perf_counter()
        stats_task = self.pool.run(pixel_stats, image, k=colors)
        faces_task = self.faceswap.detect.remote(image)
        vision_task = (self.vision.analyze.remote(image, question)
                       if self.vision is not None else None)
        if vision_task is not None:
            stats, detection, vision = await asyncio.gather(stats_task, faces_task,
                                                            vision_task)
        else:
            (stats, detection), vision = await asyncio.gather(stats_task, faces_task), None
        faces = detection.faces
        caption = vision.caption if vision is not None else None
        # usage accounting (graphs/usage.py): the face detector's and the Vision model's time
        usage.note_model_seconds("faceswap", detection.timings.get("model_s", 0.0))
        if vision is not None:
            usage.note_model_seconds("vision", vision.timings.get("model_s", 0.0),
                                     model=vision.model)
        fmt = image_format(data) if data is not None else None
        timings = {"total_s": time.perf_counter() - started}
        if vision is not None:
            timings.update({f"vision_{k}": v for k, v in vision.timings.items()})
        return ImageAnalysis(
            caption=caption,
            description=compose_description(caption, stats, len(faces), fmt),
            tags=compose_tags(caption, stats, len(faces)),
            colors=[AnalyzedColor(hex=c.hex, rgb=c.rgb, share=c.share, name=c.name)
                    for c in stats.colours],
            has_alpha=stats.has_alpha, transparent_share=stats.transparent_share,
            width=stats.width, height=stats.height, format=fmt,
            bytes=len(data) if data is not None else None,
            faces=AnalyzedFaces(count=len(faces), boxes=[
                FaceBox(x1=f.box[0], y1=f.box[1], x2=f.box[2], y2=f.box[3], score=f.score)
                for f in faces]),
            question=question, answer=vision.answer if vision is not None else None,
            asset_id=asset_id,
            metadata={"vision_model": info and {k: info[k] for k in ("name", "tiny",
                                                                      "fallback")},
                      "timings": timings})

    async def analyze_upload(self, *, data: bytes | None, asset_id: str | None,
                             decode: Any, question: str | None = None,
                             colors: int = 5) -> ImageAnalysis:
        """The route's door: an uploaded file (`decode`: the tools' upload decoder) or an
        asset of the caller's project."""
        if asset_id is not None:
            data = await self.runner.load_asset_bytes(asset_id)
            image = await decode(data, "asset_id")
        else:
            image = await decode(data, "image")
        result = await self.analyze(image, question=question, colors=colors, data=data,
                                    asset_id=asset_id)
        if asset_id is not None:  # kept with the asset: the gallery searches it
            await self.keep(asset_id, result)
        return result

    def auto_tag(self, images: list[tuple[str, np.ndarray]]) -> None:
        """Analyse recorded images in the background and keep their tags (`JobRunner.
        after_images` when the ingress's `auto_tag` is on): the job's answer does not wait
        for it, its request's timeout does not cancel it, and a failure is logged, never
        raised. Its Vision and face-detector seconds are recorded as usage of the same key
        and project under the route ``(auto-tag)`` (`usage.background`)."""
        async def tag_all() -> None:
            async with usage.background(AUTO_TAG_ROUTE):
                for asset_id, image in images:
                    try:
                        await self.keep(asset_id, await self.analyze(image))
                    except Exception as exc:  # noqa: BLE001 - tags are a convenience
                        logger.warning("auto-tagging asset %s failed: %s: %s", asset_id,
                                       type(exc).__name__, exc)

        task = asyncio.get_running_loop().create_task(
            tag_all(), context=middleware.detached_context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def keep(self, asset_id: str, result: ImageAnalysis) -> bool:
        """Store an asset's caption, description and tags (`RecordStore.set_asset_analysis`):
        what GET /v1/projects/{id}/assets?tag=&q= searches. False: the asset is gone."""
        tags = [t for t in result.tags if len(t) <= MAX_TAG_CHARS][:MAX_TAGS]
        return await asyncio.to_thread(
            self.runner.records.set_asset_analysis, asset_id=asset_id,
            project=self.runner.project, caption=result.caption,
            description=result.description, tags=tags)


def enhanced_prompt(refined: RefinedPrompt) -> EnhancedPrompt:
    """POST /v1/prompts/enhance's answer from the refiner's: the enhanced prompt and what
    changed (word runs added/removed/replaced; terms moved to the negative prompt)."""
    negatives = [t.strip() for t in refined.negative_prompt.split(",") if t.strip()]
    original = refined.original.lower()
    return EnhancedPrompt(
        original=refined.original, prompt=refined.prompt,
        negative_prompt=refined.negative_prompt, style=refined.style,
        changes=[PromptChange(**c) for c in prompt_changes(refined.original, refined.prompt)],
        added_terms=refined.added_terms,
        moved_to_negative=[t for t in negatives if t.lower() in original],
        compressed=refined.compressed)
