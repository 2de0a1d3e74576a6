"""Reproducible assets: every stored image carries its recipe (in the file: PNG iTXt / WebP
XMP, `graphs.images`; and in its asset record). GET /v1/assets/{id}/recipe reads it; POST
/v1/assets/{id}/remix runs it again with overrides; an image with a recipe dropped on
/v1/workflows/validate or the chat is recognised (`recipe_workflow`)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError

from graphs.errors import ApiError
from graphs.generation import GenerationService, Options
from graphs.schemas import ImageGenerationRequest

# recipe fields that are request fields of POST /v1/images/generations
GENERATION_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "size",
                     "quality", "background", "lora", "loras")


def generation_request(recipe: dict[str, Any], overrides: dict[str, Any]
                       ) -> ImageGenerationRequest:
    """The generation request a recipe makes, `overrides` on top (checked like a request)."""
    fields = {k: recipe[k] for k in GENERATION_FIELDS
              if recipe.get(k) is not None and k in ImageGenerationRequest.model_fields}
    try:
        return ImageGenerationRequest.model_validate({**fields, **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(map(str, first["loc"]))
        raise ApiError(400, f"overrides.{loc}: {first['msg']}", param=f"overrides.{loc}",
                       code="invalid_override") from None


def recipe_workflow(recipe: dict[str, Any]) -> dict[str, Any]:
    """The workflow a recipe runs as: its own graph, or one generate node."""
    if recipe.get("kind") == "workflow" and isinstance(recipe.get("workflow"), dict):
        return recipe["workflow"]
    params = {k: recipe[k] for k in GENERATION_FIELDS if recipe.get(k) is not None
              and k in ImageGenerationRequest.model_fields}
    return {"nodes": {"gen": {"op": "generate", "params": params}}, "outputs": ["gen.image"]}


class RecipeService:
    def __init__(self, *, records: Any, runner: Any, generation: GenerationService,
                 workflows: Any):
        self.records = records
        self.runner = runner
        self.generation = generation
        self.workflows = workflows

    async def recipe(self, asset_id: str) -> dict[str, Any]:
        record = await asyncio.to_thread(self.records.get_asset, asset_id=asset_id,
                                         project=self.runner.project)
        if record is None:
            raise ApiError(404, f"no asset {asset_id!r}", param="asset_id", code="not_found")
        if not record.recipe:
            raise ApiError(404, f"asset {asset_id!r} has no recipe (uploads, edits of an "
                           "uploaded image and images made before recipes have none)",
                           param="asset_id", code="no_recipe")
        return record.recipe

    async def remix(self, asset_id: str, overrides: dict[str, Any], *, base_url: str,
                    async_job: bool = False):
        """Run the asset's recipe again: a generation with `overrides` (request fields), or
        its workflow with `overrides` as node params (`{"node": {...}}`), every node's
        recorded seed pinned unless overridden."""
        recipe = await self.recipe(asset_id)
        if recipe.get("kind") == "workflow":
            inputs: dict[str, dict[str, Any]] = {n: {"seed": s} for n, s in
                                                 recipe.get("seeds", {}).items()}
            for node, params in overrides.items():
                if not isinstance(params, dict):
                    raise ApiError(400, "a workflow recipe's overrides are node params: "
                                   "{\"<node>\": {\"<param>\": value}}",
                                   param=f"overrides.{node}", code="invalid_override")
                inputs[node] = {**inputs.get(node, {}), **params}
            graph = self.workflows.with_inputs(recipe["workflow"], inputs)
            return await self.workflows.execute(graph, base_url=base_url,
                                                async_job=async_job)
        body = generation_request(recipe, overrides)
        return await self.generation.generate(body.prompt, Options.of(body),
                                              base_url=base_url, async_job=async_job)
