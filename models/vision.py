"""Vision-language family: image captioning and visual question answering with BLIP
(transformers' `BlipForConditionalGeneration` / `BlipForQuestionAnswering`).

Weights: a folder with ``caption/`` (a BLIP captioning checkpoint, e.g.
``Salesforce/blip-image-captioning-base``) and, optionally, ``vqa/`` (e.g.
``Salesforce/blip-vqa-base``); each holds the model and its processor as `save_pretrained`
writes them. Without ``vqa/`` questions are not answered (``answer`` raises
`QuestionsUnsupported`, the API says so). The tiny zoo model (`build_tiny_blip`) is built from
configs with fixed seeds and a tokenizer built in code, saved in that layout and loaded through
the same `from_pretrained` calls: only the weights differ.

Why BLIP: the smallest well-supported captioning + VQA family in transformers (no remote
code, unlike Florence-2), runs on CPU, and its processor is a plain image processor + BERT
tokenizer, so a tiny stand-in is buildable offline.

Torch and transformers are imported lazily (the request checks import nothing heavy).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError
from models import registry
from models.base import LoadedInfo, ModelFamily, check_image
from models.zoo import SEED

logger = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 500
MAX_NEW_TOKENS = 20  # captions
MAX_ANSWER_TOKENS = 8  # VQA answers are a few words

# The tiny model's vocabulary: enough words for captions and answers to be (random) words.
TINY_WORDS = (
    "a an the of in on with and is are there this picture photo image of cat dog person man "
    "woman face people red green blue white black yellow orange purple yes no one two three "
    "sky tree car house flower water beach city street table food portrait landscape"
).split()


class QuestionsUnsupported(InputError):
    """The deployed model has no VQA head."""


@dataclass
class VisionResult:
    caption: str
    answer: str | None = None
    model: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class CaptionBatch:
    """Captions of several images (`VisionLanguageModel.captions`), in their order."""

    captions: list[str]
    model: str = ""
    timings: dict[str, float] = field(default_factory=dict)


MAX_CAPTION_BATCH = 32  # images per captions() call


def check_question(question: Any) -> str | None:
    if question is None:
        return None
    if not isinstance(question, str):
        raise InputError(f"question must be a string, got {type(question).__name__}",
                         param="question")
    question = question.strip()
    if not question:
        return None
    if len(question) > MAX_QUESTION_CHARS:
        raise InputError(f"question must be at most {MAX_QUESTION_CHARS} characters, got "
                         f"{len(question)}", param="question")
    return question


def build_tiny_blip(path: Path) -> None:
    """Tiny BLIP captioning + VQA models (seeded), with a BERT tokenizer built in code."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", ".", ",", "?"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(specials + TINY_WORDS))}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=64)
    processor = BlipProcessor(image_processor=BlipImageProcessor(
        size={"height": 32, "width": 32}), tokenizer=tokenizer)

    def config():
        return BlipConfig(
            text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                             num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=64, bos_token_id=vocab["[DEC]"],
                             pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"],
                             eos_token_id=vocab["[SEP]"]),
            vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                               num_attention_heads=4, image_size=32, patch_size=8,
                               projection_dim=32),
            projection_dim=32)

    for sub, cls in (("caption", BlipForConditionalGeneration),
                     ("vqa", BlipForQuestionAnswering)):
        torch.manual_seed(SEED)
        cls(config()).save_pretrained(path / sub, safe_serialization=True)
        processor.save_pretrained(path / sub)


