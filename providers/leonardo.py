"""`leonardo`: Leonardo.ai's REST API v1.

Wire format (https://cloud.leonardo.ai/api/rest/v1, `Authorization: Bearer <key>`):
- POST /generations `{prompt, modelId, width, height, num_images, negative_prompt?, seed?,
  guidance_scale?, num_inference_steps?, init_image_id?, init_strength?}` →
  `{"sdGenerationJob": {"generationId", "apiCreditCost"}}`.
- GET /generations/{id} → `{"generations_by_pk": {"status": "PENDING"|"COMPLETE"|"FAILED",
  "generated_images": [{"id", "url", "nsfw"}], "seed", ...}}`, polled until COMPLETE; the
  images are then downloaded from their (https) URLs, without our key.
- img2img: POST /init-image `{"extension": "png"}` → `{"uploadInitImage": {"id", "url",
  "fields": "<JSON string>"}}`, then a multipart POST of `fields` + `file` to that presigned
  URL; the id becomes `init_image_id` (init_strength = 1 - strength: Leonardo's is how much
  of the init image to keep).
- Errors: `{"error": "<message>", "path": "$", "code": "<code>"}` with a 4xx/5xx.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

import httpx

from providers import _http
from providers.base import (
    Capabilities,
    Provider,
    ProviderImage,
    ProviderRequest,
    encode_png,
    rgb,
)
from providers.config import LeonardoSettings


class LeonardoProvider(Provider):
    kind = "leonardo"
    settings_cls = LeonardoSettings
    settings: LeonardoSettings
    default_capabilities = Capabilities(
        text2img=True, img2img=True, inpaint=False, max_n=8, max_input_images=1, min_side=32,
        max_side=1536, multiple=8, seed=True, negative_prompt=True, steps=True,
        guidance_scale=True, output_formats=("jpeg",))

    def __init__(self, name: str, settings: LeonardoSettings, *,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(name, settings)
        key = settings.api_key.get_secret_value()
        self.http = _http.client(self, headers={"Authorization": f"Bearer {key}",
                                                "Accept": "application/json"},
                                 transport=transport)
        # presigned uploads and CDN downloads: another host, never our key
        self._bare = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
            transport=transport, follow_redirects=False)

    async def generate(self, request: ProviderRequest) -> list[ProviderImage]:
        """Text to image, and (the request carrying images) edits: see `Provider.edit`."""
        return await self._run(request)

    async def close(self) -> None:
        await self.http.aclose()
        await self._bare.aclose()

    def payload(self, request: ProviderRequest) -> dict[str, Any]:
        width, height = request.size or self.settings.default_size
        body: dict[str, Any] = {"prompt": request.prompt, "modelId": self.model_for(request),
                                "width": width, "height": height, "num_images": request.n}
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        if request.seed is not None:
            body["seed"] = request.seed
        if request.guidance_scale is not None:
            body["guidance_scale"] = max(1, min(20, round(request.guidance_scale)))
        if request.steps:
            body["num_inference_steps"] = max(10, min(60, request.steps))
        return body

    async def _run(self, request: ProviderRequest) -> list[ProviderImage]:
        body = self.payload(request)
        if request.images:
            body["init_image_id"] = await self._upload(rgb(request.images[0]))
            strength = request.strength if request.strength is not None else 0.75
            body["init_strength"] = round(max(0.1, min(0.9, 1.0 - strength)), 2)
        response = await _http.post_json(self, self.http, "/generations", body,
                                         what="generation")
        if response.status_code >= 400:
            raise self._error(response, "generation failed")
        job = (_http.body_of(response) or {}).get("sdGenerationJob") or {}
        generation_id = job.get("generationId")
        if not generation_id:
            raise self.error("create generation returned no generationId", outcome="bad_output")
        generation = await self._poll(generation_id, request)
        seed = generation.get("seed")
        images = []
        for item in generation.get("generated_images") or []:
            if isinstance(item, dict) and item.get("url"):
                images.append(await _http.download(self, self._bare, item["url"], seed=seed,
                                                   model=body["modelId"]))
        return images

    async def _poll(self, generation_id: str, request: ProviderRequest) -> dict[str, Any]:
        polls = 0
        while True:
            body = await _http.get_json(self, self.http, f"/generations/{generation_id}",
                                        what="generation status")
            generation = body.get("generations_by_pk") if isinstance(body, dict) else None
            status = (generation or {}).get("status")
            if status == "COMPLETE":
                return generation
            if status == "FAILED":
                raise self.error(f"generation {generation_id} FAILED", outcome="server_error")
            polls += 1
            if request.on_progress is not None:
                result = request.on_progress(0.0, f"{status or 'PENDING'} (poll {polls})")
                if inspect.isawaitable(result):
                    await result
            await asyncio.sleep(self.settings.poll_interval_s)

    async def _upload(self, array) -> str:
        response = await _http.post_json(self, self.http, "/init-image", {"extension": "png"},
                                         what="init image")
        if response.status_code >= 400:
            raise self._error(response, "init image upload failed")
        upload = (_http.body_of(response) or {}).get("uploadInitImage") or {}
        try:
            fields = json.loads(upload.get("fields") or "{}")
        except json.JSONDecodeError:
            fields = None
        if not upload.get("id") or not upload.get("url") or not isinstance(fields, dict):
            raise self.error("init image answer lacks id/url/fields", outcome="bad_output")
        _http.check_download_url(self, upload["url"])
        try:
            stored = await self._bare.post(upload["url"], data=fields,
                                           files={"file": ("init.png", encode_png(array),
                                                           "image/png")})
        except httpx.HTTPError as exc:
            raise _http.transport_error(self, exc, "init image upload") from None
        if stored.status_code >= 400:
            raise _http.status_error(self, stored, "init image upload failed")
        return str(upload["id"])

    def _error(self, response: httpx.Response, what: str):
        body = _http.body_of(response)
        message = what
        code = None
        if isinstance(body, dict) and body.get("error"):
            message = str(body["error"])[:500]
            code = body.get("code")
        lowered = message.lower()
        if response.status_code in (400, 403) and ("moderation" in lowered or "nsfw" in lowered):
            return self.error(message, outcome="content_policy", code=code,
                              upstream_status=response.status_code)
        if response.status_code in (401, 403):
            return self.error(f"{what}: authentication failed", outcome="auth_error",
                              upstream_status=response.status_code)
        if response.status_code == 402 or "not enough api tokens" in lowered:
            return self.error(message, outcome="auth_error", code=code,
                              upstream_status=response.status_code)
        return _http.status_error(self, response, message, code=code)
