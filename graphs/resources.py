"""Jobs, projects, assets and chat sessions as API resources: reads and writes through the
caller's project, answered as the typed models of `graphs.schemas` (route code stays thin).

Every read by id goes through the caller's project (`RecordStore` getters require it): another
project's id is a 404 exactly like a missing one. Admin keys may read any project (not its
jobs or sessions: those stay with the keys of their project).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from graphs import auth
from graphs.errors import ApiError
from graphs.jobs import JobRunner
from graphs.schemas import (
    AssetLink,
    AssetList,
    Deleted,
    GalleryAsset,
    Job,
    JobLinks,
    JobList,
    Project,
    ProjectCreate,
    ProjectList,
    Session,
    SessionList,
    SessionMessage,
)
from storage.assets import AssetStore
from storage.records import RecordStore


def job_view(record: Any, base_url: str, runner: JobRunner) -> Job:
    return Job(
        id=record.id, kind=record.kind, status=record.status, progress=record.progress,
        step=record.step, model=record.model, created_at=record.created_at,
        started_at=record.started_at, finished_at=record.finished_at, result=record.result,
        error=record.error,
        assets=[AssetLink(id=a, url=runner.asset_url(a, base_url, record.project))
                for a in record.asset_ids],
        links=JobLinks(self=f"/v1/jobs/{record.id}", events=f"/v1/jobs/{record.id}/events"))


def project_view(record: Any) -> Project:
    return Project(id=record.id, name=record.name, description=record.description,
                   created_at=record.created_at)


def session_view(record: Any, base_url: str = "", runner: JobRunner | None = None) -> Session:
    """A session; with `runner` (to sign its images' URLs), its messages too."""
    return Session(
        id=record.id, title=record.title, created_at=record.created_at,
        updated_at=record.updated_at,
        messages=[SessionMessage(
            role=m.role, content=m.content, created_at=m.created_at, type=m.data.get("type"),
            images=[AssetLink(id=i, url=runner.asset_url(i, base_url, record.project))
                    for i in m.image_ids])
            for m in record.messages] if runner is not None else None)


class Resources:
    def __init__(self, *, records: RecordStore, assets: AssetStore, runner: JobRunner):
        self.records = records
        self.assets = assets
        self.runner = runner  # signs the asset URLs in what is returned

    @staticmethod
    def _project_id() -> str:
        return auth.current_project()

    # -- jobs -------------------------------------------------------------------------------
    async def job_record(self, job_id: str):
        record = await asyncio.to_thread(self.records.get_job, job_id=job_id,
                                         project=self._project_id())
        if record is None:
            raise ApiError(404, f"no job {job_id!r}", param="job_id", code="not_found")
        return record

    async def job(self, job_id: str, *, base_url: str) -> Job:
        return job_view(await self.job_record(job_id), base_url, self.runner)

    async def jobs(self, *, status: str | None, created_after: datetime | None,
                   created_before: datetime | None, limit: int, cursor: str | None,
                   base_url: str) -> JobList:
        page = await asyncio.to_thread(
            self.records.list_jobs, status=status, project=self._project_id(),
            created_after=created_after, created_before=created_before, limit=limit,
            cursor=cursor)
        return JobList(data=[job_view(j, base_url, self.runner) for j in page.items],
                       next_cursor=page.next_cursor)

    async def cancel_job(self, job_id: str, *, base_url: str) -> Job:
        try:  # request_cancel reads the job through the project itself
            record = await asyncio.to_thread(self.records.request_cancel, job_id=job_id,
                                             project=self._project_id())
        except KeyError:
            raise ApiError(404, f"no job {job_id!r}", param="job_id", code="not_found") from None
        return job_view(record, base_url, self.runner)

    # -- projects and gallery -----------------------------------------------------------------
    async def project_record(self, project_id: str):
        """The project, if the caller may see it (its own; admin keys: any), else 404."""
        visible = auth.current().admin or project_id == self._project_id()
        record = visible and await asyncio.to_thread(self.records.get_project,
                                                     project_id=project_id)
        if not record:
            raise ApiError(404, f"no project {project_id!r}", param="project_id",
                           code="not_found")
        return record

    async def create_project(self, body: ProjectCreate) -> Project:
        if await asyncio.to_thread(self.records.get_project, project_id=body.id):
            raise ApiError(409, f"project {body.id!r} exists", param="id", code="exists")
        quotas = {k: v for k, v in (("images_per_day", body.images_per_day),
                                    ("model_seconds_per_day", body.model_seconds_per_day))
                  if v is not None}
        record = await asyncio.to_thread(self.records.create_project, project_id=body.id,
                                         name=body.name, description=body.description,
                                         settings=quotas or None)
        return project_view(record)

    async def project(self, project_id: str) -> Project:
        return project_view(await self.project_record(project_id))

    async def projects(self, *, limit: int, cursor: str | None) -> ProjectList:
        if not auth.current().admin:  # a key sees its own project only
            own = await self.project_record(self._project_id())
            return ProjectList(data=[project_view(own)])
        page = await asyncio.to_thread(self.records.list_projects, limit=limit, cursor=cursor)
        return ProjectList(data=[project_view(p) for p in page.items],
                           next_cursor=page.next_cursor)

    async def gallery(self, project_id: str, *, limit: int, cursor: str | None,
                      base_url: str, tags: list[str] | None = None,
                      q: str | None = None) -> AssetList:
        """The project's assets, newest first; `tags` (all of them) and `q` (every word in
        the caption, description, prompt or a tag) narrow it (`RecordStore.list_assets`)."""
        await self.project_record(project_id)
        page = await asyncio.to_thread(self.records.list_assets, project=project_id,
                                       tags=tags or (), q=q, limit=limit, cursor=cursor)
        return AssetList(next_cursor=page.next_cursor, data=[GalleryAsset(
            id=a.id, kind=a.kind, url=self.runner.asset_url(a.id, base_url, project_id),
            content_type=a.content_type, width=a.width, height=a.height,
            size_bytes=a.size_bytes, created_at=a.created_at, job_id=a.job_id,
            prompt=a.prompt, parameters=a.params, recipe=a.recipe or None,
            caption=a.caption, description=a.description, tags=a.tags)
            for a in page.items])

    # -- assets -------------------------------------------------------------------------------
    async def asset_record(self, asset_id: str):
        principal = auth.current()
        # a signed URL reads only its own asset, in the project it was signed for
        visible = principal.signed_asset is None or principal.signed_asset == asset_id
        record = visible and await asyncio.to_thread(
            self.records.get_asset, asset_id=asset_id, project=principal.project)
        if not record:
            raise ApiError(404, f"no asset {asset_id!r}", param="asset_id", code="not_found")
        return record

    async def delete_asset(self, asset_id: str) -> Deleted:
        record = await self.asset_record(asset_id)
        await asyncio.to_thread(self.records.delete_asset, asset_id=asset_id,
                                project=record.project, assets=self.assets)
        return Deleted(id=asset_id)

    # -- chat sessions ------------------------------------------------------------------------
    async def session_record(self, session_id: str):
        record = await asyncio.to_thread(self.records.get_session, session_id=session_id,
                                         project=self._project_id())
        if record is None:
            raise ApiError(404, f"no session {session_id!r}", param="session_id",
                           code="not_found")
        return record

    async def session(self, session_id: str, *, base_url: str) -> Session:
        return session_view(await self.session_record(session_id), base_url, self.runner)

    async def sessions(self, *, limit: int, cursor: str | None) -> SessionList:
        page = await asyncio.to_thread(self.records.list_sessions,
                                       project=self._project_id(), limit=limit, cursor=cursor)
        return SessionList(data=[session_view(s) for s in page.items],
                           next_cursor=page.next_cursor)

    async def delete_session(self, session_id: str) -> Deleted:
        await self.session_record(session_id)
        if not await asyncio.to_thread(self.records.delete_session, session_id=session_id,
                                       project=self._project_id()):
            raise ApiError(404, f"no session {session_id!r}", param="session_id",
                           code="not_found")
        return Deleted(id=session_id)
