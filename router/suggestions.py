"""Prompt suggestions: a curated vocabulary in categories, autocomplete (prefix matches first,
then the nearest phrases by sentence embedding: the router's all-MiniLM-L6-v2), prompt
enhancement (the quality, lighting and camera terms closest to the prompt that it lacks) and
random picks. Pure Python; the encoder is injected (None: prefix matching only)."""

from __future__ import annotations

import bisect
import random
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

CATEGORIES: dict[str, list[str]] = {
    "subjects": [
        "portrait of a woman", "portrait of an old man", "a red fox in the snow",
        "a cat sleeping on a windowsill", "a golden retriever puppy", "a dragon",
        "a castle on a hill", "a lighthouse on a cliff", "a futuristic city skyline",
        "a cozy coffee shop", "a mountain lake at dawn", "a sailing ship", "an astronaut",
        "a bowl of ramen", "a vintage car", "a robot", "a forest path", "a desert oasis",
        "a waterfall in the jungle", "a product shot of a perfume bottle", "a bouquet of roses",
        "a medieval knight", "a wizard", "an owl", "a koi pond",
    ],
    "styles": [
        "watercolor painting", "oil painting", "anime style", "pencil sketch", "pixar 3d render",
        "ukiyo-e woodblock print", "cyberpunk", "comic book art", "pop art", "low poly",
        "concept art", "art nouveau", "impressionism", "surrealism", "pixel art",
        "studio ghibli style", "vaporwave", "charcoal drawing", "stained glass", "claymation",
        "isometric illustration", "line art", "baroque painting", "minimalist flat design",
        "synthwave",
    ],
    "lighting": [
        "golden hour", "soft natural light", "dramatic lighting", "rim light", "backlit",
        "studio lighting", "neon lights", "candlelight", "volumetric light", "god rays",
        "blue hour", "overcast light", "harsh midday sun", "moonlight", "cinematic lighting",
        "chiaroscuro", "softbox lighting", "sunset glow", "bioluminescent glow", "firelight",
    ],
    "camera": [
        "85mm lens", "35mm film", "wide angle", "macro shot", "shallow depth of field",
        "bokeh", "aerial view", "drone shot", "close-up", "full body shot", "low angle",
        "bird's eye view", "tilt-shift", "long exposure", "fisheye lens", "telephoto lens",
        "dutch angle", "symmetrical composition", "rule of thirds", "over the shoulder shot",
    ],
    "quality": [
        "highly detailed", "sharp focus", "8k", "ultra realistic", "masterpiece",
        "best quality", "intricate details", "high resolution", "professional photography",
        "award winning", "trending on artstation", "crisp", "hyperrealistic", "4k",
        "fine texture",
    ],
    "mood": [
        "serene", "moody", "dreamy", "mysterious", "melancholic", "whimsical", "epic",
        "cozy", "eerie", "joyful", "nostalgic", "dramatic", "peaceful", "ominous", "romantic",
        "playful", "gloomy", "ethereal", "energetic", "tense",
    ],
    "colors": [
        "pastel colors", "vibrant colors", "monochrome", "black and white", "muted tones",
        "warm tones", "cool tones", "teal and orange", "earth tones", "neon pink and blue",
        "sepia", "high contrast", "desaturated", "golden and crimson", "emerald green",
        "duotone", "rainbow colors", "soft pastel palette", "deep blues", "autumn colors",
    ],
}
ENHANCE_CATEGORIES = ("quality", "lighting", "camera")
# a fragment shorter than this has no meaning to embed ("g", "go"): prefix matches only
MIN_SEMANTIC_CHARS = 3


