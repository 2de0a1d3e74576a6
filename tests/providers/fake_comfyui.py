"""A fake ComfyUI server speaking ComfyUI's wire format (server.py): POST /prompt (API-format
graph, validated like ComfyUI does: node classes, links, checkpoint names), GET /ws?clientId=
(status, execution_start, executing per node, progress per step, a binary preview frame,
executed, executing node=null / execution_error), GET /history/{id}, GET /view,
POST /upload/image. It "runs" the submitted graph: it walks the graph back from SaveImage to
find the sampler, the prompts, the latent source (EmptyLatentImage, or LoadImage → ImageScale
→ VAEEncode → RepeatLatentBatch) and calls a stand-in `runner(params, on_step)` with them:
a deterministic pattern generator by default, or our tiny diffusion model.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from tests.providers.servers import decode, pattern, png_bytes

NODE_CLASSES = {"KSampler", "CheckpointLoaderSimple", "EmptyLatentImage", "CLIPTextEncode",
                "VAEDecode", "SaveImage", "LoadImage", "ImageScale", "VAEEncode",
                "RepeatLatentBatch"}


@dataclass
class Params:
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    cfg: float
    denoise: float
    width: int
    height: int
    batch: int
    checkpoint: str
    image: np.ndarray | None = None


def pattern_runner(params: Params, on_step: Callable[[int, int], None]) -> list[np.ndarray]:
    for step in range(1, params.steps + 1):
        on_step(step, params.steps)
    out = []
    for i in range(params.batch):
        img = pattern(params.seed + i, params.width, params.height, params.prompt)
        if params.image is not None:  # img2img: keep (1 - denoise) of the input
            src = np.asarray(params.image, np.float32)
            img = ((1 - params.denoise) * src + params.denoise * img).astype(np.uint8)
        out.append(img)
    return out


def tiny_model_runner(model) -> Callable[[Params, Callable[[int, int], None]], list]:
    """Run the graph's parameters on our tiny diffusion model (models/diffusion.py)."""
    from models.diffusion import GenerationRequest

    lock = threading.Lock()  # one pipeline call at a time (scheduler state is per pipeline)

    def run(params: Params, on_step) -> list[np.ndarray]:
        extra: dict[str, Any] = {}
        if params.image is not None:
            extra = dict(mode="img2img", image=params.image[..., :3],
                         strength=max(params.denoise, 0.01))
        req = GenerationRequest(prompt=params.prompt, negative_prompt=params.negative_prompt,
                                n=params.batch, width=params.width, height=params.height,
                                steps=params.steps, guidance_scale=params.cfg,
                                seed=params.seed, **extra)
        with lock:
            [result] = model.generate([req], on_step=on_step)
        return result.images

    return run


