"""The workflow format and its validation.

A workflow is a JSON object::

    {"nodes": {"gen": {"op": "generate", "params": {"prompt": "a fox"}},
               "cut": {"op": "remove_background", "in": {"image": "gen.image"}},
               "up":  {"op": "upscale", "in": {"image": "cut.image"}, "params": {"scale": 2}}},
     "outputs": ["up.image"]}

Each node names an op of the `Catalogue` (an allow-list); each op declares typed input and
output ports (text, image, mask, video) and the pydantic model of its params (the routes' own
models, injected by the ingress). A reference is ``"<node>.<port>"`` (``"<node>"`` alone: the
node's only output). `validate` reports every problem at once (`WorkflowInvalid.problems`),
or returns a `ValidGraph` with the execution order and the parallel stages
(`graphlib.TopologicalSorter`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PortType = Literal["text", "image", "mask", "video", "any"]
NODE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Port:
    type: PortType
    required: bool = True


@dataclass(frozen=True)
class OpSpec:
    """One op of the allow-list: its typed ports and its params model. `images(params)`: the
    images one run of it makes (counted against `Limits.max_images`). `unavailable`: why this
    gateway cannot run it (e.g. no Video deployment), or None."""

    name: str
    inputs: dict[str, Port]
    outputs: dict[str, PortType]
    params: type[BaseModel] | None = None
    description: str = ""
    images: Callable[[Any], int] | None = None
    unavailable: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"op": self.name, "description": self.description,
                "inputs": {k: {"type": p.type, "required": p.required}
                           for k, p in self.inputs.items()},
                "outputs": dict(self.outputs),
                "params": self.params.model_json_schema() if self.params else {},
                "available": self.unavailable is None,
                **({"unavailable_reason": self.unavailable} if self.unavailable else {})}


class Catalogue:
    """The ops a gateway accepts, by name."""

    def __init__(self, ops: list[OpSpec]):
        self.ops = {op.name: op for op in ops}

    def get(self, name: str) -> OpSpec | None:
        return self.ops.get(name)

    def names(self) -> list[str]:
        return sorted(self.ops)

    def with_unavailable(self, reasons: dict[str, str]) -> Catalogue:
        """The same ops, those named in `reasons` marked not available (with the reason)."""
        return Catalogue([OpSpec(**{**op.__dict__, "unavailable": reasons[op.name]})
                          if op.name in reasons else op for op in self.ops.values()])


@dataclass(frozen=True)
class Limits:
    max_nodes: int = 64
    max_fan_out: int = 16  # nodes reading one output port
    max_images: int = 64  # images the whole graph makes (what it is charged)
    max_outputs: int = 16


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    op: str = Field(..., max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict, alias="in",
                                   description="input port -> '<node>.<port>'")
    preset: str | None = Field(None, max_length=128, description="a preset applied to params")


class Graph(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: dict[str, Node] = Field(..., description="node id -> node")
    outputs: list[str] = Field(default_factory=list, description="'<node>.<port>' stored as "
                               "the job's images; empty: every output node and sink")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)


@dataclass
class Problem:
    code: str
    message: str
    node: str | None = None
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "node": self.node,
                "param": self.param}


class WorkflowInvalid(ValueError):
    """Every problem of a graph (validation never stops at the first)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))


@dataclass
class ValidGraph:
    graph: Graph
    params: dict[str, BaseModel | None]  # node -> its validated params
    edges: dict[str, dict[str, tuple[str, str]]]  # node -> input port -> (node, port)
    order: list[str]
    stages: list[list[str]]
    outputs: list[tuple[str, str]]
    images: int
    deps: dict[str, set[str]] = field(default_factory=dict)

    def ops(self) -> dict[str, str]:
        return {n: node.op for n, node in self.graph.nodes.items()}

    def summary(self) -> dict[str, Any]:
        return {"valid": True, "order": self.order, "stages": self.stages,
                "outputs": [f"{n}.{p}" for n, p in self.outputs], "images": self.images,
                "nodes": len(self.order)}


def _compatible(want: str, have: str) -> bool:
    return want == "any" or want == have


def _parse_ref(ref: str) -> tuple[str, str | None]:
    node, _, port = ref.partition(".")
    return node, (port or None)


