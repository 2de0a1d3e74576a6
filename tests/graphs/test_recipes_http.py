"""Reproducible assets over real HTTP: the recipe in the PNG's text chunk and in the record,
a remix with the same seed gives the same image, and an image with a recipe is recognised by
/v1/workflows/validate and the chat."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from graphs.images import read_recipe
from tests.graphs.test_tools_http import assert_envelope


def pixels(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))))


def test_recipe_round_trip_and_remix_gives_the_same_image(http):
    r = http.post("/v1/images/generations", json={
        "prompt": "a brass telescope on a desk", "size": "64x64", "steps": 2, "seed": 4242,
        "negative_prompt": "blurry", "preset": "photorealistic"})
    assert r.status_code == 200, r.text
    body = r.json()
    png = base64.b64decode(body["data"][0]["b64_json"])
    embedded = read_recipe(png)  # the PNG's own iTXt chunk
    assert embedded["seed"] == 4242 and embedded["steps"] == 2 and embedded["size"] == "64x64"
    assert embedded["preset"] == "photorealistic" and "brass telescope" in embedded["prompt"]
    assert embedded["negative_prompt"].endswith("blurry") and embedded["model"]
    asset_id = body["data"][0]["id"]
    recorded = http.get(f"/v1/assets/{asset_id}/recipe").json()["recipe"]
    assert recorded == embedded
    remixed = http.post(f"/v1/assets/{asset_id}/remix", json={})
    assert remixed.status_code == 200, remixed.text
    assert np.array_equal(pixels(remixed.json()), pixels(body))  # same seed: same image
    other = http.post(f"/v1/assets/{asset_id}/remix", json={"overrides": {"seed": 1}}).json()
    assert not np.array_equal(pixels(other), pixels(body))
    assert read_recipe(base64.b64decode(other["data"][0]["b64_json"]))["seed"] == 1
    assert_envelope(http.post(f"/v1/assets/{asset_id}/remix",
                              json={"overrides": {"steps": 0}}), 400, "overrides.steps")

    # dropped on validate: recognised, its workflow validated
    r = http.post("/v1/workflows/validate", files={"image": ("a.png", png, "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["recipe"] == embedded and r.json()["order"] == ["gen"]
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    assert_envelope(http.post("/v1/workflows/validate", files={
        "image": ("p.png", plain.getvalue(), "image/png")}), 400, "image")
    # ... and by the chat
    reply = http.post("/v1/chat", data={"message": "upscale this"},
                      files={"image": ("a.png", png, "image/png")}).json()
    assert reply["metadata"]["recipes"] == [embedded]


def test_workflow_outputs_carry_a_recipe_that_remixes(http):
    graph = {"nodes": {"gen": {"op": "generate", "params": {"prompt": "a kite", "size": "64x64",
                                                          "steps": 2}},
                       "up": {"op": "upscale", "in": {"image": "gen.image"},
                              "params": {"scale": 2}}}, "outputs": ["up.image"]}
    body = http.post("/v1/workflows/execute", json={"workflow": graph}).json()
    asset_id = body["data"][0]["id"]
    recipe = http.get(f"/v1/assets/{asset_id}/recipe").json()["recipe"]
    assert recipe["kind"] == "workflow" and recipe["node"] == "up.image"
    assert recipe["workflow"] == graph and set(recipe["seeds"]) == {"gen"}
    again = http.post(f"/v1/assets/{asset_id}/remix", json={})
    assert again.status_code == 200, again.text
    assert np.array_equal(pixels(again.json()), pixels(body))  # seeds pinned
