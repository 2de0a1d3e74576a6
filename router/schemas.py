"""Typed inputs and outputs of the router: session context, steps, plans, prompt analysis.

A chat message becomes a `Plan`: an ordered list of `Step`s (each an intent with its
parameters and the images it reads), the cascade stage that decided it, per-stage timings and
a confidence. Step k's output image feeds the steps after it (`InputRef.source ==
"previous_step"`); images a step needs but nobody has are listed in `Plan.missing_inputs`, and
`Plan.clarification` then holds the question to ask the user (a reply, not an error).

Pure pydantic: no Ray, no models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Intent = Literal["image_generation", "image_edit", "face_swap", "background_removal", "upscale",
                 "style_transfer", "image_analysis", "general"]
INTENTS: tuple[str, ...] = ("image_generation", "image_edit", "face_swap", "background_removal",
                            "upscale", "style_transfer", "image_analysis", "general")
# Intents whose step produces an image (and so can feed the next step).
IMAGE_INTENTS = frozenset(INTENTS[:-2])
# Intents that read an image (image_analysis: describe it, answer a question about it).
READS_IMAGE_INTENTS = IMAGE_INTENTS | {"image_analysis"}
# Intents that take a prompt (subject / instruction), negative prompt and style.
PROMPT_INTENTS = frozenset({"image_generation", "image_edit", "style_transfer"})

Stage = Literal["rules", "embedding", "llm"]

# The parameter names a step may carry (see `Step.params`).
PARAM_NAMES = ("prompt", "negative_prompt", "width", "height", "n", "seed", "style", "scale",
               "target_face_index", "all_faces", "aspect")


class SessionContext(BaseModel):
    """What the chat session remembers between messages, for follow-ups ("make it bigger")."""

    model_config = ConfigDict(extra="forbid")

    last_image_id: str | None = Field(None, description="Asset id of the last image produced "
                                                        "or uploaded in this session")
    last_prompt: str | None = Field(None, description="Subject prompt of the last generation")
    last_intent: Intent | None = None
    last_style: str | None = None


class InputRef(BaseModel):
    """Where one image a step reads comes from."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["image", "source_face", "target", "reference"] = Field(
        ..., description="image: the image to work on; source_face: the face to put in; "
                         "target: the image that receives the face; reference: optional "
                         "guide for a generation")
    source: Literal["upload", "previous_step", "session"] = Field(
        ..., description="upload: the message's attached image `index`; previous_step: the "
                         "output of step `index` of this plan; session: the session's last "
                         "image (`SessionContext.last_image_id`)")
    index: int | None = Field(None, ge=0, description="upload index or step index")
    image_id: str | None = Field(None, description="the session image's id")


class MissingInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int = Field(..., ge=0)
    role: str
    intent: Intent


class Step(BaseModel):
    """One operation. `params` uses the names in `PARAM_NAMES`: prompt (subject prompt,
    cleaned of instruction words and extracted parameters), negative_prompt, width, height, n,
    seed, style (preset name or free text), scale, target_face_index, all_faces, aspect."""

    model_config = ConfigDict(extra="forbid")

    intent: Intent
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputRef] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list,
                               description="roles of required images nobody provides")
    text: str = Field("", description="the part of the message this step came from")

    @field_validator("params")
    @classmethod
    def _known_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - set(PARAM_NAMES))
        if unknown:
            raise ValueError(f"unknown step params {unknown}; allowed: {', '.join(PARAM_NAMES)}")
        return params


class Alternative(BaseModel):
    """Another reading of the message the user can pick instead (a chat action): the message
    to send for it, in the user's language."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., description="e.g. 'generate_new': a fresh generation instead of an "
                                     "edit of the last image")
    label: str
    message: str


class Plan(BaseModel):
    """What a chat message asks for, in execution order."""

    model_config = ConfigDict(extra="forbid")

    steps: list[Step]
    confidence: float = Field(..., ge=0.0, le=1.0)
    stage: Stage = Field(..., description="the cascade stage that decided this plan")
    timings: dict[str, float] = Field(default_factory=dict,
                                      description="seconds per stage that ran, and 'total'")
    language: Literal["en", "fr"] = "en"
    missing_inputs: list[MissingInput] = Field(default_factory=list)
    clarification: str | None = Field(None, description="what to ask the user when images "
                                                        "are missing")
    llm_error: str | None = Field(None, description="why the LLM stage's answer was not used")
    llm_tokens: list[int] | None = Field(None, description="[prompt, completion] tokens the "
                                         "LLM stage used (usage accounting)")
    warnings: list[str] = Field(default_factory=list)
    alternatives: list[Alternative] = Field(
        default_factory=list, description="other readings the reply offers as actions")

    @property
    def intents(self) -> list[str]:
        return [step.intent for step in self.steps]

    @property
    def needs_images(self) -> bool:
        return bool(self.missing_inputs)


# --- prompts -------------------------------------------------------------------------------


class PromptAnalysis(BaseModel):
    length: int
    words: int
    keywords: list[str]
    detected_style: str | None = Field(None, description="a preset name, a free-text style, "
                                                         "or a broad category (photo, art…)")
    style_preset: str | None = None
    negative_terms: list[str] = Field(default_factory=list)
    language: Literal["en", "fr"] = "en"


class PromptIssue(BaseModel):
    message: str
    code: str
    param: str = "prompt"


class PromptValidation(BaseModel):
    valid: bool
    error: PromptIssue | None = None
    needs_compression: bool = False
    limits: dict[str, int]
    analysis: PromptAnalysis | None = None


class RefinedPrompt(BaseModel):
    prompt: str
    negative_prompt: str
    original: str
    style: str | None
    added_terms: list[str]
    compressed: bool = False
    compression: Literal["llm", "deterministic"] | None = None
    llm_error: str | None = None
    analysis: PromptAnalysis
