"""Usage sums in the record store (SQLite and Postgres): batched upserts add up, reports
group by key / project / model / route / day and filter by time and project."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from common.errors import InputError

H = datetime(2026, 12, 6, 10, tzinfo=timezone.utc)


def row(**kw):
    base = dict(bucket=H, project="default", key_id="key_a", route="POST /v1/images/generations",
                model="tiny-sd", provider="local", status=200, deployment="", requests=1,
                images=2, videos=0, pixels=2 * 64 * 64, model_seconds=0.0, tokens_in=3,
                tokens_out=0)
    base.update(kw)
    return base


def test_batches_add_up_and_group(records):
    from sqlalchemy import delete

    from storage.tables import UsageRow

    with records.engine.begin() as conn:
        conn.execute(delete(UsageRow))
    seconds = row(deployment="generator", requests=0, images=0, pixels=0, tokens_in=0,
                  model_seconds=1.5)
    records.add_usage(rows=[row(), seconds])
    records.add_usage(rows=[row(), seconds,  # same dimensions: added to the stored sums
                            row(key_id="key_b", project="other", route="POST /v1/chat",
                                model="chat", images=0, pixels=0, status=429),
                            row(bucket=H + timedelta(days=1), images=1, pixels=64 * 64)])
    end = H + timedelta(days=2)
    by_key = {g["group"]: g for g in records.usage_report(start=H, end=end, group_by="key")}
    assert by_key["key_a"]["requests"] == 3 and by_key["key_a"]["images"] == 5
    assert by_key["key_a"]["pixels"] == 5 * 64 * 64 and by_key["key_a"]["tokens_in"] == 9
    assert by_key["key_a"]["model_seconds_by_deployment"] == {"generator": 3.0}
    assert by_key["key_b"]["statuses"] == {"429": 1}
    days = records.usage_report(start=H, end=end, group_by="day")
    assert [(d["group"], d["requests"]) for d in days] == [("2026-12-06", 3), ("2026-12-07", 1)]
    own = records.usage_report(start=H, end=end, group_by="route", project="default")
    assert [g["group"] for g in own] == ["POST /v1/images/generations"]
    assert records.usage_report(start=H + timedelta(hours=1), end=H + timedelta(days=1),
                                group_by="model") == []
    with pytest.raises(InputError, match="group_by must be one of"):
        records.usage_report(start=H, end=end, group_by="colour")
