"""`runware`: Runware's task API over HTTP.

Wire format: POST {base} (https://api.runware.ai/v1), `Authorization: Bearer <key>`, a JSON
array of tasks; ours is one `imageInference` task with a fresh `taskUUID`:
`{taskType, taskUUID, positivePrompt, negativePrompt?, model, width, height, numberResults,
outputType: "base64Data", outputFormat: "PNG"|"JPG"|"WEBP", steps?, CFGScale?, seed?,
seedImage? (data URI), maskImage? (data URI, white = repaint), strength?}`.
Answer `{"data": [{taskType, taskUUID, imageUUID, imageBase64Data | imageURL |
imageDataURI, seed, NSFWContent?, cost?}]}`, matched by our taskUUID; errors as
`{"data": [], "errors": [{code, message, parameter, taskUUID, ...}]}` (with a 4xx/5xx, or
beside results).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

import httpx

from providers import _http
from providers.base import (
    OUTPUT_FORMATS,
    Capabilities,
    Provider,
    ProviderError,
    ProviderImage,
    ProviderRequest,
    encode_png,
    rgb,
)
from providers.config import RunwareSettings

FORMATS = {"png": "PNG", "jpeg": "JPG", "webp": "WEBP"}
AUTH_CODES = {"invalidApiKey", "missingApiKey", "insufficientCredits", "unauthorized",
              "accountSuspended"}


def data_uri(array) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(array)).decode()


class RunwareProvider(Provider):
    kind = "runware"
    settings_cls = RunwareSettings
    settings: RunwareSettings
    default_capabilities = Capabilities(
        text2img=True, img2img=True, inpaint=True, max_n=20, max_input_images=1,
        min_side=128, max_side=2048, multiple=64, seed=True, negative_prompt=True, steps=True,
        guidance_scale=True, output_formats=OUTPUT_FORMATS)

    def __init__(self, name: str, settings: RunwareSettings, *,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(name, settings)
        key = settings.api_key.get_secret_value()
        self.http = _http.client(self, headers={"Authorization": f"Bearer {key}"},
                                 transport=transport)
        self._downloads = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
            transport=transport, follow_redirects=False)

    def task(self, request: ProviderRequest) -> dict[str, Any]:
        width, height = request.size or self.settings.default_size
        task: dict[str, Any] = {
            "taskType": "imageInference", "taskUUID": str(uuid.uuid4()),
            "positivePrompt": request.prompt, "model": self.model_for(request),
            "width": width, "height": height, "numberResults": request.n,
            "outputType": "base64Data", "outputFormat": FORMATS[request.output_format],
        }
        if request.negative_prompt:
            task["negativePrompt"] = request.negative_prompt
        if request.seed is not None:
            task["seed"] = request.seed
        if request.steps:
            task["steps"] = request.steps
        if request.guidance_scale is not None:
            task["CFGScale"] = request.guidance_scale
        if request.images:
            task["seedImage"] = data_uri(rgb(request.images[0]))
            task["strength"] = request.strength if request.strength is not None else 0.75
        if request.mask is not None:
            mask = request.mask[..., 0] if request.mask.ndim == 3 else request.mask
            task["maskImage"] = data_uri(mask)
        return task

    async def generate(self, request: ProviderRequest) -> list[ProviderImage]:
        """Text to image, and (the request carrying images) edits: see `Provider.edit`."""
        task = self.task(request)
        response = await _http.post_json(self, self.http, self.settings.base_url, [task],
                                         what="imageInference")
        body = _http.body_of(response)
        errors = body.get("errors") if isinstance(body, dict) else None
        mine = [e for e in errors or [] if isinstance(e, dict)
                and e.get("taskUUID") in (None, task["taskUUID"])]
        if response.status_code >= 400 or mine:
            raise self._error(response, mine)
        items = [d for d in (body.get("data") or []) if isinstance(d, dict)
                 and d.get("taskUUID") == task["taskUUID"]
                 and d.get("taskType", "imageInference") == "imageInference"]
        declared = "image/" + request.output_format
        images = []
        for item in items:
            meta = {"seed": item.get("seed"), "model": task["model"]}
            if item.get("imageBase64Data"):
                images.append(self.decode(self._b64(item["imageBase64Data"]),
                                          declared_type=declared, **meta))
            elif item.get("imageDataURI"):
                head, _, data = str(item["imageDataURI"]).partition(",")
                images.append(self.decode(self._b64(data),
                                          declared_type=head[5:].split(";")[0] or None, **meta))
            elif item.get("imageURL"):
                images.append(await _http.download(self, self._downloads, item["imageURL"],
                                                   **meta))
        return images

    def _b64(self, value: str) -> bytes:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise self.error("returned image data that is not base64",
                             outcome="bad_output") from None

    def _error(self, response: httpx.Response, errors: list[dict]) -> ProviderError:
        """Runware's errors array → one ProviderError: by code where it says more than the
        status (auth/credits, timeouts, invalid parameters, content moderation)."""
        if not errors:
            return _http.status_error(self, response, "imageInference failed")
        err = errors[0]
        code = str(err.get("code") or "")
        message = str(err.get("message") or code or "error")[:500]
        param = err.get("parameter")
        status = response.status_code if response.status_code >= 400 else None
        lowered = code.lower()
        if code in AUTH_CODES:
            return self.error(f"{code} (key or credits)", outcome="auth_error", code=code,
                              upstream_status=status)
        if "nsfw" in lowered or "moderation" in lowered or "safety" in lowered \
                or "content" in lowered and "policy" in lowered:
            return self.error(message, outcome="content_policy", code=code, param=param,
                              upstream_status=status)
        if "timeout" in lowered:
            return self.error(message, outcome="timeout", code=code, upstream_status=status)
        if status and status != 400:
            return _http.status_error(self, response, message, code=code, param=param)
        if lowered.startswith(("invalid", "missing", "unsupported")) or status == 400:
            return self.error(message, outcome="bad_request", code=code, param=param,
                              upstream_status=status)
        return self.error(message, outcome="server_error", code=code, upstream_status=status)

    async def close(self) -> None:
        await self.http.aclose()
        await self._downloads.aclose()
