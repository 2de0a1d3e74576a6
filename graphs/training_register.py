"""The one step that turns a trained adapter into a catalogue entry (see graphs/training_worker.py).

Kept apart so the registration path of the LoRA catalogue (#15: records + asset store) is a
one-line switch here. Returns whether the adapter was registered (served by name)."""

from __future__ import annotations

from typing import Any


def register_result(*, records: Any, assets: Any, name: str, project: str, data: bytes,
                    key: str, base: str, trigger_word: str, dataset_id: str,
                    params: dict[str, Any], training_id: str) -> bool:
    """Register the trained LoRA `name` (its `.safetensors` bytes `data`, already stored at
    `key`) for base model `base`, with its dataset, trigger word and training parameters."""
    return False  # until the catalogue's LoRA registration lands (r3-15)
