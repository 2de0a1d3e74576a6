"""A fake OpenAI Images server (real HTTP): POST /v1/images/generations (JSON) and
POST /v1/images/edits (multipart `image` / `image[]`, `mask`), answering
`{created, data: [{b64_json | url, revised_prompt}]}` or OpenAI's error shape
`{"error": {message, type, param, code}}`. `mode` scripts the next answers."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.providers.servers import pattern, png_bytes


@dataclass
class FakeOpenAI:
    api_key: str = "sk-test-fake-openai-key"
    mode: str = "ok"  # ok | url | empty | 500 | 503 | 429 | content_policy | bad_request
    latency_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    base_url: str = ""

    def __post_init__(self) -> None:
        self.app = self._build()

    def _error(self, status: int, message: str, *, code: str | None = None,
               type_: str = "invalid_request_error", param: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                       "code": code}}, status_code=status, headers=headers)

    def _answer(self, prompt: str, n: int, size: str | None, seed: int | None):
        if self.mode == "empty":
            return {"created": int(time.time()), "data": []}
        if self.mode == "500":
            return self._error(500, "The server had an error while processing your request.",
                               type_="server_error")
        if self.mode == "503":
            return self._error(503, "overloaded", type_="server_error",
                               headers={"Retry-After": "3"})
        if self.mode == "429":
            return self._error(429, "Rate limit reached for images per minute.",
                               type_="requests", code="rate_limit_exceeded",
                               headers={"Retry-After": "7"})
        if self.mode == "content_policy":
            return self._error(400, "Your request was rejected as a result of our safety "
                               "system.", code="content_policy_violation")
        if self.mode == "bad_request":
            return self._error(400, "Invalid size '13x13'.", code="invalid_value", param="size")
        width, height = (int(v) for v in (size or "1024x1024").split("x"))
        width, height = width // 16, height // 16  # small images, same aspect
        data = []
        for i in range(n):
            png = png_bytes(pattern((seed or 0) + i, width, height, prompt))
            if self.mode == "url":
                name = f"img-{len(self.files)}.png"
                self.files[name] = png
                data.append({"url": f"{self.base_url}/files/{name}", "revised_prompt": prompt})
            else:
                data.append({"b64_json": base64.b64encode(png).decode(),
                             "revised_prompt": f"revised: {prompt}"})
        return {"created": int(time.time()), "data": data, "usage": {"total_tokens": 1}}

    def _build(self) -> FastAPI:
        app = FastAPI()

        def authorized(request: Request) -> bool:
            return request.headers.get("authorization") == f"Bearer {self.api_key}"

        def unauthorized(request: Request):
            sent = request.headers.get("authorization", "").removeprefix("Bearer ")
            # like OpenAI: the key is echoed back (partly masked there; whole here, to make
            # sure our provider never repeats an upstream auth message)
            return self._error(401, f"Incorrect API key provided: {sent}.",
                               code="invalid_api_key")

        @app.post("/v1/images/generations")
        async def generations(request: Request):
            if not authorized(request):
                return unauthorized(request)
            body = await request.json()
            self.requests.append({"route": "generations", **body})
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            return self._answer(body["prompt"], body.get("n", 1), body.get("size"),
                                body.get("seed"))

        @app.post("/v1/images/edits")
        async def edits(request: Request):
            if not authorized(request):
                return unauthorized(request)
            form = await request.form()
            images = [await f.read() for key in ("image", "image[]") for f in
                      form.getlist(key)]
            mask = form.get("mask")
            record = {"route": "edits", "prompt": form["prompt"], "n": int(form.get("n", 1)),
                      "size": form.get("size"), "model": form.get("model"), "images": images,
                      "mask": await mask.read() if mask is not None else None}
            self.requests.append(record)
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            return self._answer(record["prompt"], record["n"], record["size"], None)

        @app.get("/files/{name}")
        async def files(name: str):
            data = self.files.get(name)
            if data is None:
                return Response(status_code=404)
            return Response(data, media_type="image/png")

        return app


def alpha_of(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGBA"))[..., 3]
