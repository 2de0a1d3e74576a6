"""Projects and the gallery over real HTTP."""

from __future__ import annotations

import secrets


def test_projects_and_gallery(http):
    pid = f"p-{secrets.token_hex(3)}"
    created = http.post("/v1/projects", json={"id": pid, "name": "My shoots"})
    assert created.status_code == 201 and created.json()["id"] == pid
    assert http.post("/v1/projects", json={"id": pid}).status_code == 409
    assert http.get(f"/v1/projects/{pid}").json()["name"] == "My shoots"
    ids = [p["id"] for p in http.get("/v1/projects", params={"limit": 200}).json()["data"]]
    assert pid in ids and "default" in ids
    assert http.get(f"/v1/projects/{pid}/assets").json()["data"] == []


def test_default_gallery_is_newest_first_with_prompts_and_delete(http):
    made = [http.post("/v1/images/generations",
                      json={"prompt": f"gallery item {i}", "size": "64x64", "seed": i}).json()
            for i in range(2)]
    page = http.get("/v1/projects/default/assets", params={"limit": 2}).json()
    assert [a["id"] for a in page["data"]] == [made[1]["data"][0]["id"], made[0]["data"][0]["id"]]
    assert page["data"][0]["prompt"] == "gallery item 1"
    assert page["data"][0]["parameters"]["seed"] == 1
    victim = made[0]["data"][0]["id"]
    assert http.delete(f"/v1/assets/{victim}").status_code == 200
    assert http.get(f"/v1/assets/{victim}").status_code == 404
    assert http.delete(f"/v1/assets/{victim}").status_code == 404


def test_project_errors(http):
    assert http.get("/v1/projects/nope-404").status_code == 404
    assert http.get("/v1/projects/nope-404/assets").status_code == 404
    r = http.post("/v1/projects", json={"id": "Bad Id!"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "id"
    r = http.get("/v1/projects/default/assets", params={"cursor": "garbage"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cursor"