class LRU:
    """A bounded, thread-safe least-recently-used map (a Serve replica may call from worker
    threads), counting its hits and misses."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def info(self) -> dict[str, int]:
        return {"size": len(self._items), "max": self.size, "hits": self.hits,
                "misses": self.misses}


def normalise(q: str) -> str:
    """The key of a query: case and spacing do not change its suggestions (the MiniLM
    tokenizer is uncased)."""
    return " ".join(q.lower().split())


@dataclass(frozen=True)
class Suggestion:
    text: str
    category: str
    match: str  # "prefix" | "semantic" | "random"
    score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "category": self.category, "match": self.match,
                **({"score": round(self.score, 4)} if self.score is not None else {})}


class SuggestionIndex:
    """`cache_size`: query embeddings kept (least recently used out). Autocomplete asks for the
    same fragments again and again (every user typing "gol" of "golden"); an embedding is
    ~5-10 ms of one CPU thread, a cache hit a dict lookup."""

    def __init__(self, encoder: Any = None, categories: dict[str, list[str]] = CATEGORIES,
                 *, cache_size: int = 4096):
        self.categories = categories
        self.items = [(text, cat) for cat, texts in categories.items() for text in texts]
        # prefix keys: each phrase, and each of its words' suffixes ("golden hour", "hour")
        keys = []
        for i, (text, _) in enumerate(self.items):
            words = text.lower().split()
            for w in range(len(words)):
                keys.append((" ".join(words[w:]), w, i))
        self._keys = sorted(keys)
        self._key_text = [k for k, _, _ in self._keys]
        self.encoder = encoder
        self._matrix = None
        self.embeddings = LRU(cache_size)
        if encoder is not None:
            self._matrix = np.asarray(encoder.encode([t for t, _ in self.items]),
                                      dtype=np.float32)

    @property
    def semantic(self) -> bool:
        return self._matrix is not None

    def prefix(self, q: str, limit: int) -> list[Suggestion]:
        q = " ".join(q.lower().split())
        if not q:
            return []
        start = bisect.bisect_left(self._key_text, q)
        found: dict[int, int] = {}  # item -> word position (0: the phrase starts with q)
        for key, word, item in self._keys[start:]:
            if not key.startswith(q):
                break
            found[item] = min(word, found.get(item, word))
        ranked = sorted(found, key=lambda i: (found[i], len(self.items[i][0]),
                                              self.items[i][0]))
        return [Suggestion(*self.items[i], "prefix") for i in ranked[:limit]]

    def neighbours(self, q: str, limit: int, *, exclude: set[str] = frozenset(),
                   categories: tuple[str, ...] | None = None) -> list[Suggestion]:
        if self._matrix is None or not q.strip():
            return []
        sims = self._matrix @ self.embed(q)
        out = []
        for i in np.argsort(sims)[::-1]:
            text, cat = self.items[i]
            if text in exclude or (categories and cat not in categories):
                continue
            out.append(Suggestion(text, cat, "semantic", float(sims[i])))
            if len(out) >= limit:
                break
        return out

    def embed(self, q: str) -> np.ndarray:
        """`q`'s embedding, from the LRU cache when it was asked for lately."""
        key = normalise(q)
        vector = self.embeddings.get(key)
        if vector is None:
            vector = np.asarray(self.encoder.encode([key]), dtype=np.float32)[0]
            self.embeddings.put(key, vector)
        return vector

    def autocomplete(self, q: str, limit: int = 10) -> list[Suggestion]:
        """Phrases starting with `q` (or with a word starting with it) first, then the
        phrases nearest in meaning (only when the prefix matches leave room, and `q` is at
        least `MIN_SEMANTIC_CHARS` long: a one- or two-letter fragment means nothing yet)."""
        found = self.prefix(q, limit)
        if not self.needs_neighbours(q, found, limit):
            return found
        return found + self.neighbours(q, limit - len(found),
                                       exclude={s.text for s in found})

    @staticmethod
    def needs_neighbours(q: str, prefix: list[Suggestion], limit: int) -> bool:
        """Whether autocomplete of `q` goes past its prefix matches (`prefix`) to the
        embedding neighbours: when they leave room and `q` is long enough to mean something.
        An index without an encoder (the ingress's) answers alone when this is False."""
        return len(prefix) < limit and len(q.strip()) >= MIN_SEMANTIC_CHARS

    def by_category(self, category: str) -> list[str]:
        if category not in self.categories:
            raise KeyError(category)
        return list(self.categories[category])

    def random(self, n: int = 5, *, category: str | None = None,
               seed: int | None = None) -> list[Suggestion]:
        rng = random.Random(seed)
        pool = [(t, c) for t, c in self.items if category is None or c == category]
        return [Suggestion(t, c, "random") for t, c in rng.sample(pool, min(n, len(pool)))]

    def enhance(self, prompt: str) -> dict[str, Any]:
        """`prompt` with one term of each of quality, lighting and camera it lacks: the
        nearest in meaning with embeddings, else the first of each category."""
        text = " ".join(prompt.split())
        lower = text.lower()
        added = []
        for category in ENHANCE_CATEGORIES:
            if any(term.lower() in lower for term in self.categories[category]):
                continue
            if self.semantic:
                best = self.neighbours(text, 1, categories=(category,))
                term = best[0].text if best else self.categories[category][0]
            else:
                term = self.categories[category][0]
            added.append({"text": term, "category": category})
        enhanced = ", ".join([text.rstrip(" ,."), *(a["text"] for a in added)])
        return {"prompt": re.sub(r"\s+", " ", enhanced).strip(", "), "original": prompt,
                "added": added}
