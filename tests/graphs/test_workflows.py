"""The workflow service without Ray: the real WorkflowService, JobRunner (SQLite + local
assets) and engine, with fake model deployments (tests/graphs/test_chat_replies.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from graphs.generation import GenerationService
from graphs.jobs import JobRunner
from graphs.tools import Limits, ToolService
from graphs.workflows import WorkflowService
from models.diffusion import GenerationResult
from storage.assets import LocalAssetStore
from storage.records import RecordStore
from tests.graphs.test_chat_replies import FakeGenerator, FakeMatting, FakeRouter, Method


class StreamingGenerator(FakeGenerator):
    """Also `options(stream=True).generate_stream` (denoising steps, then the result)."""

    def options(self, **_):
        gen = self

        class Events:
            def __init__(self, req):
                self.req = req

            def __aiter__(self):
                return self._events()

            async def _events(self):
                for step in (1, 2):
                    await asyncio.sleep(0.01)
                    yield {"type": "progress", "step": step, "total": 2}
                image = np.full((self.req.height, self.req.width, 3), 90, np.uint8)
                gen.requests.append(self.req)
                yield {"type": "result", "result": GenerationResult(
                    images=[image], seeds=[self.req.seed or 0], model="tiny-sd",
                    batch_size=1)}

            def cancel(self):
                pass

        class Options:
            generate_stream = Method(lambda req, partial: Events(req))

        return Options()


@pytest.fixture
def service(tmp_path):
    records = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    runner = JobRunner(assets=LocalAssetStore(tmp_path / "assets"), records=records,
                       project="p1")
    generation = GenerationService(generator=StreamingGenerator(), runner=runner)
    tools = ToolService(handles={"matting": FakeMatting()}, generation=generation,
                        runner=runner, limits=Limits())
    yield WorkflowService(generation=generation, tools=tools, runner=runner,
                          router=FakeRouter())
    records.close()


GRAPH = {"nodes": {"gen": {"op": "generate", "params": {"prompt": "a fox", "size": "64x64",
                                                        "seed": 3}},
                   "cut": {"op": "remove_background", "in": {"image": "gen.image"}}},
         "outputs": ["cut.image"]}


def test_async_job_records_nodes_and_streams_events(service):
    async def go():
        job_id = await service.execute(service.validate(GRAPH), base_url="http://gw",
                                       async_job=True, keep_intermediates=True)
        await asyncio.gather(*service.runner._tasks)
        return job_id

    job_id = asyncio.run(go())
    job = service.records.get_job(job_id=job_id, project="p1")
    assert job.status == "succeeded", job.error
    events = [(e["event"], e["node"]) for e in service.logs[job_id].events]
    assert events[0] == ("node_started", "gen") and ("progress", "gen") in events
    assert events[-1] == ("node_succeeded", "cut")
    nodes = job.result["workflow"]["nodes"]
    assert set(nodes["gen"]["meta"]) >= {"model", "seed", "asset_id"}
    assert len(job.result["workflow"]["intermediates"]) == 2