@dataclass
class FakeComfyUI:
    runner: Callable[[Params, Callable[[int, int], None]], list[np.ndarray]] = pattern_runner
    checkpoints: tuple[str, ...] = ("v1-5-pruned-emaonly.safetensors", "tiny-sd")
    api_key: str | None = None
    fail_execution: bool = False
    websocket_enabled: bool = True
    prompts: list[dict[str, Any]] = field(default_factory=list)
    messages_sent: list[dict[str, Any]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    prompt_ids: list[str] = field(default_factory=list)
    interrupts: list[str | None] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    on_interrupt: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.sockets: dict[str, WebSocket] = {}
        self.app = self._build()
        self._counter = 0

    # -- graph validation and execution -----------------------------------------------------
    def validate(self, graph: dict[str, Any]) -> dict[str, Any]:
        """node_errors in ComfyUI's shape (empty when the graph is valid)."""
        errors: dict[str, Any] = {}
        for node_id, node in graph.items():
            problems = []
            cls = node.get("class_type")
            if cls not in NODE_CLASSES:
                problems.append({"type": "invalid_node", "message": f"unknown node {cls}"})
            for name, value in (node.get("inputs") or {}).items():
                if isinstance(value, list) and len(value) == 2 and value[0] not in graph:
                    problems.append({"type": "missing_link",
                                     "message": f"{name} links to missing node {value[0]}"})
            if cls == "CheckpointLoaderSimple" and \
                    node["inputs"].get("ckpt_name") not in self.checkpoints:
                problems.append({"type": "value_not_in_list",
                                 "message": "Value not in list",
                                 "details": f"ckpt_name: '{node['inputs'].get('ckpt_name')}'"
                                            f" not in {list(self.checkpoints)}"})
            if cls == "LoadImage" and node["inputs"].get("image") not in self.uploads:
                problems.append({"type": "custom_validation_failed",
                                 "message": "Invalid image file",
                                 "details": f"image: {node['inputs'].get('image')}"})
            if problems:
                errors[node_id] = {"errors": problems, "dependent_outputs": [],
                                   "class_type": cls}
        if not any(n.get("class_type") == "SaveImage" for n in graph.values()):
            errors["_"] = {"errors": [{"type": "prompt_no_outputs",
                                       "message": "Prompt has no outputs"}]}
        return errors

    @staticmethod
    def _node(graph, link):
        return graph[link[0]]

    def params(self, graph: dict[str, Any]) -> tuple[str, Params]:
        save = next(n for n in graph.values() if n["class_type"] == "SaveImage")
        decode_node = self._node(graph, save["inputs"]["images"])
        sampler_id = decode_node["inputs"]["samples"][0]
        sampler = graph[sampler_id]["inputs"]
        model = self._node(graph, sampler["model"])["inputs"]["ckpt_name"]
        latent = self._node(graph, sampler["latent_image"])
        image = None
        if latent["class_type"] == "EmptyLatentImage":
            width, height = latent["inputs"]["width"], latent["inputs"]["height"]
            batch = latent["inputs"]["batch_size"]
        else:  # RepeatLatentBatch ← VAEEncode ← ImageScale ← LoadImage
            batch = latent["inputs"]["amount"]
            encode = self._node(graph, latent["inputs"]["samples"])
            scale = self._node(graph, encode["inputs"]["pixels"])
            width, height = scale["inputs"]["width"], scale["inputs"]["height"]
            load = self._node(graph, scale["inputs"]["image"])
            from PIL import Image

            src = decode(self.uploads[load["inputs"]["image"]])
            image = np.asarray(Image.fromarray(src).convert("RGB").resize((width, height)))
        return sampler_id, Params(
            prompt=self._node(graph, sampler["positive"])["inputs"]["text"],
            negative_prompt=self._node(graph, sampler["negative"])["inputs"]["text"],
            seed=sampler["seed"], steps=sampler["steps"], cfg=sampler["cfg"],
            denoise=sampler["denoise"], width=width, height=height, batch=batch,
            checkpoint=model, image=image)

    async def send(self, client_id: str, message: dict[str, Any] | bytes) -> None:
        ws = self.sockets.get(client_id)
        if isinstance(message, dict):
            self.messages_sent.append(message)
        if ws is None:
            return
        try:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_text(json.dumps(message))
        except Exception:  # the client went away: ComfyUI just drops the message
            self.sockets.pop(client_id, None)

    async def execute(self, prompt_id: str, graph: dict[str, Any], client_id: str) -> None:
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue = asyncio.Queue()
        sampler_id, params = self.params(graph)
        await self.send(client_id, {"type": "execution_start",
                                    "data": {"prompt_id": prompt_id}})
        for node_id in graph:
            if node_id != sampler_id:
                await self.send(client_id, {"type": "executing",
                                            "data": {"node": node_id, "prompt_id": prompt_id}})
        await self.send(client_id, {"type": "executing",
                                    "data": {"node": sampler_id, "prompt_id": prompt_id}})

        def on_step(step: int, total: int) -> None:
            loop.call_soon_threadsafe(steps.put_nowait, (step, total))

        if self.fail_execution:
            await self.send(client_id, {"type": "execution_error", "data": {
                "prompt_id": prompt_id, "node_id": sampler_id, "node_type": "KSampler",
                "executed": [], "exception_type": "torch.OutOfMemoryError",
                "exception_message": "CUDA out of memory", "traceback": []}})
            self.history[prompt_id] = {"prompt": [0, prompt_id, graph, {}, []], "outputs": {},
                                       "status": {"status_str": "error", "completed": False,
                                                  "messages": []}}
            return
        async def progress(step: int, total: int) -> None:
            await self.send(client_id, {"type": "progress", "data": {
                "value": step, "max": total, "prompt_id": prompt_id, "node": sampler_id}})
            if step == 1:  # a preview frame, as ComfyUI sends them (binary)
                await self.send(client_id, b"\x00\x00\x00\x01\x00\x00\x00\x02preview")

        work = asyncio.ensure_future(asyncio.to_thread(self.runner, params, on_step))
        while not work.done():
            getter = asyncio.ensure_future(steps.get())
            await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                await progress(*getter.result())
            else:
                getter.cancel()
        while not steps.empty():  # the thread's last steps were queued before it returned
            await progress(*steps.get_nowait())
        images = work.result()
        outputs = []
        for img in images:
            self._counter += 1
            name = f"photostudio_{self._counter:05d}_.png"
            self.files[name] = png_bytes(img)
            outputs.append({"filename": name, "subfolder": "", "type": "output"})
        save_id = next(k for k, n in graph.items() if n["class_type"] == "SaveImage")
        self.history[prompt_id] = {
            "prompt": [0, prompt_id, graph, {"client_id": client_id}, [save_id]],
            "outputs": {save_id: {"images": outputs}},
            "status": {"status_str": "success", "completed": True, "messages": [
                ["execution_start", {"prompt_id": prompt_id}],
                ["execution_success", {"prompt_id": prompt_id}]]},
            "meta": {save_id: {"node_id": save_id, "display_node": save_id}}}
        await self.send(client_id, {"type": "executed", "data": {
            "node": save_id, "output": {"images": outputs}, "prompt_id": prompt_id}})
        await self.send(client_id, {"type": "execution_success",
                                    "data": {"prompt_id": prompt_id}})
        await self.send(client_id, {"type": "executing",
                                    "data": {"node": None, "prompt_id": prompt_id}})

    # -- the app -------------------------------------------------------------------------------
    def _authorized(self, headers) -> bool:
        return self.api_key is None or headers.get("authorization") == f"Bearer {self.api_key}"

    def _build(self) -> FastAPI:
        app = FastAPI()
        tasks: set[asyncio.Task] = set()

        @app.post("/prompt")
        async def prompt(request: Request):
            if not self._authorized(request.headers):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            body = await request.json()
            graph = body.get("prompt")
            self.prompts.append(graph)
            errors = self.validate(graph)
            if errors:
                return JSONResponse({"error": {"type": "prompt_outputs_failed_validation",
                                               "message": "Prompt outputs failed validation",
                                               "details": "", "extra_info": {}},
                                     "node_errors": errors}, status_code=400)
            prompt_id = str(uuid.uuid4())
            self.prompt_ids.append(prompt_id)
            task = asyncio.create_task(self.execute(prompt_id, graph, body.get("client_id")))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return {"prompt_id": prompt_id, "number": len(self.prompts), "node_errors": {}}

        @app.post("/interrupt")
        async def interrupt(request: Request):
            body = await request.json() if await request.body() else {}
            self.interrupts.append(body.get("prompt_id"))
            if self.on_interrupt is not None:
                self.on_interrupt()
            return Response(status_code=200)

        @app.post("/queue")
        async def queue(request: Request):
            body = await request.json()
            self.deleted.extend(body.get("delete") or [])
            return Response(status_code=200)

        @app.get("/history/{prompt_id}")
        async def history(prompt_id: str):
            entry = self.history.get(prompt_id)
            return {prompt_id: entry} if entry is not None else {}

        @app.get("/view")
        async def view(filename: str, subfolder: str = "", type: str = "output"):
            data = self.files.get(filename)
            if data is None or type != "output":
                return Response(status_code=404)
            return Response(data, media_type="image/png")

        @app.post("/upload/image")
        async def upload(request: Request):
            form = await request.form()
            file = form["image"]
            data = await file.read()
            self.uploads[file.filename] = data
            return {"name": file.filename, "subfolder": "", "type": form.get("type", "input")}

        @app.websocket("/ws")
        async def ws(websocket: WebSocket):
            if not self.websocket_enabled or not self._authorized(websocket.headers):
                await websocket.close(code=1008)
                return
            client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
            await websocket.accept()
            self.sockets[client_id] = websocket
            await websocket.send_text(json.dumps({"type": "status", "data": {
                "status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}}))
            try:
                while True:
                    await websocket.receive_text()
            except WebSocketDisconnect:
                self.sockets.pop(client_id, None)

        return app


def as_png_array(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))
