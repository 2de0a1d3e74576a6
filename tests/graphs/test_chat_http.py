"""POST /v1/chat and friends over real HTTP on the deployed production graph (tiny models)."""

from __future__ import annotations

import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.models.test_faceswap import draw


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def fetch(url: str) -> Image.Image:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200
    img = Image.open(io.BytesIO(r.content))
    img.load()
    return img


def chat(http, message: str, images: list[bytes] = (), session_id: str | None = None):
    if images:
        data = {"message": message}
        if session_id:
            data["session_id"] = session_id
        files = [("image", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
        r = http.post("/v1/chat", data=data, files=files)
    else:
        body = {"message": message}
        if session_id:
            body["session_id"] = session_id
        r = http.post("/v1/chat", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_create_gives_an_image_with_a_refined_prompt(http):
    reply = chat(http, "Create a portrait of a cat wearing a crown")
    assert reply["type"] == "image" and len(reply["data"]["images"]) == 1
    assert [s["intent"] for s in reply["data"]["plan"]["steps"]] == ["image_generation"]
    refined = reply["metadata"]["refined_prompt"]
    assert "cat" in refined and "crown" in refined and len(refined) > len("a cat with a crown")
    image = reply["data"]["images"][0]
    assert fetch(image["url"]).size == (image["width"], image["height"])
    assert reply["actions"] and reply["suggestions"] and reply["session_id"]


def test_remove_the_background_of_an_upload(http):
    photo = png(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    reply = chat(http, "Remove the background", [photo])
    assert reply["type"] == "image"
    img = fetch(reply["data"]["images"][0]["url"])
    assert img.mode == "RGBA" and img.size == (64, 48)


def test_swap_the_faces_of_two_images(http):
    source = png(draw(160, 160, [(80, 80, 50)], colour=(230, 120, 90)))
    target = png(draw(200, 160, [(100, 80, 40)]))
    reply = chat(http, "swap the faces", [source, target])
    assert reply["type"] == "image", reply["message"]
    assert [s["intent"] for s in reply["data"]["plan"]["steps"]] == ["face_swap"]
    assert fetch(reply["data"]["images"][0]["url"]).size == (200, 160)


def test_generate_then_remove_background_in_one_call(http):
    reply = chat(http, "generate a red sneaker and remove the background")
    steps = [s["intent"] for s in reply["data"]["plan"]["steps"]]
    assert steps == ["image_generation", "background_removal"]
    assert [s["intent"] for s in reply["metadata"]["steps"]] == steps
    assert fetch(reply["data"]["images"][0]["url"]).mode == "RGBA"


def test_general_questions_get_text(http):
    reply = chat(http, "what can you do?")
    assert reply["type"] == "text" and "background" in reply["message"]
    assert reply["data"]["images"] == []


def test_follow_up_make_it_bigger_upscales_the_previous_image(http):
    first = chat(http, "create a lighthouse at dusk")
    before = first["data"]["images"][0]
    reply = chat(http, "make it bigger", session_id=first["session_id"])
    assert [s["intent"] for s in reply["data"]["plan"]["steps"]] == ["upscale"]
    after = reply["data"]["images"][0]
    assert after["width"] > before["width"] and after["height"] > before["height"]
    session = http.get(f"/v1/sessions/{first['session_id']}").json()
    assert [m["role"] for m in session["messages"]] == ["user", "assistant"] * 2


def test_image_intent_without_an_image_asks_for_one(http):
    reply = chat(http, "remove the background")
    assert reply["type"] == "text" and reply["data"]["images"] == []
    assert "image" in reply["message"].lower()


def test_plan_dry_run_and_sessions(http):
    plan = http.post("/v1/chat/plan", json={"message": "upscale this 4x, then cut it out"})
    assert plan.status_code == 200
    assert [s["intent"] for s in plan.json()["steps"]] == ["upscale", "background_removal"]
    reply = chat(http, "hello")
    sid = reply["session_id"]
    assert any(s["id"] == sid for s in http.get("/v1/sessions").json()["data"])
    assert http.delete(f"/v1/sessions/{sid}").status_code == 200
    assert http.get(f"/v1/sessions/{sid}").status_code == 404
    r = http.post("/v1/chat", json={"message": "hi", "session_id": "sess_missing"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "session_id"


@pytest.mark.parametrize("body,param", [
    ({"message": ""}, "message"),
    ({}, "message"),
    ({"message": "hi", "colour": 1}, "colour"),
])
def test_bad_chat_requests(http, body, param):
    r = http.post("/v1/chat", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_templates_and_prompt_tools(http):
    assert http.get("/v1/templates").json()["data"]
    v = http.post("/v1/prompts/validate", json={"prompt": "a watercolor fox"}).json()
    assert v["valid"] is True and v["analysis"]["length"] == len("a watercolor fox")
    r = http.post("/v1/prompts/refine", json={"prompt": "x" * 10_001})
    assert r.status_code == 400 and "10000" in r.json()["error"]["message"].replace(",", "")
    refined = http.post("/v1/prompts/refine", json={"prompt": "a fox, no people",
                                                    "style": "anime"}).json()
    assert "fox" in refined["prompt"] and "people" in refined["negative_prompt"]


def test_async_chat_streams_plan_stages_then_remembers(http, gateway):
    import json

    r = http.post("/v1/chat?async=true",
                  json={"message": "generate a red sneaker and remove the background"})
    assert r.status_code == 202, r.text
    reply = r.json()
    assert reply["type"] == "processing" and reply["data"]["job_id"]
    steps, final, result = [], None, None
    with httpx.stream("GET", f"{gateway.base_url}/v1/jobs/{reply['data']['job_id']}/events",
                      timeout=120, headers=gateway.headers) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                if data["step"] and data["step"] not in steps:
                    steps.append(data["step"])
                final, result = event, data["result"]
    assert final == "succeeded"
    # the plan runs as its workflow: its nodes' stages are seen live (the job record is
    # sampled every 200 ms, so a node quicker than that may pass unseen: some node's stage,
    # not a given one), and the final event's result lists every step that ran
    assert any(re.match(r"step\d+(_\w+)?: node_", s) for s in steps), steps
    assert [s["intent"] for s in result["metadata"]["extra"]["steps"]] == [
        "image_generation", "background_removal"]
    follow = chat(http, "make it bigger", session_id=reply["session_id"])
    assert [s["intent"] for s in follow["data"]["plan"]["steps"]] == ["upscale"]
    assert follow["type"] == "image"


def test_a_french_follow_up_edits_the_last_image_and_says_which_models_ran(http):
    first = chat(http, "génère un phare au crépuscule")
    assert first["type"] == "image" and first["message"] == "Voici votre image (générée)."
    (gen,) = first["metadata"]["steps"]  # the tiny profile says so, per step
    assert gen["intent"] == "image_generation" and gen["tiny"] is True
    assert {"fallback", "fallback_reason"} <= set(gen) and first["metadata"]["tiny"] is True
    reply = chat(http, "la même chose mais en hiver", session_id=first["session_id"])
    assert reply["type"] == "image", reply["message"]
    (step,) = reply["data"]["plan"]["steps"]
    assert step["intent"] == "image_edit"
    assert step["inputs"][0]["image_id"] == first["data"]["images"][0]["id"]
    assert step["params"]["prompt"] == "un phare au crépuscule, en hiver"
    assert reply["actions"][0] == {
        "id": "generate_new", "label": "En générer une nouvelle à la place", "type": "chat",
        "data": {"message": "génère une nouvelle image : un phare au crépuscule, en hiver"}}
    assert [a["label"] for a in reply["actions"][1:]] == [
        "Agrandir 2×", "Détourer", "Aquarelle", "Télécharger"]
    assert reply["message"] == "Voici votre image (modifiée)."
