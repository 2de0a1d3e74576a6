"""Videos through the real `openai` client's `videos` resource (and plain HTTP where the client
has no call), on the deployed production graph with the tiny LTX model, through the proxy."""

from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.conftest import wait_until

SIZE = "64x64"


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.api_key,
                         max_retries=0, timeout=120)


def frames_of(mp4: bytes) -> tuple[np.ndarray, float]:
    from models.video import decode_video  # imageio + imageio-ffmpeg

    return decode_video(mp4)


def png_bytes(width=80, height=48) -> bytes:
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (250, 120, 10)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_create_and_poll_then_download_an_mp4_that_decodes(client, http):
    video = client.videos.create_and_poll(prompt="a cat walking on a beach", seconds="2",
                                          size=SIZE, poll_interval_ms=200,
                                          extra_body={"seed": 5, "steps": 2})
    assert video.status == "completed", video
    assert video.object == "video" and video.progress == 100 and video.size == SIZE
    assert video.seconds == "2" and video.completed_at >= video.created_at
    assert video.model == "tiny-ltx"
    content = client.videos.download_content(video.id)
    frames, fps = frames_of(content.content)
    assert frames.shape == (17, 64, 64, 3) and fps == pytest.approx(8)  # 2 s at 8 fps: 8k+1
    thumb = client.videos.download_content(video.id, variant="thumbnail")
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 64)
    # the same job, with the clip's facts, at /v1/jobs; Range works on the content route
    job = http.get(f"/v1/jobs/{video.id}").json()
    assert job["kind"] == "video" and job["status"] == "succeeded"
    meta = http.get(f"/v1/videos/{video.id}").json()["metadata"]
    assert meta["codec"] == "h264" and meta["pixel_format"] == "yuv420p"
    assert meta["frames"] == 17 and meta["duration_s"] == pytest.approx(17 / 8)
    part = http.get(f"/v1/videos/{video.id}/content", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100
    assert part.headers["content-type"] == "video/mp4"
    assert part.content == content.content[:100]


def test_image_to_video_with_input_reference(client):
    video = client.videos.create_and_poll(
        prompt="the scene comes alive", input_reference=("first.png", png_bytes(), "image/png"),
        seconds="1", size=SIZE, poll_interval_ms=200,
        extra_body={"seed": 1, "steps": 2, "preview": "gif"})
    assert video.status == "completed", video
    frames, _ = frames_of(client.videos.download_content(video.id).content)
    assert frames.shape == (9, 64, 64, 3)
    preview = Image.open(io.BytesIO(client.videos.download_content(
        video.id, variant="preview").content))  # the animated preview asked for
    assert preview.format == "GIF" and preview.n_frames > 1  # (PIL merges equal frames)


def test_remix_keeps_settings_and_seed(client):
    first = client.videos.create_and_poll(prompt="a red fox", seconds="1", size="96x64",
                                          poll_interval_ms=200,
                                          extra_body={"seed": 42, "steps": 2, "fps": 10})
    remix = client.videos.remix(first.id, prompt="a blue fox")
    remix = client.videos.poll(remix.id, poll_interval_ms=200)
    assert remix.status == "completed", remix
    assert remix.remixed_from_video_id == first.id and remix.prompt == "a blue fox"
    assert remix.size == "96x64" and remix.seconds == "1"
    raw = remix.model_extra or {}
    assert raw.get("seed") == 42 and raw.get("fps") == 10
    frames, fps = frames_of(client.videos.download_content(remix.id).content)
    assert frames.shape == (9, 64, 96, 3) and fps == pytest.approx(10)


def test_list_pages_and_delete(client, http):
    ids = [client.videos.create(prompt=f"clip {i}", seconds="1", size=SIZE,
                                extra_body={"steps": 1}).id for i in range(3)]
    page = client.videos.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    assert page.data[0].id == ids[-1]  # newest first
    assert [v.id for v in page.data] == [ids[2], ids[1]]
    listed = [v.id for v in client.videos.list(limit=2)]  # auto-paging follows `after`
    assert set(ids) <= set(listed) and len(listed) == len(set(listed))
    for vid in ids:
        client.videos.poll(vid, poll_interval_ms=200)
    gone = client.videos.delete(ids[0])
    assert gone.deleted and gone.id == ids[0]
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(ids[0])
    assert http.get(f"/v1/jobs/{ids[0]}").status_code == 404


@pytest.mark.parametrize(("kwargs", "param", "words"), [
    ({"size": "65x64"}, "width", "multiple of 32"),
    ({"size": "64x1024"}, "height", "between 32 and 128"),
    ({"size": "big"}, "size", "WIDTHxHEIGHT"),
    ({"seconds": "12"}, "seconds", "at most 65"),
    ({"extra_body": {"fps": 50}}, "fps", "between 8 and 30"),
    ({"extra_body": {"camera": "barrel-roll"}}, "camera", "camera must be one of"),
    ({"extra_body": {"preset": "noir"}}, "preset", "cinematic"),
    ({"model": "sora-2"}, "model", "not deployed"),
    ({"extra_body": {"colour": "red"}}, "colour", "colour"),
])
def test_invalid_requests_are_bad_requests_with_our_message(client, kwargs, param, words):
    kwargs = {"seconds": "1", "size": SIZE, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.videos.create(prompt="a cat", **kwargs)
    error = info.value.body
    assert words in error["message"], error
    assert error["param"] is not None and param in error["param"], error


def test_presets_apply_and_are_listed(client, http):
    # one preset store: /v1/video-presets is a view of GET /v1/presets?kind=video
    names = [p["name"] for p in http.get("/v1/video-presets").json()["data"]]
    stored = [p["id"] for p in http.get("/v1/presets", params={"kind": "video"}).json()["data"]
              if p["builtin"]]
    assert names == stored == ["cinematic-video", "vlog", "time-lapse"]
    video = client.videos.create(prompt="a city street", seconds="1", size=SIZE,
                                 extra_body={"preset": "vlog", "steps": 1})
    raw = http.get(f"/v1/videos/{video.id}").json()
    assert raw["fps"] == 30 and raw["metadata"]["preset"] == "vlog"
    assert raw["prompt"] == "a city street"  # what was asked; the preset's words condition it
    assert "handheld vlog footage" in raw["metadata"]["conditioned_prompt"]
    client.videos.poll(video.id, poll_interval_ms=200)
    # the old name still works; a field the request sets wins over the preset's
    old = http.post("/v1/videos", json={"prompt": "a pier", "seconds": 1, "size": SIZE,
                                        "steps": 1, "preset": "cinematic", "fps": 8}).json()
    assert old["fps"] == 8 and "dolly shot" in old["metadata"]["conditioned_prompt"]
    # a project's own video preset, made with POST /v1/presets, applies the same way
    own = http.post("/v1/presets", json={
        "kind": "video", "title": "Slow drone", "prompt_template": "aerial drone shot of "
        "{prompt}", "params": {"fps": 12, "camera": "pan-left", "motion": 0.2}}).json()
    mine = http.post("/v1/videos", json={"prompt": "a harbour", "seconds": 1, "size": SIZE,
                                         "steps": 1, "preset": own["id"]}).json()
    assert mine["fps"] == 12 and mine["metadata"]["conditioned_prompt"].startswith(
        "aerial drone shot of a harbour, the camera pans slowly to the left")
    # an image preset is not a video preset
    r = http.post("/v1/videos", json={"prompt": "a cat", "seconds": 1, "size": SIZE,
                                      "preset": "anime"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "preset"
    assert "video preset" in r.json()["error"]["message"]
    for vid in (old["id"], mine["id"]):
        client.videos.poll(vid, poll_interval_ms=200)
    assert http.delete(f"/v1/presets/{own['id']}").status_code == 200


def test_job_events_stream_progress_then_succeeded(client, http):
    # 12 steps: the record's progress is written at most every 0.25 s and the stream polls it
    # every 0.2 s, so a clip of a few fast steps could finish between two looks
    video = client.videos.create(prompt="progress please", seconds="1", size=SIZE,
                                 extra_body={"steps": 12})
    events = []
    with http.stream("GET", f"/v1/jobs/{video.id}/events", timeout=300) as stream:
        name = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name:
                events.append((name, json.loads(line.split(":", 1)[1])))
                if name in ("succeeded", "failed", "cancelled"):
                    break
    assert events[-1][0] == "succeeded", events[-1]
    steps = {e[1]["step"] for e in events if e[0] == "progress"}
    assert any(s and s.startswith("denoising") for s in steps), steps


def test_cancel_a_running_video_job(client, http, gateway):
    video = client.videos.create(prompt="a long clip to cancel", seconds="8", size=SIZE,
                                 extra_body={"steps": 20})
    wait_until(lambda: http.get(f"/v1/jobs/{video.id}").json()["progress"] > 0, timeout=300,
               interval=0.2, what="the video to make progress")
    assert http.delete(f"/v1/jobs/{video.id}").status_code == 200
    job = wait_until(lambda: (j := http.get(f"/v1/jobs/{video.id}").json())["status"]
                     not in ("queued", "running") and j, timeout=120, what="the cancel")
    assert job["status"] == "cancelled", job
    after = client.videos.retrieve(video.id)
    assert after.status == "failed" and after.error.code == "cancelled"
    stats = gateway.handle("Video").stats.remote().result(timeout_s=60)
    wait_until(lambda: not gateway.handle("Video").stats.remote().result(timeout_s=60)["busy"],
               timeout=60, what="the replica to stop at the next step")
    assert stats["cancelled"] >= 1 or \
        gateway.handle("Video").stats.remote().result(timeout_s=60)["cancelled"] >= 1
    with pytest.raises(openai.APIStatusError) as info:  # no content for a cancelled video
        client.videos.download_content(video.id)
    assert info.value.status_code == 409


def test_capabilities_list_the_video_deployment_and_limits(http):
    caps = http.get("/v1/capabilities").json()
    video = caps["deployments"]["video"]
    assert video["family"] == "video" and video["name"] == "tiny-ltx"
    assert video["limits"]["multiple"] == 32 and video["limits"]["frame_multiple"] == 8
    assert video["limits"]["min_fps"] == 8 and video["limits"]["max_fps"] == 30
    assert "/v1/videos" in caps["endpoints"]


@pytest.mark.slow
def test_killed_video_replica_fails_the_job_others_unaffected(local_gateway):
    """On the package's own graph (tests/graphs/conftest.py), never the shared gateway's."""
    import ray

    http = httpx.Client(base_url=local_gateway.base_url, timeout=120)  # auth is off there
    try:
        r = http.post("/v1/videos", json={"prompt": "a clip that loses its replica",
                                          "seconds": 8, "size": SIZE, "steps": 20})
        assert r.status_code == 200, r.text
        video_id = r.json()["id"]
        wait_until(lambda: http.get(f"/v1/jobs/{video_id}").json()["progress"] > 0,
                   timeout=300, interval=0.2, what="the video to make progress")
        handle = local_gateway.handle("Video")
        name = handle.info.remote().result(timeout_s=30)["actor_name"]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        killed = time.monotonic()

        def ended():
            v = http.get(f"/v1/videos/{video_id}").json()
            return v if v["status"] in ("completed", "failed") else None

        video = wait_until(ended, timeout=120, what="the video to end")
        assert video["status"] == "failed" and video["error"]["message"], video
        assert "Actor" in video["error"]["message"] or "died" in video["error"]["message"]
        # other deployments unaffected meanwhile
        r = http.post("/v1/images/generations", json={"prompt": "still here", "size": "64x64",
                                                      "steps": 1})
        assert r.status_code == 200, r.text
        print(f"\nvideo failed {time.monotonic() - killed:.1f}s after the kill: "
              f"{video['error']['message']}")
    finally:
        http.close()


def test_upscale_a_video_frame_by_frame_as_a_job(client, http):
    source = client.videos.create_and_poll(prompt="small clip", seconds="1", size=SIZE,
                                           poll_interval_ms=200,
                                           extra_body={"seed": 2, "steps": 1})
    r = http.post(f"/v1/videos/{source.id}/upscale", json={"scale": 2})
    assert r.status_code == 200, r.text
    big = client.videos.poll(r.json()["id"], poll_interval_ms=200)
    assert big.status == "completed", big
    assert big.size == "128x128" and (big.model_extra or {})["metadata"]["upscaled_from"] \
        == source.id
    frames, fps = frames_of(client.videos.download_content(big.id).content)
    assert frames.shape == (9, 128, 128, 3) and fps == pytest.approx(8)
    job = http.get(f"/v1/jobs/{big.id}").json()
    assert job["status"] == "succeeded" and job["kind"] == "video"


def test_chat_routes_video_requests_en_and_fr(client, http):
    r = http.post("/v1/chat", json={"message": "make a video of a cat playing piano"})
    assert r.status_code == 202, r.text
    reply = r.json()
    assert reply["type"] == "processing" and reply["data"]["plan"]["intent"] == "text_to_video"
    video = client.videos.poll(reply["data"]["job_id"], poll_interval_ms=200)
    assert video.status == "completed" and video.prompt == "a cat playing piano"
    r = http.post("/v1/chat", data={"message": "anime cette photo"},
                  files=[("image", ("p.png", png_bytes(), "image/png"))])
    assert r.status_code == 202, r.text
    reply = r.json()
    assert reply["data"]["plan"]["intent"] == "image_to_video"
    assert reply["message"].startswith("Votre vidéo")
    job = http.get(f"/v1/jobs/{reply['data']['job_id']}").json()
    assert job["kind"] == "video"
    assert http.get(f"/v1/videos/{job['id']}").json()["metadata"]["input_reference"]
    client.videos.poll(reply["data"]["job_id"], poll_interval_ms=200)
