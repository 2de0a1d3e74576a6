"""`comfyui`: a ComfyUI server, with API-format workflow templates.

Wire format (ComfyUI's server.py):
- `GET /ws?clientId=<id>` (opened first, so no message is missed): JSON messages
  `{"type", "data"}`: `progress` {value, max, prompt_id}, `executing` {node, prompt_id}
  (`node: null` = that prompt is done), `execution_success`, `execution_error` {prompt_id,
  node_id, node_type, exception_type, exception_message}, `execution_interrupted`; binary
  frames are previews (ignored).
- `POST /prompt` `{"prompt": <graph>, "client_id": <id>}` → `{"prompt_id", "number",
  "node_errors"}`; a graph that fails validation → 400 `{"error": {type, message, details},
  "node_errors": {...}}`.
- `GET /history/{prompt_id}` → `{prompt_id: {"outputs": {node_id: {"images": [{filename,
  subfolder, type}]}}, "status": {"status_str", "completed", "messages"}}}`.
- `GET /view?filename=&subfolder=&type=output` → the image bytes.
- `POST /upload/image` (multipart `image`, `type=input`, `overwrite`) → `{name, subfolder,
  type}` for LoadImage.
- On a timeout or a caller that left: `POST /queue {"delete": [id]}` and
  `POST /interrupt {"prompt_id": id}` (best effort; only that prompt is stopped).

Templates (providers/workflows/): SD text2img and img2img, parameters substituted by node id
through `bindings` (settings.workflows). Without a websocket (use_websocket false, or it
fails to open) the provider polls /history.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import logging
import secrets
import uuid
from typing import Any

import httpx

from providers import _http
from providers.base import (
    Capabilities,
    Provider,
    ProviderImage,
    ProviderRequest,
    encode_png,
    logger,
    rgb,
    scrub,
)
from providers.config import ComfyUISettings

MAX_SEED = 2**32 - 1
PARAMS = {"prompt", "negative_prompt", "width", "height", "n", "seed", "steps",
          "guidance_scale", "checkpoint", "sampler_name", "scheduler", "image", "strength",
          "mask"}


class ComfyUIProvider(Provider):
    kind = "comfyui"
    settings_cls = ComfyUISettings
    settings: ComfyUISettings

    def __init__(self, name: str, settings: ComfyUISettings, *,
                 transport: httpx.AsyncBaseTransport | None = None):
        self._graphs = {mode: self._check_workflow(mode, wf.load(), wf.bindings)
                        for mode, wf in settings.workflows.items()}
        super().__init__(name, settings)
        headers = {}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._headers = headers
        self.http = _http.client(self, headers=headers, transport=transport)
        self._background: set[asyncio.Task] = set()

    @staticmethod
    def _check_workflow(mode: str, graph: dict[str, Any],
                        bindings: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
        unknown = sorted(set(bindings) - PARAMS)
        if unknown:
            raise ValueError(f"comfyui workflow {mode}: unknown parameters {unknown}; "
                             f"known: {sorted(PARAMS)}")
        for param, targets in bindings.items():
            for node, _ in targets:
                if node not in graph or "inputs" not in graph[node]:
                    raise ValueError(f"comfyui workflow {mode}: {param} is bound to node "
                                     f"{node!r}, which the graph does not have")
        if mode != "text2img" and "image" not in bindings:
            raise ValueError(f"comfyui workflow {mode} must bind 'image' (a LoadImage node)")
        if mode == "inpaint" and "mask" not in bindings:
            raise ValueError("comfyui workflow inpaint must bind 'mask' (a LoadImage node)")
        return graph

    def _capabilities(self) -> Capabilities:
        modes = set(self.settings.workflows)
        return Capabilities(text2img="text2img" in modes, img2img="img2img" in modes,
                            inpaint="inpaint" in modes, max_n=8, max_input_images=1,
                            min_side=64, max_side=2048, multiple=8, seed=True,
                            negative_prompt=True, steps=True, guidance_scale=True,
                            output_formats=("png",))

    # -- public interface --------------------------------------------------------------------
    async def generate(self, request: ProviderRequest) -> list[ProviderImage]:
        """Text to image, and (the request carrying images) edits: see `Provider.edit`."""
        return await self._run(request)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.http.aclose()

    # -- one prompt ----------------------------------------------------------------------------
    async def _run(self, request: ProviderRequest) -> list[ProviderImage]:
        mode = request.mode
        if mode not in self._graphs:
            raise self.error(f"no {mode} workflow configured", outcome="unsupported")
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED)
        if request.size:
            width, height = request.size
        elif request.images:
            h, w = request.images[0].shape[:2]
            width, height = max(64, w // 8 * 8), max(64, h // 8 * 8)
        else:
            width, height = self.settings.default_size
        values: dict[str, Any] = {
            "prompt": request.prompt, "negative_prompt": request.negative_prompt or "",
            "width": width, "height": height, "n": request.n, "seed": seed,
            "steps": request.steps or self.settings.default_steps,
            "guidance_scale": self.settings.default_guidance_scale
            if request.guidance_scale is None else request.guidance_scale,
            "checkpoint": self.model_for(request), "sampler_name": self.settings.sampler_name,
            "scheduler": self.settings.scheduler,
        }
        if mode != "text2img":
            values["image"] = await self._upload(rgb(request.images[0]))
            values["strength"] = request.strength if request.strength is not None else 0.75
        if mode == "inpaint":
            values["mask"] = await self._upload(_alpha_mask(request))
        graph = copy.deepcopy(self._graphs[mode])
        bindings = self.settings.workflows[mode].bindings
        for param, value in values.items():
            for node, field in bindings.get(param, []):
                graph[node]["inputs"][field] = value

        client_id = uuid.uuid4().hex
        ws = await self._connect(client_id) if self.settings.use_websocket else None
        prompt_id = None
        try:
            prompt_id = await self._submit(graph, client_id)
            done = await self._follow(ws, prompt_id, request) if ws is not None else False
            if ws is not None:
                await ws.close()
                ws = None
            entry = await self._history(prompt_id, wait=not done)
        except asyncio.CancelledError:
            # timed out or the caller left: don't leave the GPU box working for nobody
            if prompt_id is not None:
                task = asyncio.ensure_future(self._cancel(prompt_id))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            raise
        finally:
            if ws is not None:
                await ws.close()
        return await self._collect(entry, seed, values["checkpoint"])

    async def _cancel(self, prompt_id: str) -> None:
        """Best effort: drop the prompt from the queue if it is still waiting, and interrupt
        it if it is running (`/interrupt` with a prompt_id only stops that prompt)."""
        for path, body in (("/queue", {"delete": [prompt_id]}),
                           ("/interrupt", {"prompt_id": prompt_id})):
            try:
                await self.http.post(path, json=body, timeout=2.0)
            except httpx.HTTPError as exc:
                logger.info("comfyui %s: could not cancel %s (%s)", self.name, prompt_id,
                            type(exc).__name__)
                return

    async def _upload(self, array) -> str:
        files = {"image": (f"photostudio-{uuid.uuid4().hex}.png", encode_png(array),
                           "image/png")}
        try:
            response = await self.http.post("/upload/image", files=files,
                                             data={"type": "input", "overwrite": "true"})
        except httpx.HTTPError as exc:
            raise _http.transport_error(self, exc, "image upload") from None
        if response.status_code >= 400:
            raise _http.status_error(self, response, "image upload failed")
        body = _http.body_of(response) or {}
        if not body.get("name"):
            raise self.error("image upload returned no name", outcome="bad_output")
        sub = body.get("subfolder") or ""
        return f"{sub}/{body['name']}" if sub else body["name"]

    async def _connect(self, client_id: str):
        """The progress websocket, or None (then /history is polled)."""
        from websockets.asyncio.client import connect

        base = self.settings.base_url
        url = ("wss://" + base[8:] if base.startswith("https://") else "ws://" + base[7:])
        try:
            return await connect(f"{url}/ws?clientId={client_id}",
                                 additional_headers=self._headers or None,
                                 open_timeout=self.settings.connect_timeout_s,
                                 max_size=16 * 1024 * 1024, proxy=None, ping_interval=None,
                                 close_timeout=1.0,
                                 logger=_ScrubbingLogger(_WS_LOGGER, self.secrets()))
        except Exception as exc:  # refused, bad status, timeout: fall back to polling
            logger.warning("comfyui %s: websocket did not open (%s); polling /history",
                           self.name, type(exc).__name__)
            return None

    async def _submit(self, graph: dict[str, Any], client_id: str) -> str:
        response = await _http.post_json(self, self.http, "/prompt",
                                         {"prompt": graph, "client_id": client_id},
                                         what="prompt submission")
        body = _http.body_of(response)
        if response.status_code >= 400:
            message = "prompt submission failed"
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                err = body["error"]
                message = f"rejected the workflow: {err.get('message') or err.get('type')}"
                nodes = body.get("node_errors") or {}
                if isinstance(nodes, dict) and nodes:
                    details = []
                    for node, info in list(nodes.items())[:3]:
                        errs = info.get("errors", []) if isinstance(info, dict) else []
                        text = "; ".join(str(e.get("message", e)) for e in errs[:2]
                                         if isinstance(e, dict))
                        details.append(f"node {node}: {text}" if text else f"node {node}")
                    message += " (" + ", ".join(details) + ")"
            if response.status_code == 400:
                # our graph against that server's nodes/models: its configuration, not the
                # client's request (the prompt text cannot make a graph invalid)
                raise self.error(message, outcome="server_error",
                                 upstream_status=response.status_code)
            raise _http.status_error(self, response, message)
        if not isinstance(body, dict) or not body.get("prompt_id"):
            raise self.error("prompt submission returned no prompt_id", outcome="bad_output")
        return str(body["prompt_id"])

    async def _follow(self, ws, prompt_id: str, request: ProviderRequest) -> bool:
        """Read the websocket until our prompt is done: True; False when the socket closed
        first (then /history is polled)."""
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    continue  # preview frames
                try:
                    msg = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                data = msg.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                kind = msg.get("type")
                if kind == "progress" and data.get("prompt_id") == prompt_id:
                    value, total = data.get("value", 0), data.get("max") or 1
                    await _notify(request, value / total, f"step {value}/{total}")
                elif kind == "executing" and data.get("prompt_id") == prompt_id \
                        and data.get("node") is None:
                    return True
                elif kind == "execution_success" and data.get("prompt_id") == prompt_id:
                    return True
                elif kind == "execution_error" and data.get("prompt_id") == prompt_id:
                    raise self.error(
                        f"execution error in node {data.get('node_id')} "
                        f"({data.get('node_type')}): {data.get('exception_type')}: "
                        f"{str(data.get('exception_message', ''))[:300]}",
                        outcome="server_error")
                elif kind == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                    raise self.error("execution interrupted", outcome="server_error")
        except ConnectionClosed:
            pass
        return False

    async def _history(self, prompt_id: str, *, wait: bool) -> dict[str, Any]:
        """The prompt's history entry; with `wait`, polled until it is there (the router's
        timeout bounds the wait)."""
        while True:
            body = await _http.get_json(self, self.http, f"/history/{prompt_id}",
                                        what="history")
            entry = body.get(prompt_id) if isinstance(body, dict) else None
            if entry is not None:
                status = entry.get("status") or {}
                if not wait or status.get("completed") or status.get("status_str") == "error" \
                        or entry.get("outputs"):
                    return entry
            elif not wait:
                raise self.error("finished but has no history entry", outcome="bad_output")
            await asyncio.sleep(self.settings.poll_interval_s)

    async def _collect(self, entry: dict[str, Any], seed: int,
                       model: str | None) -> list[ProviderImage]:
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            detail = ""
            for message in status.get("messages") or []:
                if isinstance(message, list) and len(message) == 2 \
                        and message[0] == "execution_error" and isinstance(message[1], dict):
                    info = message[1]
                    detail = f": {info.get('exception_type')}: " \
                             f"{str(info.get('exception_message', ''))[:300]}"
            raise self.error(f"execution failed{detail}", outcome="server_error")
        files = []
        for output in (entry.get("outputs") or {}).values():
            for image in (output or {}).get("images") or []:
                if isinstance(image, dict) and image.get("type", "output") == "output":
                    files.append(image)
        images = []
        for image in files:
            params = {"filename": image.get("filename", ""),
                      "subfolder": image.get("subfolder", ""), "type": "output"}
            images.append(await _http.download(self, self.http, "/view", params=params,
                                               check_url=False, seed=seed,
                                               model=model))
        return images


_WS_LOGGER = logging.getLogger("photostudio.providers.websocket")


class _ScrubbingLogger(logging.LoggerAdapter):
    """websockets logs the handshake's headers at DEBUG (our Bearer token among them): its
    records go through this adapter, which replaces the secrets."""

    def __init__(self, logger: logging.Logger, secrets: list[str]):
        super().__init__(logger, {})
        self.secrets = secrets

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            args = tuple(scrub(a, self.secrets) if isinstance(a, str) else a for a in args)
            self.logger.log(level, scrub(str(msg), self.secrets), *args, **kwargs)


async def _notify(request: ProviderRequest, fraction: float, message: str) -> None:
    if request.on_progress is None:
        return
    result = request.on_progress(max(0.0, min(1.0, fraction)), message)
    if inspect.isawaitable(result):
        await result


def _alpha_mask(request: ProviderRequest):
    """The input image with the mask as alpha: ComfyUI's LoadImage gives MASK = 1 - alpha,
    so repainted pixels (our 255) are transparent."""
    import numpy as np

    image = rgb(request.images[0])
    mask = request.mask[..., 0] if request.mask.ndim == 3 else request.mask
    if mask.shape != image.shape[:2]:
        from PIL import Image

        mask = np.asarray(Image.fromarray(mask).resize((image.shape[1], image.shape[0])))
    return np.dstack([image, 255 - mask]).astype(np.uint8)