def validate(raw: Any, catalogue: Catalogue, limits: Limits = Limits(), *,
             prepare: Callable[[str, Node], dict[str, Any]] | None = None) -> ValidGraph:
    """A checked graph, or `WorkflowInvalid` with every problem found. `prepare(node_id,
    node)` may return the params to validate (e.g. a preset merged in); its ValueError is
    reported as the node's problem."""
    if isinstance(raw, Graph):
        graph = raw
    else:
        try:
            graph = Graph.model_validate(raw)
        except ValidationError as exc:
            raise WorkflowInvalid([Problem(
                "invalid_graph", f"{'.'.join(map(str, e['loc'])) or 'graph'}: {e['msg']}",
                param=".".join(map(str, e["loc"])) or None) for e in exc.errors()]) from None
    problems: list[Problem] = []
    nodes = graph.nodes
    if not nodes:
        problems.append(Problem("empty_graph", "a workflow needs at least one node",
                                param="nodes"))
    if len(nodes) > limits.max_nodes:
        problems.append(Problem("too_many_nodes", f"{len(nodes)} nodes: at most "
                                f"{limits.max_nodes}", param="nodes"))
    params: dict[str, BaseModel | None] = {}
    edges: dict[str, dict[str, tuple[str, str]]] = {}
    readers: dict[tuple[str, str], list[str]] = {}
    images = 0
    for node_id, node in nodes.items():
        where = f"nodes.{node_id}"
        if not NODE_ID.match(node_id):
            problems.append(Problem("invalid_node_id", f"node id {node_id!r}: letters, digits, "
                                    "'_' and '-', starting with a letter or '_'", node_id, where))
        spec = catalogue.get(node.op)
        if spec is None:
            problems.append(Problem("unknown_op", f"node {node_id!r}: unknown op {node.op!r}; "
                                    f"ops: {', '.join(catalogue.names())}", node_id,
                                    f"{where}.op"))
            continue
        if spec.unavailable:
            problems.append(Problem("op_not_available", f"node {node_id!r}: op {node.op!r} is "
                                    f"not available on this gateway ({spec.unavailable})",
                                    node_id, f"{where}.op"))
        # params: the op's own model (the route's), with its message
        values = node.params
        if prepare is not None:
            try:
                values = prepare(node_id, node)
            except ValueError as exc:
                problems.append(Problem("invalid_preset", f"node {node_id!r}: {exc}", node_id,
                                        f"{where}.preset"))
        if spec.params is not None:
            try:
                params[node_id] = spec.params.model_validate(values)
            except ValidationError as exc:
                for e in exc.errors():
                    loc = ".".join(map(str, e["loc"]))
                    problems.append(Problem(
                        "invalid_params", f"node {node_id!r}: params.{loc}: {e['msg']}"
                        if loc else f"node {node_id!r}: params: {e['msg']}", node_id,
                        f"{where}.params.{loc}" if loc else f"{where}.params"))
                params[node_id] = None
            except ValueError as exc:  # a model_validator's own check
                problems.append(Problem("invalid_params", f"node {node_id!r}: params: {exc}",
                                        node_id, f"{where}.params"))
                params[node_id] = None
        elif values:
            problems.append(Problem("invalid_params", f"node {node_id!r}: op {node.op!r} takes "
                                    "no params", node_id, f"{where}.params"))
        if params.get(node_id) is not None and spec.images is not None:
            images += spec.images(params[node_id])
        elif spec.images is not None and spec.params is None:
            images += spec.images(None)
        # inputs: declared ports only, references to existing nodes' ports of the right type
        edges[node_id] = {}
        for port in node.inputs:
            if port not in spec.inputs:
                problems.append(Problem("unknown_input", f"node {node_id!r}: op {node.op!r} has "
                                        f"no input {port!r}; inputs: "
                                        f"{', '.join(spec.inputs) or 'none'}", node_id,
                                        f"{where}.in.{port}"))
        for port, want in spec.inputs.items():
            ref = node.inputs.get(port)
            if ref is None:
                if want.required:
                    problems.append(Problem("missing_input", f"node {node_id!r}: input {port!r} "
                                            f"({want.type}) is not connected", node_id,
                                            f"{where}.in.{port}"))
                continue
            src, src_port = _parse_ref(ref)
            src_node = nodes.get(src)
            if src_node is None:
                problems.append(Problem("dangling_reference", f"node {node_id!r}: input "
                                        f"{port!r} refers to {ref!r}, but there is no node "
                                        f"{src!r}", node_id, f"{where}.in.{port}"))
                continue
            src_spec = catalogue.get(src_node.op)
            if src_spec is None:
                continue  # reported on that node
            if src_port is None:
                if len(src_spec.outputs) != 1:
                    named = ", ".join(f"{src}.{p}" for p in src_spec.outputs) or "none"
                    problems.append(Problem("dangling_reference", f"node {node_id!r}: input "
                                            f"{port!r}: name one of {src!r}'s outputs "
                                            f"({named})", node_id, f"{where}.in.{port}"))
                    continue
                src_port = next(iter(src_spec.outputs))
            have = src_spec.outputs.get(src_port)
            if have is None:
                problems.append(Problem("dangling_reference", f"node {node_id!r}: input "
                                        f"{port!r} refers to {src}.{src_port}, but op "
                                        f"{src_node.op!r} has no output {src_port!r}; outputs: "
                                        f"{', '.join(src_spec.outputs) or 'none'}", node_id,
                                        f"{where}.in.{port}"))
                continue
            if not _compatible(want.type, have):
                problems.append(Problem("port_type_mismatch", f"node {node_id!r}: input "
                                        f"{port!r} takes {want.type}, but {src}.{src_port} is "
                                        f"{have}", node_id, f"{where}.in.{port}"))
                continue
            edges[node_id][port] = (src, src_port)
            readers.setdefault((src, src_port), []).append(node_id)
    for (src, port), who in readers.items():
        if len(who) > limits.max_fan_out:
            problems.append(Problem("fan_out", f"{src}.{port} feeds {len(who)} nodes: at most "
                                    f"{limits.max_fan_out}", src, f"nodes.{src}"))
    if images > limits.max_images:
        problems.append(Problem("too_many_images", f"the workflow makes {images} images: at "
                                f"most {limits.max_images}", param="nodes"))
    # outputs: explicit, else every `output` node's input and every sink's outputs
    outputs: list[tuple[str, str]] = []
    for i, ref in enumerate(graph.outputs):
        src, port = _parse_ref(ref)
        spec = catalogue.get(nodes[src].op) if src in nodes else None
        if src not in nodes:
            problems.append(Problem("dangling_reference", f"outputs[{i}] refers to {ref!r}, but "
                                    f"there is no node {src!r}", param=f"outputs[{i}]"))
            continue
        if spec is None:
            continue
        if port is None and len(spec.outputs) == 1:
            port = next(iter(spec.outputs))
        if port not in spec.outputs:
            problems.append(Problem("dangling_reference", f"outputs[{i}]: node {src!r} has no "
                                    f"output {port!r}; outputs: {', '.join(spec.outputs)}",
                                    src, f"outputs[{i}]"))
            continue
        if spec.outputs[port] == "text":
            problems.append(Problem("invalid_output", f"outputs[{i}]: {src}.{port} is text; "
                                    "the stored outputs are images (or videos)", src,
                                    f"outputs[{i}]"))
            continue
        outputs.append((src, port))
    if len(graph.outputs) > limits.max_outputs:
        problems.append(Problem("too_many_outputs", f"{len(graph.outputs)} outputs: at most "
                                f"{limits.max_outputs}", param="outputs"))
    deps = {n: {src for src, _ in edges.get(n, {}).values()} for n in nodes}
    order: list[str] = []
    stages: list[list[str]] = []
    sorter = TopologicalSorter(deps)
    try:
        sorter.prepare()
    except CycleError as exc:
        cycle = list(dict.fromkeys(exc.args[1]))
        problems.append(Problem("cycle", f"the graph has a cycle: {' -> '.join(exc.args[1])}",
                                cycle[0], "nodes"))
    else:
        while sorter.is_active():
            ready = sorted(sorter.get_ready())
            stages.append(ready)
            order.extend(ready)
            sorter.done(*ready)
    if not graph.outputs and not problems:
        read = {src for e in edges.values() for src, _ in e.values()}
        for n in order:
            spec = catalogue.get(nodes[n].op)
            if spec.name == "output":
                outputs.extend(edges[n].values())
            elif n not in read:
                outputs.extend((n, p) for p, t in spec.outputs.items()
                               if t in ("image", "mask", "video"))
        outputs = list(dict.fromkeys(outputs))
        if not outputs:
            problems.append(Problem("no_outputs", "the workflow stores no image or video: "
                                    "name its outputs ('<node>.<port>')", param="outputs"))
    if problems:
        raise WorkflowInvalid(problems)
    return ValidGraph(graph=graph, params=params, edges=edges, order=order, stages=stages,
                      outputs=outputs, images=images, deps=deps)
