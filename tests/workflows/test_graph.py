"""The workflow format: validation (every problem named, at once), stages, and the engine
(parallel branches, failures, cancellation) with fake ops — pure Python, no Ray."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from graphs.workflows import CATALOGUE, VIDEO_UNAVAILABLE, composite_over
from workflows import Engine, Limits, WorkflowInvalid, validate

CHAIN = {"nodes": {
    "gen": {"op": "generate", "params": {"prompt": "a fox", "seed": 3}},
    "cut": {"op": "remove_background", "in": {"image": "gen.image"}},
    "up": {"op": "upscale", "in": {"image": "cut.image"}, "params": {"scale": 2}}},
    "outputs": ["up.image"]}

DIAMOND = {"nodes": {
    "gen": {"op": "generate", "params": {"prompt": "a portrait"}},
    "cut": {"op": "remove_background", "in": {"image": "gen.image"}},
    "paint": {"op": "style_transfer", "in": {"image": "gen.image"},
              "params": {"style": "watercolor"}},
    "swap": {"op": "face_swap", "in": {"source": "cut.image", "target": "paint.image"}}},
    "outputs": ["swap.image"]}


def problems(graph, catalogue=CATALOGUE, **kwargs):
    with pytest.raises(WorkflowInvalid) as info:
        validate(graph, catalogue, **kwargs)
    return info.value.problems


def test_chain_order_and_stages():
    valid = validate(CHAIN, CATALOGUE)
    assert valid.order == ["gen", "cut", "up"]
    assert valid.stages == [["gen"], ["cut"], ["up"]]
    assert valid.params["up"].scale == 2
    assert valid.outputs == [("up", "image")]


def test_diamond_has_a_parallel_stage():
    valid = validate(DIAMOND, CATALOGUE)
    assert valid.stages == [["gen"], ["cut", "paint"], ["swap"]]


# the diamond joined by a composite: the cut-out over the painted image
COMPOSITE_DIAMOND = {"nodes": {
    **{k: v for k, v in DIAMOND["nodes"].items() if k != "swap"},
    "join": {"op": "composite", "in": {"image": "cut.image", "background": "paint.image"},
             "params": {"feather": 2}}},
    "outputs": ["join.image"]}


def test_composite_joins_the_diamond_with_typed_ports():
    valid = validate(COMPOSITE_DIAMOND, CATALOGUE)
    assert valid.stages == [["gen"], ["cut", "paint"], ["join"]]
    assert valid.params["join"].feather == 2 and valid.params["join"].opacity == 1.0
    assert CATALOGUE.get("composite").describe()["inputs"] == {
        "image": {"type": "image", "required": True},
        "background": {"type": "image", "required": True},
        "mask": {"type": "mask", "required": False}}


def test_composite_problems_are_named():
    graph = {"nodes": {
        "gen": {"op": "generate", "params": {"prompt": "x"}},
        "cut": {"op": "remove_background", "in": {"image": "gen.image"}},
        "a": {"op": "composite", "in": {"image": "cut.image"}},  # no background
        "b": {"op": "composite", "in": {"image": "cut.image", "background": "cut.mask"}},
        "c": {"op": "composite", "in": {"image": "cut.image", "background": "gen.image"},
              "params": {"opacity": 1.5, "feather": -1}},
        "d": {"op": "composite", "in": {"image": "cut.image", "background": "gen.image"},
              "params": {"blend": "multiply"}}},
        "outputs": ["a.image"]}
    found = {(p.code, p.node, p.param) for p in problems(graph)}
    assert found == {("missing_input", "a", "nodes.a.in.background"),
                     ("port_type_mismatch", "b", "nodes.b.in.background"),
                     ("invalid_params", "c", "nodes.c.params.opacity"),
                     ("invalid_params", "c", "nodes.c.params.feather"),
                     ("invalid_params", "d", "nodes.d.params.blend")}
    message = " ".join(p.message for p in problems(graph))
    assert "less than or equal to 1" in message and "takes image, but cut.mask is mask" in message


def test_composite_puts_the_cut_out_over_the_background():
    bg = np.zeros((4, 6, 3), np.uint8)
    bg[..., 2] = 200  # blue
    cut = np.zeros((2, 3, 4), np.uint8)  # half the size: scaled to the background's
    cut[..., 0] = 255  # red
    cut[:, :2, 3] = 255  # left two thirds opaque, the rest transparent
    out = composite_over(cut, bg)
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 5].tolist() == [0, 0, 200]
    half = composite_over(cut, bg, opacity=0.5)
    assert half[0, 0].tolist() == [128, 0, 100]
    # the mask port, when connected, is the matte (the image's own alpha is not used)
    mask = np.zeros((4, 6), np.uint8)
    mask[:, 5] = 255
    swapped = composite_over(cut, bg, mask)
    assert swapped[0, 0].tolist() == [0, 0, 200] and swapped[0, 5].tolist() == [255, 0, 0]
    # an RGBA background stays RGBA: "over" keeps the background's transparency
    bga = np.zeros((4, 6, 4), np.uint8)
    over = composite_over(cut, bga)
    assert over.shape == (4, 6, 4) and over[0, 0].tolist() == [255, 0, 0, 255]
    assert over[0, 5, 3] == 0
    # feathering softens the edge: values between the two sides near it
    soft = composite_over(cut, bg, feather=1)
    assert 0 < soft[0, 3, 0] < 255


def test_composite_needs_a_matte():
    opaque = np.full((4, 4, 3), 9, np.uint8)
    with pytest.raises(ValueError, match="no transparency"):
        composite_over(opaque, opaque)
    assert composite_over(opaque, np.zeros_like(opaque), np.full((4, 4), 255, np.uint8)
                          ).tolist() == opaque.tolist()


def test_every_problem_is_named_at_once():
    graph = {"nodes": {
        "a": {"op": "generate", "params": {"prompt": "x", "steps": 999}},
        "b": {"op": "teleport"},
        "c": {"op": "upscale", "params": {"scale": 2}},
        "d": {"op": "upscale", "in": {"image": "ghost.image"}},
        "e": {"op": "upscale", "in": {"image": "t.text"}},
        "t": {"op": "prompt", "params": {"text": "hi"}}},
        "outputs": ["a.image"]}
    found = {(p.code, p.node) for p in problems(graph)}
    assert found == {("invalid_params", "a"), ("unknown_op", "b"), ("missing_input", "c"),
                     ("dangling_reference", "d"), ("port_type_mismatch", "e")}


def test_params_out_of_range_carry_the_route_model_message():
    [problem] = problems({"nodes": {"g": {"op": "generate", "params": {
        "prompt": "x", "steps": 999}}}})
    assert problem.param == "nodes.g.params.steps"
    assert "less than or equal to 150" in problem.message
    [problem] = problems({"nodes": {"g": {"op": "generate", "params": {"prompt": "x"}},
                                    "u": {"op": "upscale", "in": {"image": "g.image"},
                                          "params": {"scale": 3}}}})
    assert "scale must be one of 2, 4" in problem.message and problem.node == "u"


def test_cycle_names_its_nodes():
    graph = {"nodes": {
        "a": {"op": "upscale", "in": {"image": "c.image"}},
        "b": {"op": "upscale", "in": {"image": "a.image"}},
        "c": {"op": "upscale", "in": {"image": "b.image"}}}, "outputs": ["c.image"]}
    [problem] = problems(graph)
    assert problem.code == "cycle"
    assert all(n in problem.message for n in "abc")


def test_limits():
    nodes = {f"n{i}": {"op": "generate", "params": {"prompt": "x", "n": 4}} for i in range(9)}
    codes = {p.code for p in problems({"nodes": nodes}, limits=Limits(max_nodes=8, max_images=32))}
    assert codes == {"too_many_nodes", "too_many_images"}
    fan = {"g": {"op": "generate", "params": {"prompt": "x"}},
           **{f"u{i}": {"op": "upscale", "in": {"image": "g.image"}} for i in range(3)}}
    assert [p.code for p in problems({"nodes": fan}, limits=Limits(max_fan_out=2))] == \
        ["fan_out"]


def test_video_op_declared_but_not_available():
    catalogue = CATALOGUE.with_unavailable({"video": VIDEO_UNAVAILABLE})
    graph = {"nodes": {"g": {"op": "generate", "params": {"prompt": "x"}},
                       "v": {"op": "video", "in": {"image": "g.image"}}},
             "outputs": ["g.image"]}
    [problem] = problems(graph, catalogue)
    assert problem.code == "op_not_available" and VIDEO_UNAVAILABLE in problem.message
    validate(graph, CATALOGUE)  # with a Video deployment it validates


def test_64_nodes_validate_fast():
    nodes = {"g": {"op": "generate", "params": {"prompt": "x"}}}
    for i in range(63):
        nodes[f"e{i}"] = {"op": "edit_ops", "in": {"image": f"e{i - 1}.image" if i else
                                                   "g.image"},
                          "params": {"ops": [{"op": "grayscale"}]}}
    best = float("inf")
    for _ in range(7):  # the best of a few: this machine is shared
        started = time.perf_counter()
        valid = validate({"nodes": nodes}, CATALOGUE)
        best = min(best, time.perf_counter() - started)
    assert best < 0.010
    assert len(valid.order) == 64 and valid.outputs == [("e62", "image")]


# -- the engine -------------------------------------------------------------------------------
def fake_ops(delay=0.2, fail=(), log=None):
    async def op(ctx):
        if log is not None:
            log.append(("start", ctx.node))
        await asyncio.sleep(delay)
        if ctx.node in fail:
            raise ValueError(f"{ctx.node} broke")
        return {"image": f"img-{ctx.node}", "mask": f"mask-{ctx.node}"}

    return {name: op for name in CATALOGUE.ops}


def test_engine_runs_branches_at_once():
    events = []
    graph = validate(DIAMOND, CATALOGUE)
    started = time.perf_counter()
    result = asyncio.run(Engine(fake_ops()).run(graph, emit=events.append))
    wall = time.perf_counter() - started
    assert result.ok and wall < 0.75  # 3 levels of 0.2 s, not 4 nodes of 0.2 s
    cut, paint = result.nodes["cut"], result.nodes["paint"]
    assert cut["started_at"] < paint["ended_at"] and paint["started_at"] < cut["ended_at"]
    assert result.values[("swap", "image")] == "img-swap"
    kinds = [(e["event"], e["node"]) for e in events]
    assert kinds[0] == ("node_started", "gen") and kinds[-1] == ("node_succeeded", "swap")
    for node in DIAMOND["nodes"]:
        assert kinds.index(("node_started", node)) < kinds.index(("node_succeeded", node))


def test_a_failed_node_fails_its_dependents_only():
    graph = validate({"nodes": {
        "g": {"op": "generate", "params": {"prompt": "x"}},
        "a": {"op": "upscale", "in": {"image": "g.image"}},
        "b": {"op": "upscale", "in": {"image": "a.image"}},
        "c": {"op": "upscale", "in": {"image": "g.image"}}}}, CATALOGUE)
    events = []
    result = asyncio.run(Engine(fake_ops(0.01, fail={"a"})).run(graph, emit=events.append))
    assert result.failed == ["a"] and result.skipped == ["b"]
    assert result.nodes["c"]["status"] == "succeeded"
    assert "node 'a' (upscale) failed: ValueError: a broke" in result.reason()
    assert "b" in result.reason()
    assert ("node_skipped", "b") in [(e["event"], e["node"]) for e in events]


def test_cancel_stops_every_running_node():
    graph = validate(DIAMOND, CATALOGUE)
    events = []

    async def main():
        task = asyncio.ensure_future(Engine(fake_ops(0.3)).run(graph, emit=events.append))
        await asyncio.sleep(0.45)  # gen done, cut and paint running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    failed = {e["node"] for e in events if e["event"] == "node_failed"}
    assert failed == {"cut", "paint"}
    assert "swap" not in {e["node"] for e in events}


def test_engine_overhead_per_node_is_small():
    nodes = {"g": {"op": "generate", "params": {"prompt": "x"}}}
    for i in range(63):
        nodes[f"e{i}"] = {"op": "upscale", "in": {"image": f"e{i - 1}.image" if i else
                                                  "g.image"}}
    graph = validate({"nodes": nodes}, CATALOGUE)
    ops = fake_ops(0)
    best = float("inf")
    for _ in range(5):  # the best of a few: this machine is shared
        started = time.perf_counter()
        asyncio.run(Engine(ops).run(graph))
        best = min(best, time.perf_counter() - started)
    assert best / 64 < 0.002


def test_a_chat_plan_becomes_a_valid_workflow():
    from router.schemas import InputRef, Plan, Step
    from workflows.plans import plan_workflow

    plan = Plan(steps=[
        Step(intent="image_edit", params={"prompt": "in winter"},
             inputs=[InputRef(role="image", source="upload", index=0),
                     InputRef(role="reference", source="upload", index=1)]),
        Step(intent="upscale", params={"scale": 4},
             inputs=[InputRef(role="image", source="previous_step", index=0)]),
        Step(intent="face_swap", inputs=[
            InputRef(role="source_face", source="session", image_id="img_1"),
            InputRef(role="target", source="previous_step", index=1)])],
        confidence=0.9, stage="rules")
    graph, intents = plan_workflow(plan, session_image="img_1")
    valid = validate(graph, CATALOGUE)
    assert intents == {"step0": "image_edit", "step1": "upscale", "step2": "face_swap"}
    assert graph["nodes"]["step0"]["in"] == {
        "prompt": "step0_refine.prompt", "negative_prompt": "step0_refine.negative_prompt",
        "image": "upload0.image", "reference": "upload1.image"}
    assert graph["nodes"]["upload1"]["params"] == {"asset_id": "upload:1"}
    assert graph["nodes"]["step2"]["in"] == {"source": "session.image",
                                             "target": "step1.image"}
    assert valid.outputs == [("step2", "image")]
    assert valid.stages[-1] == ["step2"]
