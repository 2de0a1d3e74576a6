"""Datasets: images (+ captions) a project collects, e.g. to train a LoRA on (`/v1/datasets`).

Images arrive as multipart files (an optional caption each), inside a zip (captions as
``.txt`` files matched by stem), or from the project's existing assets (gallery → dataset).
Each one is decoded and checked at the edge like every upload (graphs/images.py), stored as a
PNG asset of kind ``dataset`` and recorded with the dataset in one transaction.

Zips are read defensively (`read_zip`): bounded member count, total uncompressed size and
per-member compression ratio (a zip bomb is refused before it is inflated, and each member is
read with a cap, whatever its header claims), member names checked (no absolute paths, no
``..``, no drive letters or backslashes), nested folders flattened, hidden and ``__MACOSX``
entries skipped.

Images without a caption are captioned by the Vision deployment (BLIP) where one is
deployed; otherwise they keep none and are trained with the trigger word alone (the dataset's
view says which).
"""

from __future__ import annotations

import asyncio
import io
import posixpath
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from graphs import auth
from graphs.errors import ApiError
from graphs.jobs import JobRunner
from graphs.training_schemas import (
    CaptionInfo,
    Dataset,
    DatasetCreate,
    DatasetImagesAdded,
    DatasetImageView,
    DatasetList,
    DatasetStats,
)
from storage.datasets import DatasetImageRecord, DatasetRecord, DatasetRecords, NewDatasetImage

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_CAPTION_CHARS = 2000
DATASET_ASSET_KIND = "dataset"


@dataclass(frozen=True)
class ZipLimits:
    max_members: int = 1000
    max_total_bytes: int = 512 * 1024 * 1024  # uncompressed, all members together
    max_member_bytes: int = 50 * 1024 * 1024
    max_ratio: float = 100.0  # uncompressed / compressed, per member


@dataclass
class ZipContents:
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (name, bytes)
    captions: dict[str, str] = field(default_factory=dict)  # stem -> caption
    skipped: list[str] = field(default_factory=list)


def _bad_zip(message: str) -> ApiError:
    return ApiError(400, message, param="zip", code="invalid_zip")


def safe_member_name(name: str) -> str | None:
    """The member's file name if it is safe to use, else None (never a path: the dataset
    keeps the base name only). Refuses absolute paths, drive letters, backslashes, `..`."""
    if not name or "\x00" in name or "\\" in name or name.startswith("/") \
            or (len(name) > 1 and name[1] == ":"):
        return None
    parts = name.split("/")
    if any(p == ".." for p in parts):
        return None
    base = posixpath.basename(posixpath.normpath(name))
    if not base or base in (".", ".."):
        return None
    return base[:255]