class VisionLanguageModel(ModelFamily):
    family = "vision"

    def __init__(self, *, caption_model: Any, caption_processor: Any, vqa_model: Any | None,
                 vqa_processor: Any | None, info: LoadedInfo, device: str):
        self._caption = caption_model
        self._caption_processor = caption_processor
        self._vqa = vqa_model
        self._vqa_processor = vqa_processor
        self._info = info
        self._device = device
        self._lock = threading.Lock()  # generate() on one model object: one call at a time

    @classmethod
    def from_name(cls, name: str = "tiny-blip", *, source: str | None = None,
                  zoo_dir: str | None = None, allow_fallback: bool = False,
                  device: str | None = None) -> VisionLanguageModel:
        spec = registry.get_spec(name, kind="vision", source=source)

        def check(location: str) -> None:
            if not (Path(location).expanduser() / "caption").is_dir():
                raise OSError(f"{location} has no caption/ folder (a BLIP captioning "
                              "checkpoint saved with save_pretrained)")

        resolved = registry.resolve(spec, zoo_dir=zoo_dir, allow_fallback=allow_fallback,
                                    load_check=check)
        return cls.load(resolved.location, name=resolved.spec.name, device=device,
                        tiny=resolved.spec.tiny, fallback_reason=resolved.fallback_reason)

    @classmethod
    def load(cls, source: str, *, name: str, device: str | None = None, tiny: bool = False,
             fallback_reason: str | None = None) -> VisionLanguageModel:
        import torch
        from transformers import (
            BlipForConditionalGeneration,
            BlipForQuestionAnswering,
            BlipProcessor,
        )

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        root = Path(source).expanduser()
        caption = BlipForConditionalGeneration.from_pretrained(root / "caption", dtype=dtype)
        caption_processor = BlipProcessor.from_pretrained(root / "caption")
        vqa = vqa_processor = None
        if (root / "vqa").is_dir():
            vqa = BlipForQuestionAnswering.from_pretrained(root / "vqa", dtype=dtype)
            vqa_processor = BlipProcessor.from_pretrained(root / "vqa")
            vqa.to(device).eval()
        caption.to(device).eval()
        info = LoadedInfo(name=name, family=cls.family, source=source,
                          tiny=tiny, device=device, dtype=str(dtype).removeprefix("torch."),
                          fallback_reason=fallback_reason,
                          extra={"questions": vqa is not None})
        return cls(caption_model=caption, caption_processor=caption_processor, vqa_model=vqa,
                   vqa_processor=vqa_processor, info=info, device=device)

    @property
    def info(self) -> LoadedInfo:
        return self._info

    @property
    def answers_questions(self) -> bool:
        return self._vqa is not None

    def run(self, image: np.ndarray, *, question: str | None = None,
            max_new_tokens: int = MAX_NEW_TOKENS) -> VisionResult:
        """Caption `image` (HxWx3/4 uint8) and answer `question` if given."""
        import torch
        from PIL import Image

        check_image(image)
        question = check_question(question)
        if question is not None and self._vqa is None:
            raise QuestionsUnsupported(
                f"the deployed vision model {self._info.name!r} does not answer questions "
                "(no VQA weights): leave question out", param="question")
        pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
        timings: dict[str, float] = {}
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            inputs = self._caption_processor(images=pil, return_tensors="pt").to(
                self._device, self._caption.dtype)
            out = self._caption.generate(**inputs, max_new_tokens=max_new_tokens)
            caption = self._caption_processor.decode(out[0], skip_special_tokens=True).strip()
            timings["caption_s"] = time.perf_counter() - started
            answer = None
            if question is not None:
                started = time.perf_counter()
                inputs = self._vqa_processor(images=pil, text=question, return_tensors="pt"
                                             ).to(self._device, self._vqa.dtype)
                out = self._vqa.generate(**inputs, max_new_tokens=MAX_ANSWER_TOKENS)
                answer = self._vqa_processor.decode(out[0], skip_special_tokens=True).strip()
                timings["answer_s"] = time.perf_counter() - started
        return VisionResult(caption=caption, answer=answer, model=self._info.name,
                            timings=timings)

    def captions(self, images: list[np.ndarray], *,
                 max_new_tokens: int = MAX_NEW_TOKENS) -> CaptionBatch:
        """One caption per image (HxWx3/4 uint8, any sizes: the processor resizes them),
        generated as one batch (greedy: the same caption `run` gives each image alone).
        For dataset auto-captions: no question, no per-image call overhead."""
        import torch
        from PIL import Image

        if not isinstance(images, (list, tuple)) or not 1 <= len(images) <= MAX_CAPTION_BATCH:
            raise InputError(f"captions takes a list of 1-{MAX_CAPTION_BATCH} images, got "
                             f"{len(images) if isinstance(images, (list, tuple)) else images!r}",
                             param="images")
        for i, image in enumerate(images):
            check_image(image, name=f"images[{i}]")
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 64:
            raise InputError(f"max_new_tokens must be an integer from 1 to 64, got "
                             f"{max_new_tokens!r}", param="max_new_tokens")
        pils = [Image.fromarray(np.ascontiguousarray(im[..., :3])) for im in images]
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            inputs = self._caption_processor(images=pils, return_tensors="pt").to(
                self._device, self._caption.dtype)
            out = self._caption.generate(**inputs, max_new_tokens=max_new_tokens)
            texts = [t.strip() for t in self._caption_processor.batch_decode(
                out, skip_special_tokens=True)]
            elapsed = time.perf_counter() - started
        return CaptionBatch(captions=texts, model=self._info.name,
                            timings={"caption_s": elapsed})
