"""The workflow executor: one for workflows and chat plans.

Nodes run as soon as every node they read has succeeded (graphlib's `TopologicalSorter`
driven by completions, each ready set started together as tasks), so independent branches
call their deployments at once; a branch never waits on an unrelated slower one. Values pass
between nodes in memory (arrays, never re-encoded). A failed node fails its dependents (they
are `skipped`, never run); independent branches still finish. Cancelling `run` cancels every
running node.

Events (`emit`, a plain callable): ``node_started``, ``progress`` (from the node's own
reports, e.g. denoising steps), ``node_succeeded``, ``node_failed``, ``node_skipped``; each a
dict with ``event``, ``node``, ``op``, ``t`` (epoch seconds) and its own fields.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import Any

from workflows.graph import ValidGraph

Emit = Callable[[dict[str, Any]], None]


class NodeFailed(Exception):
    """A node's op raised: which node, and the error."""

    def __init__(self, node: str, op: str, error: BaseException):
        self.node, self.op, self.error = node, op, error
        super().__init__(f"node {node!r} ({op}) failed: {error}")


@dataclass
class NodeContext:
    node: str
    op: str
    params: Any  # the op's validated params model (None for ops without params)
    inputs: dict[str, Any]  # input port -> the value the connected output produced
    progress: Callable[[float, str | None], Awaitable[None]]


NodeFn = Callable[[NodeContext], Awaitable[dict[str, Any]]]


@dataclass
class RunResult:
    values: dict[tuple[str, str], Any]  # (node, port) -> value, for every node that ran
    nodes: dict[str, dict[str, Any]]  # node -> op, status, started_at, ended_at, error, extra
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def reason(self) -> str:
        parts = [f"node {n!r} ({self.nodes[n]['op']}) failed: {self.nodes[n]['error']}"
                 for n in self.failed]
        if self.skipped:
            parts.append(f"not run (their inputs failed): {', '.join(self.skipped)}")
        return "; ".join(parts)


class Engine:
    """Runs a `ValidGraph` with one async callable per op (`ops`): each takes a
    `NodeContext` and returns its output values by port (plus an optional ``"_meta"`` dict
    recorded with the node)."""

    def __init__(self, ops: dict[str, NodeFn]):
        self.ops = ops

    async def run(self, graph: ValidGraph, *, emit: Emit | None = None) -> RunResult:
        emit = emit or (lambda event: None)
        ops = graph.ops()
        result = RunResult(values={}, nodes={n: {"op": ops[n], "status": "pending"}
                                              for n in graph.order})
        sorter = TopologicalSorter(graph.deps)
        sorter.prepare()
        running: dict[asyncio.Task, str] = {}
        bad: set[str] = set()

        def event(kind: str, node: str, **extra: Any) -> None:
            emit({"event": kind, "node": node, "op": ops[node], "t": time.time(), **extra})

        async def run_node(node: str) -> dict[str, Any]:
            fn = self.ops.get(ops[node])
            if fn is None:
                raise RuntimeError(f"op {ops[node]!r} has no executor on this gateway")
            inputs = {port: result.values[src] for port, src in graph.edges[node].items()}

            async def progress(fraction: float, step: str | None = None) -> None:
                event("progress", node, progress=round(fraction, 4), step=step)

            return await fn(NodeContext(node=node, op=ops[node], params=graph.params.get(node),
                                        inputs=inputs, progress=progress))

        try:
            while sorter.is_active():
                ready = sorted(sorter.get_ready())
                for node in ready:
                    if graph.deps[node] & bad:
                        bad.add(node)
                        result.skipped.append(node)
                        result.nodes[node]["status"] = "skipped"
                        event("node_skipped", node, because=sorted(graph.deps[node] & bad))
                        sorter.done(node)
                        continue
                    info = result.nodes[node]
                    info.update(status="running", started_at=time.time())
                    event("node_started", node)
                    running[asyncio.ensure_future(run_node(node))] = node
                if not running:
                    continue  # every ready node was skipped: the next ones may be ready now
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: running[t]):
                    node = running.pop(task)
                    info = result.nodes[node]
                    info["ended_at"] = time.time()
                    info["seconds"] = round(info["ended_at"] - info["started_at"], 4)
                    exc = task.exception()
                    if exc is not None:
                        bad.add(node)
                        result.failed.append(node)
                        info.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                        info["exception"] = exc
                        event("node_failed", node, error=info["error"])
                    else:
                        values = dict(task.result() or {})
                        meta = values.pop("_meta", None) or {}
                        for port, value in values.items():
                            result.values[(node, port)] = value
                        info.update(status="succeeded", **({"meta": meta} if meta else {}))
                        event("node_succeeded", node, outputs=describe(values), **meta)
                    sorter.done(node)
        finally:
            if running:  # cancelled (or failed): stop every node still running
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
                for node in running.values():
                    result.nodes[node].update(status="cancelled", ended_at=time.time())
                    event("node_failed", node, error="cancelled")
        return result


def describe(values: dict[str, Any]) -> dict[str, Any]:
    """A node's outputs as events show them: an array's size, a text itself, or what a value
    says of itself (its ``describe()``, e.g. a video clip's size and frames)."""
    out: dict[str, Any] = {}
    for port, value in values.items():
        shape = getattr(value, "shape", None)
        if callable(getattr(value, "describe", None)):
            out[port] = value.describe()
        elif shape is not None and len(shape) >= 2:
            out[port] = {"width": int(shape[1]), "height": int(shape[0])}
        elif isinstance(value, str):
            out[port] = {"text": value[:200]}
        else:
            out[port] = {"type": type(value).__name__}
    return out
