"""The MP4 we serve plays in a real browser: Chromium (tests/browser.py) loads it from the
gateway into a <video> element (its signed URL: no API key in a media tag; Range requests
answered) and reports a duration and a decoded frame."""

from __future__ import annotations

from tests.conftest import wait_until


def test_the_mp4_plays_in_chromium(http, page, artifacts_dir):
    created = http.post("/v1/videos", json={"prompt": "a browser-playable clip", "seconds": 2,
                                            "size": "96x64", "steps": 2, "seed": 3})
    assert created.status_code == 200, created.text
    video_id = created.json()["id"]
    video = wait_until(lambda: (v := http.get(f"/v1/videos/{video_id}").json())["status"]
                       in ("completed", "failed") and v, timeout=300, interval=0.3,
                       what="the video")
    assert video["status"] == "completed", video
    url = video["metadata"]["urls"]["video"]
    page.set_content(f'<video id="v" src="{url}" muted playsinline preload="auto"></video>')
    state = page.evaluate("""async () => {
        const v = document.getElementById('v');
        const failed = () => v.error ? `media error ${v.error.code}: ${v.error.message}` : null;
        for (let i = 0; i < 300 && v.readyState < 2 && !failed(); i++)
            await new Promise(r => setTimeout(r, 100));
        if (failed()) return {error: failed()};
        const frame = await new Promise(resolve => {
            v.requestVideoFrameCallback((now, meta) => resolve(meta));
            v.play();
            setTimeout(() => resolve(null), 10000);
        });
        return {readyState: v.readyState, duration: v.duration, width: v.videoWidth,
                height: v.videoHeight, frame: frame && {width: frame.width,
                height: frame.height, presentedFrames: frame.presentedFrames}};
    }""")
    page.screenshot(path=str(artifacts_dir / "video_in_chromium.png"))
    assert "error" not in state, state
    assert state["readyState"] >= 2 and state["duration"] > 0, state
    assert abs(state["duration"] - 17 / 8) < 0.2, state
    assert (state["width"], state["height"]) == (96, 64), state
    assert state["frame"] and state["frame"]["presentedFrames"] >= 1, state
    assert not page.console_errors, page.console_errors
