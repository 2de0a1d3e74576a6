"""`openai`: any OpenAI-compatible Images API with the official `openai` client and a custom
`base_url`: OpenAI (gpt-image-1, dall-e), Azure OpenAI (`azure_api_version`), or another
Photo Studio gateway (`gateway_extensions`: it also takes negative_prompt, seed, steps and
guidance_scale in the body, so those inputs are honoured instead of refused).

Wire format: POST {base}/images/generations (JSON) and POST {base}/images/edits (multipart:
`image` / `image[]`, `mask`: a PNG whose transparent pixels are repainted). Answer
`{created, data: [{b64_json | url, revised_prompt}]}`. The client's own retries are off
(`max_retries=0`): the router moves on to the next provider instead. URL results are
downloaded with our checks and without our key.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import httpx
import numpy as np

from providers import _http
from providers.base import (
    OUTPUT_FORMATS,
    Capabilities,
    Provider,
    ProviderError,
    ProviderImage,
    ProviderRequest,
    encode_png,
)
from providers.config import OpenAISettings

GPT_IMAGE_SIZES = ("1024x1024", "1536x1024", "1024x1536")
DALLE3_SIZES = ("1024x1024", "1792x1024", "1024x1792")
DALLE2_SIZES = ("256x256", "512x512", "1024x1024")
CONTENT_POLICY_CODES = {"content_policy_violation", "moderation_blocked", "content_filter"}


class OpenAIProvider(Provider):
    kind = "openai"
    settings_cls = OpenAISettings
    settings: OpenAISettings

    def __init__(self, name: str, settings: OpenAISettings, *,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(name, settings)
        self._client: Any = None
        # downloads of URL results: no base URL, no key (the URL's host is not our backend)
        self._downloads = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
            transport=transport, follow_redirects=False)

    def _capabilities(self) -> Capabilities:
        model = (self.settings.models or ["gpt-image-1"])[0]
        if self.settings.gateway_extensions:
            return Capabilities(img2img=True, inpaint=True, max_n=10, max_input_images=16,
                                transparent_background=True, seed=True, negative_prompt=True,
                                steps=True, guidance_scale=True, output_formats=OUTPUT_FORMATS)
        if model.startswith("dall-e-3"):
            return Capabilities(max_n=1, sizes=DALLE3_SIZES)
        if model.startswith("dall-e-2"):
            return Capabilities(img2img=True, inpaint=True, max_n=10, sizes=DALLE2_SIZES)
        return Capabilities(img2img=True, inpaint=True, max_n=10, max_input_images=16,
                            sizes=GPT_IMAGE_SIZES, transparent_background=True,
                            output_formats=OUTPUT_FORMATS)

    @property
    def client(self) -> Any:
        if self._client is None:
            import openai

            key = self.settings.api_key.get_secret_value() if self.settings.api_key else "none"
            common = dict(api_key=key, timeout=self.settings.timeout_s, max_retries=0)
            if self.settings.azure_api_version:
                self._client = openai.AsyncAzureOpenAI(
                    azure_endpoint=self.settings.base_url,
                    api_version=self.settings.azure_api_version, **common)
            else:
                self._client = openai.AsyncOpenAI(base_url=self.settings.base_url,
                                                  organization=self.settings.organization,
                                                  **common)
        return self._client

    def _params(self, request: ProviderRequest) -> dict[str, Any]:
        model = self.model_for(request)
        params: dict[str, Any] = {"prompt": request.prompt, "n": request.n}
        if model:
            params["model"] = model
        if request.size:
            params["size"] = f"{request.width}x{request.height}"
        gpt_image = bool(model and model.startswith("gpt-image"))
        if gpt_image or self.settings.gateway_extensions:
            if request.background != "auto":
                params["background"] = request.background
            params["output_format"] = request.output_format
        if not gpt_image:
            params["response_format"] = "b64_json"
        if self.settings.quality:
            params["quality"] = self.settings.quality
        if self.settings.gateway_extensions:
            extra = {"negative_prompt": request.negative_prompt, "seed": request.seed,
                     "steps": request.steps, "guidance_scale": request.guidance_scale}
            extra = {k: v for k, v in extra.items() if v is not None}
            if extra:
                params["extra_body"] = extra
        return params

    async def generate(self, request: ProviderRequest) -> list[ProviderImage]:
        params = self._params(request)
        try:
            response = await self.client.images.generate(**params)
        except Exception as exc:
            raise self._map(exc) from None
        return await self._images(response, params.get("model"))

    async def edit(self, request: ProviderRequest) -> list[ProviderImage]:
        params = self._params(request)
        files = [(f"image{i}.png", encode_png(img), "image/png")
                 for i, img in enumerate(request.images)]
        params["image"] = files if len(files) > 1 else files[0]
        if request.mask is not None:
            params["mask"] = ("mask.png", encode_png(_openai_mask(request.mask,
                                                                   request.images[0])),
                              "image/png")
        try:
            response = await self.client.images.edit(**params)
        except Exception as exc:
            raise self._map(exc) from None
        return await self._images(response, params.get("model"))

    async def _images(self, response: Any, model: str | None) -> list[ProviderImage]:
        out = []
        for item in getattr(response, "data", None) or []:
            meta = {"revised_prompt": getattr(item, "revised_prompt", None), "model": model}
            if getattr(item, "b64_json", None):
                try:
                    data = base64.b64decode(item.b64_json, validate=True)
                except (binascii.Error, ValueError):
                    raise self.error("returned b64_json that is not base64",
                                     outcome="bad_output") from None
                out.append(self.decode(data, **meta))
            elif getattr(item, "url", None):
                out.append(await _http.download(self, self._downloads, item.url, **meta))
        return out

    def _map(self, exc: Exception) -> ProviderError:
        """openai's exceptions → ProviderError (upstream messages scrubbed of our key; an
        auth failure's message is not repeated at all)."""
        import openai

        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, openai.APITimeoutError):
            return self.error("request timed out", outcome="timeout")
        if isinstance(exc, openai.APIConnectionError):
            return self.error(f"connection failed ({type(exc.__cause__ or exc).__name__})",
                              outcome="connection_error")
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            body = exc.body if isinstance(exc.body, dict) else {}
            err = body.get("error", body) if isinstance(body, dict) else {}
            err = err if isinstance(err, dict) else {}
            code = err.get("code") or getattr(exc, "code", None)
            message = str(err.get("message") or f"HTTP {status}")[:500]
            wait = _http.retry_after(exc.response)
            if status in (401, 403):
                return self.error(f"authentication failed (HTTP {status})",
                                  outcome="auth_error", upstream_status=status)
            if code in CONTENT_POLICY_CODES or (status == 400 and "safety" in message.lower()):
                return self.error(message, outcome="content_policy", code=code,
                                  upstream_status=status)
            if status == 429:
                return self.error(message, outcome="rate_limited", retry_after=wait,
                                  upstream_status=status)
            if status == 404:
                return self.error(message, outcome="not_found", upstream_status=status)
            if status == 408:
                return self.error(message, outcome="timeout", upstream_status=status)
            if status >= 500:
                return self.error(message, outcome="overloaded" if status == 503
                                  else "server_error", retry_after=wait, upstream_status=status)
            return self.error(message, outcome="bad_request", code=code,
                              param=err.get("param"), upstream_status=status)
        if isinstance(exc, openai.APIResponseValidationError | openai.APIError):
            return self.error(f"unexpected answer ({type(exc).__name__})", outcome="bad_output")
        raise exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        await self._downloads.aclose()


def _openai_mask(mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Our mask (255 = repaint) → OpenAI's: an RGBA PNG the image's size whose transparent
    pixels are the area to edit."""
    mask = mask[..., 0] if mask.ndim == 3 else mask
    if mask.shape != image.shape[:2]:
        from PIL import Image

        mask = np.asarray(Image.fromarray(mask).resize((image.shape[1], image.shape[0])))
    out = np.zeros((*mask.shape, 4), np.uint8)
    out[..., 3] = 255 - mask
    return out
