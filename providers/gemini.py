"""`gemini` (Gemini image models, generateContent) and `imagen` (Imagen, :predict) on the
Gemini API (https://generativelanguage.googleapis.com/v1beta, header `x-goog-api-key`).

Gemini: POST /models/{model}:generateContent
`{"contents": [{"role": "user", "parts": [{"text": prompt}, {"inline_data": {"mime_type",
"data"}}...]}], "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig":
{"aspectRatio"}, "seed"?}}` → `{"candidates": [{"content": {"parts": [{"text"} |
{"inlineData": {"mimeType", "data"}}]}, "finishReason"}], "promptFeedback": {"blockReason"}?}`.
One image per call: n images are n calls (at most `max_parallel` at once). Input images make
it an edit (instructions in the prompt; no mask).

Imagen: POST /models/{model}:predict `{"instances": [{"prompt"}], "parameters":
{"sampleCount", "aspectRatio"?, "personGeneration"?}}` → `{"predictions":
[{"bytesBase64Encoded", "mimeType"} | {"raiFilteredReason"}]}`.

Errors (both): `{"error": {"code", "message", "status", "details"}}`; an invalid key is a 400
with reason API_KEY_INVALID (mapped to auth_error, not to the client's bad request).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

import httpx

from providers import _http
from providers.base import (
    Capabilities,
    Provider,
    ProviderError,
    ProviderImage,
    ProviderRequest,
    encode_png,
    nearest_ratio,
    rgb,
)
from providers.config import GeminiSettings, ImagenSettings

GEMINI_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
IMAGEN_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
BLOCK_REASONS = {"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII",
                 "OTHER_SAFETY", "IMAGE_PROHIBITED_CONTENT"}


class _GoogleProvider(Provider):
    def __init__(self, name: str, settings: GeminiSettings | ImagenSettings, *,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(name, settings)
        key = settings.api_key.get_secret_value()
        self.http = _http.client(self, headers={"x-goog-api-key": key}, transport=transport)

    async def close(self) -> None:
        await self.http.aclose()

    async def _post(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        response = await _http.post_json(self, self.http, path, body, what=what)
        payload = _http.body_of(response)
        if response.status_code >= 400:
            raise self._error(response, payload, what)
        if not isinstance(payload, dict):
            raise self.error(f"{what} returned no JSON object", outcome="bad_output")
        return payload

    def _error(self, response: httpx.Response, payload: Any, what: str) -> ProviderError:
        err = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(err, dict):
            return _http.status_error(self, response, f"{what} failed")
        message = str(err.get("message") or what)[:500]
        status = err.get("status")
        reasons = {d.get("reason") for d in err.get("details") or [] if isinstance(d, dict)}
        if "API_KEY_INVALID" in reasons or response.status_code in (401, 403) \
                or "api key" in message.lower():
            return self.error(f"{what}: API key refused (HTTP {response.status_code})",
                              outcome="auth_error", upstream_status=response.status_code)
        if response.status_code == 400 and ("safety" in message.lower()
                                             or "blocked" in message.lower()):
            return self.error(message, outcome="content_policy",
                              upstream_status=response.status_code)
        return _http.status_error(self, response, message,
                                  code=str(status).lower() if status else None)

    def _decode_b64(self, data: str, mime: str | None, **meta: Any) -> ProviderImage:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise self.error("returned image data that is not base64",
                             outcome="bad_output") from None
        return self.decode(raw, declared_type=mime, **meta)


class GeminiProvider(_GoogleProvider):
    kind = "gemini"
    settings_cls = GeminiSettings
    settings: GeminiSettings
    default_capabilities = Capabilities(
        text2img=True, img2img=True, inpaint=False, max_n=10, max_input_images=3,
        aspect_ratios=GEMINI_RATIOS, seed=True, output_formats=("png",))

    def body(self, request: ProviderRequest, seed: int | None) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": request.prompt}]
        for image in request.images:
            parts.append({"inline_data": {
                "mime_type": "image/png",
                "data": base64.b64encode(encode_png(rgb(image))).decode()}})
        config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
        if request.size:
            ratio = nearest_ratio(request.width, request.height, GEMINI_RATIOS)
            if ratio:
                config["imageConfig"] = {"aspectRatio": ratio}
        if seed is not None:
            config["seed"] = seed
        return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}

    async def generate(self, request: ProviderRequest) -> list[ProviderImage]:
        """Text to image, and (the request carrying images) edits: see `Provider.edit`."""
        model = self.model_for(request)
        gate = asyncio.Semaphore(self.settings.max_parallel)

        async def one(i: int) -> list[ProviderImage]:
            seed = None if request.seed is None else request.seed + i
            async with gate:
                payload = await self._post(f"/models/{model}:generateContent",
                                           self.body(request, seed), "generateContent")
            return self._images(payload, seed=seed, model=model)

        tasks = [asyncio.ensure_future(one(i)) for i in range(request.n)]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            # one call failed (or we were cancelled): stop the others, they are paid for
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [img for batch in results for img in batch]

    def _images(self, payload: dict[str, Any], **meta: Any) -> list[ProviderImage]:
        feedback = payload.get("promptFeedback") or {}
        if feedback.get("blockReason"):
            raise self.error(f"prompt blocked ({feedback['blockReason']})",
                             outcome="content_policy")
        images: list[ProviderImage] = []
        finish = set()
        for candidate in payload.get("candidates") or []:
            finish.add(candidate.get("finishReason"))
            for part in ((candidate.get("content") or {}).get("parts") or []):
                inline = part.get("inlineData") or part.get("inline_data")
                if isinstance(inline, dict) and inline.get("data"):
                    mime = inline.get("mimeType") or inline.get("mime_type")
                    images.append(self._decode_b64(inline["data"], mime, **meta))
        if not images and finish & BLOCK_REASONS:
            raise self.error(f"image blocked ({', '.join(sorted(finish & BLOCK_REASONS))})",
                             outcome="content_policy")
        return images


class ImagenProvider(_GoogleProvider):
    kind = "imagen"
    settings_cls = ImagenSettings
    settings: ImagenSettings
    default_capabilities = Capabilities(
        text2img=True, img2img=False, inpaint=False, max_n=4, max_input_images=0,
        aspect_ratios=IMAGEN_RATIOS, output_formats=("png", "jpeg"))

    def body(self, request: ProviderRequest) -> dict[str, Any]:
        parameters: dict[str, Any] = {"sampleCount": request.n}
        if request.size:
            ratio = nearest_ratio(request.width, request.height, IMAGEN_RATIOS)
            if ratio:
                parameters["aspectRatio"] = ratio
        if self.settings.person_generation:
            parameters["personGeneration"] = self.settings.person_generation
        return {"instances": [{"prompt": request.prompt}], "parameters": parameters}

    async def generate(self, request: ProviderRequest) -> list[ProviderImage]:
        model = self.model_for(request)
        payload = await self._post(f"/models/{model}:predict", self.body(request), "predict")
        images, filtered = [], []
        for prediction in payload.get("predictions") or []:
            if not isinstance(prediction, dict):
                continue
            if prediction.get("bytesBase64Encoded"):
                images.append(self._decode_b64(prediction["bytesBase64Encoded"],
                                               prediction.get("mimeType"), model=model))
            elif prediction.get("raiFilteredReason"):
                filtered.append(str(prediction["raiFilteredReason"])[:200])
        if not images and filtered:
            raise self.error(f"all images filtered: {filtered[0]}", outcome="content_policy")
        return images