def read_zip(data: bytes, limits: ZipLimits = ZipLimits()) -> ZipContents:
    """The images and `.txt` captions of an uploaded zip, checked (see the module doc)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise _bad_zip(f"zip is not a valid zip file ({exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            raise _bad_zip(f"zip has {len(infos)} entries; at most {limits.max_members}")
        total = sum(i.file_size for i in infos)
        if total > limits.max_total_bytes:
            raise _bad_zip(f"zip would inflate to {total} bytes; at most "
                           f"{limits.max_total_bytes}")
        out = ZipContents()
        seen: set[str] = set()
        for info in infos:
            if info.is_dir():
                continue
            name = safe_member_name(info.filename)
            if name is None:
                raise _bad_zip(f"zip member {info.filename!r} has an unsafe name (absolute "
                               "path, '..', drive letter or backslash)")
            parts = info.filename.split("/")
            if name.startswith(".") or "__MACOSX" in parts:
                out.skipped.append(info.filename)
                continue
            stem, ext = posixpath.splitext(name)
            ext = ext.lower()
            if ext not in IMAGE_EXTENSIONS and ext != ".txt":
                out.skipped.append(info.filename)
                continue
            if info.file_size > limits.max_member_bytes:
                raise _bad_zip(f"zip member {name!r} is {info.file_size} bytes; at most "
                               f"{limits.max_member_bytes}")
            if info.file_size > 1024 and \
                    info.file_size > limits.max_ratio * max(info.compress_size, 1):
                ratio = info.file_size // max(info.compress_size, 1)
                raise _bad_zip(f"zip member {name!r} is compressed {ratio}:1; at most "
                               f"{limits.max_ratio:g}:1 (a zip bomb?)")
            try:
                with archive.open(info) as member:  # read at most what the header claims
                    blob = member.read(info.file_size + 1)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError,
                    EOFError) as exc:
                raise _bad_zip(f"zip member {name!r} cannot be read ({exc})") from None
            if len(blob) > info.file_size:
                raise _bad_zip(f"zip member {name!r} is larger than its header says")
            if ext == ".txt":
                try:
                    text = blob.decode("utf-8-sig").strip()
                except UnicodeDecodeError:
                    raise _bad_zip(f"caption {name!r} is not UTF-8 text") from None
                out.captions[stem] = text[:MAX_CAPTION_CHARS]
                continue
            if name in seen:
                raise _bad_zip(f"zip holds two images named {name!r} (in different folders): "
                               "rename one")
            seen.add(name)
            out.images.append((name, blob))
        stems = {posixpath.splitext(n)[0] for n, _ in out.images}
        out.skipped += [f"{s}.txt" for s in out.captions if s not in stems]
    return out


class DatasetService:
    def __init__(self, *, records: DatasetRecords, runner: JobRunner, decode_many:
                 Callable[[list[tuple[str, bytes]]], Awaitable[list[np.ndarray]]],
                 vision: Any | None = None, vision_info: Callable[[], Awaitable[Any]] | None
                 = None, zip_limits: ZipLimits = ZipLimits(), max_images: int = 1000):
        self.data = records
        self.records = records.records
        self.runner = runner
        self.decode_many = decode_many
        self.vision = vision
        self._vision_info = vision_info
        self.zip_limits = zip_limits
        self.max_images = max_images  # per dataset

    @staticmethod
    def _project() -> str:
        return auth.current_project()

    async def _captioner(self) -> str | None:
        if self.vision is None or self._vision_info is None:
            return None
        info = await self._vision_info()
        return info["name"] if info else None

    # -- views ------------------------------------------------------------------------------
    def _image_view(self, image: DatasetImageRecord, base_url: str, project: str
                    ) -> DatasetImageView:
        return DatasetImageView(
            id=image.id, asset_id=image.asset_id,
            url=self.runner.asset_url(image.asset_id, base_url, project),
            filename=image.filename, caption=image.caption,
            caption_source=image.caption_source, width=image.width, height=image.height,
            size_bytes=image.size_bytes)

    async def _view(self, record: DatasetRecord, base_url: str, *, images: bool = False
                    ) -> Dataset:
        stats = await asyncio.to_thread(self.data.stats, dataset_id=record.id)
        captioner = await self._captioner()
        listed = None
        if images:
            rows = await asyncio.to_thread(self.data.list_images, dataset_id=record.id)
            listed = [self._image_view(i, base_url, record.project) for i in rows]
        return Dataset(
            id=record.id, name=record.name, description=record.description, kind=record.kind,
            tags=record.tags, images=stats.images, bytes=stats.bytes,
            captions=CaptionInfo(
                captioned=stats.captioned, missing=stats.images - stats.captioned,
                coverage=round(stats.caption_coverage, 4), by_source=stats.caption_sources,
                auto_captioner=captioner,
                missing_captions="vision" if captioner else "trigger_word"),
            created_at=record.created_at, updated_at=record.updated_at, data=listed)

    async def record(self, dataset_id: str, *, param: str = "dataset_id") -> DatasetRecord:
        """The caller's dataset, else 404 (another project's is missing, like a missing one)."""
        record = await asyncio.to_thread(self.data.get_dataset, dataset_id=dataset_id,
                                         project=self._project())
        if record is None:
            raise ApiError(404, f"no dataset {dataset_id!r}", param=param, code="not_found")
        return record

    # -- routes -----------------------------------------------------------------------------
    async def create(self, body: DatasetCreate, *, base_url: str) -> Dataset:
        tags = [t.strip() for t in body.tags if t.strip()]
        if any(len(t) > 64 for t in tags):
            raise ApiError(400, "each tag must be at most 64 characters", param="tags")
        record = await asyncio.to_thread(
            self.data.create_dataset, project=self._project(), name=body.name.strip(),
            description=body.description, kind=body.kind, tags=tags)
        return await self._view(record, base_url)

    async def get(self, dataset_id: str, *, base_url: str) -> Dataset:
        return await self._view(await self.record(dataset_id), base_url, images=True)

    async def list(self, *, limit: int, cursor: str | None, base_url: str) -> DatasetList:
        page = await asyncio.to_thread(self.data.list_datasets, project=self._project(),
                                       limit=limit, cursor=cursor)
        return DatasetList(data=[await self._view(r, base_url) for r in page.items],
                           next_cursor=page.next_cursor)

    async def stats(self, dataset_id: str) -> DatasetStats:
        record = await self.record(dataset_id)
        s = await asyncio.to_thread(self.data.stats, dataset_id=record.id)
        return DatasetStats(
            id=record.id, images=s.images, bytes=s.bytes,
            mean_bytes=round(s.bytes / s.images, 1) if s.images else 0.0,
            captioned=s.captioned, caption_coverage=round(s.caption_coverage, 4),
            caption_sources=s.caption_sources, min_width=s.min_width, max_width=s.max_width,
            min_height=s.min_height, max_height=s.max_height, trainable=s.images > 0)

    async def image(self, dataset_id: str, image_id: str) -> tuple[DatasetRecord,
                                                                   DatasetImageRecord]:
        """The caller's dataset and one of its images, else 404 naming which is missing."""
        record = await self.record(dataset_id)
        image = await asyncio.to_thread(self.data.get_image, dataset_id=record.id,
                                        image_id=image_id)
        if image is None:
            raise ApiError(404, f"dataset {dataset_id!r} has no image {image_id!r}",
                           param="image_id", code="not_found")
        return record, image

    async def set_caption(self, dataset_id: str, image_id: str, caption: str | None, *,
                          base_url: str) -> DatasetImageView:
        """A person's caption for one image (source ``user``); None or blank: none."""
        record, image = await self.image(dataset_id, image_id)
        text = " ".join((caption or "").split()) or None
        source = "user" if text else None
        await asyncio.to_thread(self.data.set_captions, dataset_id=record.id,
                                captions={image.id: (text, source)})
        return self._image_view(replace(image, caption=text, caption_source=source),
                                base_url, record.project)

    async def delete_image(self, dataset_id: str, image_id: str) -> None:
        record, image = await self.image(dataset_id, image_id)
        await asyncio.to_thread(self.data.delete_image, dataset_id=record.id,
                                image_id=image.id, project=record.project,
                                assets=self.runner.assets)

    async def delete(self, dataset_id: str) -> None:
        record = await self.record(dataset_id)
        await asyncio.to_thread(self.data.delete_dataset, dataset_id=record.id,
                                project=record.project, assets=self.runner.assets)

    async def add_images(self, dataset_id: str, *, files: list[tuple[str, str | None, bytes]],
                         captions: list[str | None], zips: list[bytes],
                         asset_ids: list[str], auto_caption: bool, base_url: str
                         ) -> DatasetImagesAdded:
        """`files`: (field, filename, bytes) with `captions` aligned to them (None: none);
        `zips`: zip files of images + `.txt` captions; `asset_ids`: the project's assets."""
        record = await self.record(dataset_id)
        uploads: list[tuple[str, str | None, bytes, str | None, str | None]] = []
        for (fieldname, filename, blob), caption in zip(files, captions, strict=True):
            uploads.append((fieldname, filename, blob, caption, "user" if caption else None))
        skipped: list[str] = []
        for blob in zips:
            contents = await asyncio.to_thread(read_zip, blob, self.zip_limits)
            skipped += contents.skipped
            for name, data in contents.images:
                caption = contents.captions.get(posixpath.splitext(name)[0]) or None
                uploads.append((f"zip:{name}", name, data, caption,
                                "file" if caption else None))
        if not uploads and not asset_ids:
            raise ApiError(400, "send images: multipart `image` files, a `zip` of images "
                           "(+ .txt captions by file stem), or `asset_id`s of the project's "
                           "images", param="image", code="no_images")
        existing = (await asyncio.to_thread(self.data.stats, dataset_id=record.id)).images
        if existing + len(uploads) + len(asset_ids) > self.max_images:
            raise ApiError(400, f"a dataset holds at most {self.max_images} images (it has "
                           f"{existing}; this request adds {len(uploads) + len(asset_ids)})",
                           param="image", code="too_many_images")
        arrays = await self.decode_many([(f, b) for f, _, b, _, _ in uploads]) \
            if uploads else []
        for asset_id in asset_ids:  # gallery → dataset (a copy: the dataset owns its images)
            arrays.append(await self.runner.load_image(asset_id, param="asset_id"))
            uploads.append(("asset_id", None, b"", None, None))
        arrays = [a[..., :3] if a.ndim == 3 and a.shape[2] == 4 else a for a in arrays]
        # captions for the images that have none, from the Vision model (when deployed)
        captioner = await self._captioner() if auto_caption else None
        if captioner:
            missing = [i for i, u in enumerate(uploads) if not u[3]]
            results = await asyncio.gather(*(self.vision.analyze.remote(arrays[i], None)
                                             for i in missing))
            for i, result in zip(missing, results, strict=True):
                text = (result.caption or "").strip()
                if text:
                    f, n, b, _, _ = uploads[i]
                    uploads[i] = (f, n, b, text[:MAX_CAPTION_CHARS], "vision")

        project = self._project()

        def store() -> list[NewDatasetImage]:
            assets, images = [], []
            try:
                for array, (_, filename, _, caption, source) in zip(arrays, uploads,
                                                                    strict=True):
                    asset, _ = self.runner._store(array, "png", None, DATASET_ASSET_KIND)
                    assets.append(asset)
                    images.append(NewDatasetImage(
                        asset_id=asset.id, size_bytes=asset.size_bytes, width=asset.width,
                        height=asset.height, filename=filename, caption=caption,
                        caption_source=source))
                self.data.add_images(dataset_id=record.id, images=images, assets=assets)
            except BaseException:  # nothing half-written: the stored bytes go again
                for asset in assets:
                    try:
                        self.runner.assets.delete(key=asset.key)
                    except Exception:  # noqa: BLE001 - best effort; the error is raised
                        pass
                raise
            return images

        images = await asyncio.to_thread(store)
        added = [DatasetImageRecord(id=i.id, dataset_id=record.id, asset_id=i.asset_id,
                                    filename=i.filename, caption=i.caption,
                                    caption_source=i.caption_source, size_bytes=i.size_bytes,
                                    width=i.width, height=i.height,
                                    created_at=record.updated_at) for i in images]
        fresh = await self.record(dataset_id)
        return DatasetImagesAdded(
            dataset=await self._view(fresh, base_url),
            added=[self._image_view(i, base_url, project) for i in added], skipped=skipped)
