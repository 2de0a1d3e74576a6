"""Prompt suggestions over real HTTP (the Router deployment's MiniLM for autocomplete and
enhance; categories, by-category and random in the ingress)."""

from __future__ import annotations

from tests.graphs.test_tools_http import assert_envelope


def test_suggestion_routes(http):
    cats = {c["id"] for c in http.get("/v1/suggestions/categories").json()["data"]}
    assert cats == {"subjects", "styles", "lighting", "camera", "quality", "mood", "colors"}
    found = http.get("/v1/suggestions/autocomplete", params={"q": "golden", "limit": 5}).json()
    assert found["data"][0] == {"text": "golden hour", "category": "lighting",
                                "match": "prefix"}
    assert len(found["data"]) == 5 and found["data"][-1]["match"] == "semantic"
    near = http.get("/v1/suggestions/autocomplete", params={"q": "sunrise warmth"}).json()
    assert near["data"][0]["category"] == "lighting" and near["data"][0]["match"] == "semantic"
    assert "bokeh" in http.get("/v1/suggestions/by-category/camera").json()["data"]
    assert_envelope(http.get("/v1/suggestions/by-category/nope"), 404, "category")
    enhanced = http.post("/v1/suggestions/enhance", json={"prompt": "a red fox"}).json()
    assert enhanced["prompt"].startswith("a red fox, ") and len(enhanced["added"]) == 3
    picks = http.get("/v1/suggestions/random", params={"n": 3, "category": "mood"}).json()
    assert len(picks["data"]) == 3 and {p["category"] for p in picks["data"]} == {"mood"}
    assert_envelope(http.get("/v1/suggestions/autocomplete", params={"q": ""}), 400)
