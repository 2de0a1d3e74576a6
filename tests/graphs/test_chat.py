"""The chat endpoint's session writes without Ray: `TurnWriter`'s group commit on a real SQLite
record store (the HTTP behaviour is in test_chat_http.py)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from graphs.chat import TurnWriter
from storage.records import RecordStore


@pytest.fixture
def records(tmp_path):
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    yield store
    store.close()


def writer_for(add_turns) -> tuple[TurnWriter, ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)

    async def write(fn, /, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: fn(**kwargs))

    return TurnWriter(add_turns, write), pool


def text_turn(text: str, session_id: str | None = None, project: str = "p1") -> dict:
    return {"session_id": session_id, "project": project,
            "messages": [{"role": "user", "content": text},
                         {"role": "assistant", "content": f"re: {text}"}]}


def test_concurrent_turns_share_transactions_and_each_gets_its_own_session(records):
    commits: list[int] = []
    event.listen(records.engine, "commit", lambda conn: commits.append(1))
    writer, pool = writer_for(records.add_turns)

    async def main():
        return await asyncio.gather(*(writer.add(**text_turn(f"hello {i}")) for i in range(20)))

    try:
        ids = asyncio.run(main())
    finally:
        pool.shutdown()
    assert len(set(ids)) == 20 and all(i.startswith("sess_") for i in ids)
    for i, session_id in enumerate(ids):  # every caller got its own turn's session
        got = records.get_session(session_id=session_id, project="p1")
        assert [m.content for m in got.messages] == [f"hello {i}", f"re: hello {i}"]
    assert writer.turns == 20
    assert writer.batches == len(commits) < 20  # group commit: fewer transactions than turns


def test_a_failed_turn_fails_alone_and_one_alone_is_written_at_once(records):
    writer, pool = writer_for(records.add_turns)

    async def main():
        alone = await writer.add(**text_turn("first"))  # idle writer: its own transaction
        assert writer.batches == 1
        return alone, await asyncio.gather(
            writer.add(**text_turn("follow-up", session_id=alone)),
            writer.add(**text_turn("lost", session_id="sess_missing")),
            writer.add(**text_turn("elsewhere", session_id=alone, project="p2")),
            writer.add(**text_turn("fine")), return_exceptions=True)

    try:
        alone, (follow_up, missing, foreign, fine) = asyncio.run(main())
    finally:
        pool.shutdown()
    assert follow_up == alone
    assert isinstance(missing, KeyError) and isinstance(foreign, KeyError)
    assert [m.content for m in records.get_session(session_id=alone, project="p1").messages] \
        == ["first", "re: first", "follow-up", "re: follow-up"]
    assert records.get_session(session_id=alone, project="p2") is None  # p1's, not p2's
    assert [m.content for m in records.get_session(session_id=fine, project="p1").messages] \
        == ["fine", "re: fine"]


def test_a_database_error_reaches_every_turn_of_its_batch_and_the_writer_goes_on():
    calls: list[int] = []

    def add_turns(turns):
        calls.append(len(turns))
        if len(calls) == 1:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return [f"sess_{i}" for i in range(len(turns))]

    writer, pool = writer_for(add_turns)

    async def main():
        failed = await asyncio.gather(writer.add(**text_turn("a")), writer.add(**text_turn("b")),
                                      return_exceptions=True)
        return failed, await writer.add(**text_turn("c"))

    try:
        failed, after = asyncio.run(main())
    finally:
        pool.shutdown()
    assert all(isinstance(f, OperationalError) for f in failed) and len(failed) == 2
    assert after == "sess_0"
    assert sum(calls) == 3
