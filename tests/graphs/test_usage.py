"""Usage accounting without Ray: requests are summed in memory (no write per request), one
transaction per flush, failed flushes keep the sums; model-seconds and project quotas."""

from __future__ import annotations

import asyncio

import pytest

from graphs import auth, usage
from graphs.errors import ApiError
from graphs.quotas import QuotaConfig, Quotas


class FakeRecords:
    def __init__(self):
        self.calls: list[list[dict]] = []
        self.fail = False

    def add_usage(self, *, rows):
        if self.fail:
            raise ConnectionError("database down")
        self.calls.append(list(rows))


def principal(key="key_1", project="p1", **kw):
    return auth.Principal(key_id=key, project=project, scopes=frozenset({"generate"}), **kw)


def record_request(recorder, *, route="POST /v1/images/generations", status=200, images=1,
                   seconds=0.5, who=None):
    token = auth.acting_as(who or principal())
    try:
        req = usage.RequestUsage()
        t = usage._current.set(req)
        usage.note_output("generations", model="tiny-sd", provider="local", images=images,
                          pixels=images * 4096, seconds=seconds)
        usage._current.reset(t)
        recorder.record(req, route=route, status=status)
        return req
    finally:
        auth._principal.reset(token)


def test_many_requests_one_write_per_flush():
    records = FakeRecords()
    recorder = usage.UsageRecorder(records, flush_s=3600)
    for _ in range(100):
        record_request(recorder)
    record_request(recorder, status=429, images=0, seconds=0)
    assert records.calls == []  # nothing written on the request path
    assert recorder.flush() == 3 and len(records.calls) == 1
    rows = {(r["status"], r["deployment"]): r for r in records.calls[0]}
    assert rows[(200, "")]["requests"] == 100 and rows[(200, "")]["images"] == 100
    assert rows[(200, "")]["pixels"] == 100 * 4096 and rows[(429, "")]["requests"] == 1
    assert rows[(200, "generator")]["model_seconds"] == pytest.approx(50.0)
    assert rows[(200, "")]["project"] == "p1" and rows[(200, "")]["key_id"] == "key_1"
    assert recorder.flush() == 0  # nothing new


def test_a_failed_flush_keeps_the_sums_for_the_next():
    records = FakeRecords()
    recorder = usage.UsageRecorder(records, flush_s=3600)
    record_request(recorder)
    records.fail = True
    assert recorder.flush() == 0
    record_request(recorder)
    records.fail = False
    recorder.flush()
    [rows] = records.calls
    assert next(r for r in rows if r["deployment"] == "")["requests"] == 2


def test_an_async_jobs_images_after_its_request_are_recorded_apart():
    records = FakeRecords()
    recorder = usage.UsageRecorder(records, flush_s=3600)
    req = record_request(recorder, images=0, seconds=0)  # the 202: nothing made yet
    t = usage._current.set(req)
    usage.note_output("generations", model="tiny-sd", provider=None, images=3, pixels=300,
                      seconds=2.0)
    usage._current.reset(t)
    recorder.flush()
    main = [r for r in records.calls[0] if r["deployment"] == ""]
    assert sum(r["requests"] for r in main) == 1 and sum(r["images"] for r in main) == 3


def test_chat_model_seconds_are_split_by_step_deployment():
    req = usage.RequestUsage()
    t = usage._current.set(req)
    usage.note_output("chat", model="a+b", provider=None, images=1, pixels=1, seconds=9,
                      timings={"step0_image_generation": 1.0, "step1_background_removal": 0.5})
    usage._current.reset(t)
    assert req.model_seconds == {"generator": 1.0, "matting": 0.5}


def test_model_seconds_quota_and_project_image_quota():
    quotas = Quotas(QuotaConfig(storage_url="memory://"))

    async def scenario():
        await quotas.check_model_seconds("key_1", per_day=3, quota="key.model_seconds_per_day")
        await quotas.add_model_seconds("key_1", 2.2, per_day=3)  # rounds up to 3
        with pytest.raises(ApiError) as err:
            await quotas.check_model_seconds("key_1", per_day=3,
                                             quota="key.model_seconds_per_day")
        assert err.value.status == 429 and err.value.param == "key.model_seconds_per_day"
        await quotas.charge_window("project:p1", 2, per_day=3, quota="project.images_per_day")
        with pytest.raises(ApiError) as err:
            await quotas.charge_window("project:p1", 2, per_day=3,
                                       quota="project.images_per_day")
        assert err.value.param == "project.images_per_day"
        assert "project.images_per_day quota of 3 images" in err.value.message

    asyncio.run(scenario())
