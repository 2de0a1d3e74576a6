"""The one step that turns a trained adapter into a catalogue entry (graphs/training_worker.py
calls it at the end of a successful training, in the training task).

It is #15's server-side registration, `graphs.loras.LoraService.register_lora`: the file is
checked by loading it onto the base model where it is served (the Generator's `check_lora`,
through a Serve handle from this Ray task), stored in the asset store and recorded in the
`loras` table; the adapter is then listed in GET /v1/models?kind=lora and usable by name in
generations at once. `ApiError` (name taken meanwhile, does not fit…) fails the training
with that reason."""

from __future__ import annotations

import asyncio
from typing import Any


def register_result(*, records: Any, assets: Any, name: str, project: str, data: bytes,
                    base: str, trigger_word: str, dataset_id: str, params: dict[str, Any],
                    training_id: str, generator_app: str, preview_asset: str | None = None
                    ) -> dict[str, Any]:
    """Register the trained LoRA `name` (its `.safetensors` bytes `data`) for base model
    `base`, with its dataset, trigger word and training parameters; what was registered."""
    from ray import serve

    from graphs.loras import LoraService

    handle = serve.get_deployment_handle("Generator", app_name=generator_app)

    async def validate(blob: bytes, _base: str) -> dict[str, Any]:
        return await handle.check_lora.remote(blob)

    async def served_base() -> str:
        return base

    async def register():
        service = LoraService(records=records, assets=assets, validate=validate,
                              served_base=served_base)
        return await service.register_lora(
            name=name, data=data, project=project, base=base,
            meta={"dataset_id": dataset_id, "trigger_word": trigger_word,
                  "training_id": training_id, "training": params},
            trigger_words=[trigger_word], tags=["trained"],
            description=f"LoRA trained on dataset {dataset_id} (training {training_id})",
            preview_asset=preview_asset)

    record = asyncio.run(register())
    return {"key": record.key, "store": record.store, "sha256": record.sha256,
            "rank": record.rank, "registered": True}
