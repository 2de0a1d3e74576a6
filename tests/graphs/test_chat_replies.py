"""What a chat reply says, without Ray: the real ChatService, JobRunner (SQLite + local assets),
router rules and prompt refinement, with fake model deployments. Follow-ups are edits of the
last image and offer the other reading; every step says whether its model is tiny or a
fallback; French messages get French replies (issue #23, items 4-6)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from graphs.chat import ChatService
from graphs.generation import GenerationService
from graphs.jobs import JobRunner
from graphs.tools import Limits, ToolService
from models.diffusion import GenerationResult
from storage.assets import LocalAssetStore
from storage.records import RecordStore

FALLBACK_REASON = "no weights at /models/sdxl: using the tiny model (local profile)"
GENERATOR_INFO = {"name": "tiny-sd", "tiny": True, "fallback": True,
                  "fallback_reason": FALLBACK_REASON,
                  "limits": {"min_side": 64, "max_side": 1024, "default_width": 64,
                             "default_height": 64, "multiple": 8, "max_steps": 50}}
MATTING_INFO = {"name": "u2net-tiny", "tiny": True, "fallback": False, "fallback_reason": None}


class Method:
    """`handle.method.remote(...)` for an async function (a DeploymentHandle stand-in)."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


class FakeRouter:
    """The Router deployment as the ingress sees it: rules only, real prompt refinement."""

    def __init__(self):
        async def info():
            return {"stages": ["rules"], "thresholds": {"rules": 0.8, "llm": 0.7}}

        async def plan(message, images, context):
            raise AssertionError("rules-only router: the ingress plans every message itself")

        async def refine(prompt, style=None):
            from router.prompts import arefine_prompt

            return await arefine_prompt(prompt, style)

        self.info, self.plan, self.refine = Method(info), Method(plan), Method(refine)


@dataclass
class FakeGenerator:
    requests: list[Any] = field(default_factory=list)

    def __post_init__(self):
        async def info():
            return GENERATOR_INFO

        async def generate(req):
            self.requests.append(req)
            image = np.full((req.height, req.width, 3), 120, np.uint8)
            return GenerationResult(images=[image] * req.n, seeds=list(range(req.n)),
                                    model="tiny-sd", batch_size=req.n)

        self.info, self.generate = Method(info), Method(generate)


class FakeMatting:
    def __init__(self):
        async def info():
            return MATTING_INFO

        async def remove(req):
            from types import SimpleNamespace

            h, w = req.image.shape[:2]
            cutout = np.dstack([req.image[..., :3], np.full((h, w), 255, np.uint8)])
            return SimpleNamespace(image=cutout, model="u2net-tiny", batch_size=1, timings={},
                                   output=req.output)

        self.info, self.remove = Method(info), Method(remove)


@pytest.fixture
def service(tmp_path):
    records = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    runner = JobRunner(assets=LocalAssetStore(tmp_path / "assets"), records=records,
                       project="p1")
    generator = FakeGenerator()
    generation = GenerationService(generator=generator, runner=runner)
    tools = ToolService(handles={"matting": FakeMatting()}, generation=generation,
                        runner=runner, limits=Limits())
    chat = ChatService(router=FakeRouter(), generation=generation, tools=tools, runner=runner)
    chat.generator = generator  # what the generator was asked (tests)
    yield chat
    records.close()


def say(service: ChatService, message: str, *, context: dict | None = None,
        session_id: str | None = None, async_job: bool = False):
    async def go():
        reply = await service.chat(message=message, session_id=session_id, context=context,
                                   uploads=[], base_url="http://gw", async_job=async_job)
        await asyncio.gather(*service.runner._tasks)  # an async job's background work
        return reply

    return asyncio.run(go())


def stored_image(service: ChatService) -> str:
    image = np.full((64, 64, 3), 30, np.uint8)
    return asyncio.run(service.runner.store_image(image, kind="uploads"))


