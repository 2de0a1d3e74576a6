"""Presets over real HTTP: CRUD, apply, `preset` on generations and workflow nodes, and the old
style/template routes kept as views of the same presets."""

from __future__ import annotations

from tests.graphs.test_tools_http import assert_envelope


def test_presets_list_crud_and_apply(http):
    listed = {p["id"]: p for p in http.get("/v1/presets").json()["data"]}
    for name in ("cinematic-portrait", "anime", "photorealistic", "concept-art",
                 "oil-painting", "cinematic-video", "vlog", "time-lapse"):
        assert listed[name]["builtin"], name
    # the old routes: the same styles and templates, in their old shape
    assert {s["name"] for s in http.get("/v1/styles").json()["data"]} <= set(listed)
    assert {t["id"] for t in http.get("/v1/templates").json()["data"]} <= set(listed)
    videos = http.get("/v1/presets", params={"kind": "video"}).json()["data"]
    assert {p["id"] for p in videos} == {"cinematic-video", "vlog", "time-lapse"}

    r = http.post("/v1/presets", json={"title": "Blueprint", "prompt_template":
                                       "blueprint drawing of {prompt}, white lines",
                                       "negative_prompt": "color", "params": {"steps": 2}})
    assert r.status_code == 201, r.text
    mine = r.json()
    assert mine["source"] == "user" and not mine["builtin"]
    applied = http.post(f"/v1/presets/{mine['id']}/apply",
                        json={"prompt": "a bicycle", "params": {"size": "64x64"}}).json()
    assert applied["endpoint"] == "/v1/images/generations"
    assert applied["request"] == {"prompt": "blueprint drawing of a bicycle, white lines",
                                  "negative_prompt": "color", "steps": 2, "size": "64x64"}
    # the composed request is one the generations route takes
    r = http.post(applied["endpoint"], json=applied["request"])
    assert r.status_code == 200, r.text
    assert_envelope(http.post("/v1/presets", json={"title": "x", "prompt_template": "no "
                                                   "placeholder"}), 400, "prompt_template")
    assert_envelope(http.delete("/v1/presets/anime"), 403)
    assert http.delete(f"/v1/presets/{mine['id']}").status_code == 200
    assert_envelope(http.get(f"/v1/presets/{mine['id']}"), 404)


def test_preset_on_generations_and_workflow_nodes(http):
    r = http.post("/v1/images/generations", json={
        "prompt": "a lighthouse", "preset": "concept-art", "size": "64x64", "steps": 2})
    assert r.status_code == 200, r.text
    job = http.get(f"/v1/jobs/{r.json()['metadata']['job_id']}").json()
    assert job["kind"] == "generations"
    assert_envelope(http.post("/v1/images/generations", json={
        "prompt": "x", "preset": "vlog"}), 400, "preset")
    assert_envelope(http.post("/v1/images/generations", json={
        "prompt": "x", "preset": "nope"}), 400, "preset")
    graph = {"nodes": {"g": {"op": "generate", "preset": "anime",
                             "params": {"prompt": "a cat", "size": "64x64", "steps": 2}}}}
    r = http.post("/v1/workflows/execute", json={"workflow": graph})
    assert r.status_code == 200, r.text
    meta = http.get(f"/v1/jobs/{r.json()['metadata']['job_id']}").json()["result"][
        "workflow"]["nodes"]["g"]["meta"]
    assert "anime style" in meta["prompt"] and meta["prompt"].startswith("a cat")