@pytest.mark.parametrize("message,change", [
    ("the same dog but wearing a scarf", "dog wearing a scarf"),
    ("make another one like this but in winter", "a dog in a park, in winter"),
    ("now in black and white", "a dog in a park, in black and white"),
])
def test_a_follow_up_edits_the_last_image_and_offers_a_new_one_instead(service, message,
                                                                         change):
    last = stored_image(service)
    reply = say(service, message, context={"last_image_id": last,
                                           "last_prompt": "a dog in a park"})
    step = reply.data.plan["steps"][0]
    assert [s["intent"] for s in reply.data.plan["steps"]] == ["image_edit"]
    assert step["params"]["prompt"] == change
    assert step["inputs"] == [{"role": "image", "source": "session", "index": None,
                               "image_id": last}]
    (request,) = service.generator.requests
    assert request.mode == "img2img" and request.prompt.startswith(change)
    # the other reading comes first among the actions, and means what it says
    new = reply.actions[0]
    assert (new.id, new.label, new.type) == ("generate_new", "Generate a new one instead",
                                             "chat")
    assert new.data["message"] == f"generate a new image of {change}"
    again = say(service, new.data["message"], session_id=reply.session_id)
    assert [s["intent"] for s in again.data.plan["steps"]] == ["image_generation"]
    assert again.data.plan["steps"][0]["params"]["prompt"] == change
    assert service.generator.requests[-1].mode == "text2img"
    assert not any(a.id == "generate_new" for a in again.actions)


def test_each_step_says_whether_its_model_is_tiny_or_a_fallback_and_why(service):
    reply = say(service, "generate a red sneaker and remove the background")
    assert reply.type == "image"
    steps = reply.metadata["steps"]
    assert [(s["intent"], s["model"], s["tiny"], s["fallback"], s["fallback_reason"])
            for s in steps] == [
        ("image_generation", "tiny-sd", True, True, FALLBACK_REASON),
        ("background_removal", "u2net-tiny", True, False, None)]
    assert reply.metadata["tiny"] is True and reply.metadata["fallback"] is True
    assert reply.metadata["models"] == {"image_generation": "tiny-sd",
                                        "background_removal": "u2net-tiny"}


def test_french_messages_get_french_replies(service):
    hello = say(service, "bonjour, tu fais quoi ?")
    assert hello.type == "text" and hello.message.startswith("Je peux créer des images")
    assert hello.suggestions[0] == "crée un chat qui porte une couronne"

    missing = say(service, "agrandis-la")  # no image anywhere: a question, in French
    assert missing.type == "text" and missing.message == "Merci de joindre l'image à agrandir."

    made = say(service, "génère un chat roux sur un canapé puis enlève le fond")
    assert made.message == "Voici votre image (générée, puis détourée)."
    assert [a.label for a in made.actions] == ["Agrandir 2×", "Détourer", "Aquarelle",
                                               "Télécharger"]
    assert made.suggestions == ["agrandis-la", "maintenant en aquarelle", "enlève le fond"]
    assert made.metadata["language"] == "fr"

    follow = say(service, "la même chose mais en hiver", session_id=made.session_id)
    assert follow.data.plan["steps"][0]["intent"] == "image_edit"
    assert follow.actions[0].label == "En générer une nouvelle à la place"
    assert follow.actions[0].data["message"].startswith("génère une nouvelle image : ")

    later = say(service, "dessine un phare sous l'orage", async_job=True)
    assert later.type == "processing" and later.message.startswith("C'est en cours (1 étape(s))")


def test_english_messages_keep_english_replies(service):
    hello = say(service, "hi, what can you do?")
    assert hello.message.startswith("I can create images")
    assert hello.suggestions[0] == "create a cat wearing a crown"
    made = say(service, "generate a red fox in the snow")
    assert made.message == "Here is your image (generated)."
    assert [a.label for a in made.actions] == ["Upscale 2×", "Remove background", "Watercolor",
                                               "Download"]
