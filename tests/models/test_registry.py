"""The model catalogue (models/registry.py): every entry resolves, every deployment's model
comes from it, one lookup with useful errors."""

from __future__ import annotations

import importlib
import inspect

import pytest

from models import registry, zoo
from models.registry import CATALOGUE, DEFAULTS, DEPLOYMENT_KIND, KINDS, get_spec, resolve


def _unavailable(location: str) -> None:
    raise OSError(f"not on this machine: {location}")


@pytest.mark.parametrize("spec", CATALOGUE, ids=lambda s: s.name)
def test_every_entry_resolves(spec, zoo_dir):
    assert spec.kind in KINDS and spec.description
    assert get_spec(spec.name, kind=spec.kind) is spec
    importlib.import_module(f"models.{'diffusion' if spec.family == 'preview' else spec.family}")
    if spec.kind in ("lora", "vae"):
        assert get_spec(spec.base).kind == "base"  # an adapter names the base it fits
    if spec.tiny:
        assert spec.builder, "a tiny source needs a builder"
        resolved = resolve(spec, zoo_dir=zoo_dir, allow_fallback=False, load_check=None)
        assert (zoo.default_zoo_dir().__class__(resolved.location) / ".complete").exists()
        assert resolved.spec is spec and resolved.fallback_reason is None
        return
    # offline: the real weights are not here, so the local profile falls back (to a tiny
    # entry of the same kind) and production refuses
    if spec.tiny_fallback:
        tiny = get_spec(spec.tiny_fallback)
        assert tiny.tiny and tiny.kind == spec.kind
        resolved = resolve(spec, zoo_dir=zoo_dir, allow_fallback=True, load_check=_unavailable)
        assert resolved.spec is tiny and spec.name in resolved.fallback_reason
    with pytest.raises(RuntimeError, match="never falls back"):
        resolve(spec, zoo_dir=zoo_dir, allow_fallback=False, load_check=_unavailable)


@pytest.mark.parametrize("deployment", sorted(DEFAULTS))
def test_every_deployment_takes_one_model_and_one_source_from_the_catalogue(deployment):
    for profile, name in DEFAULTS[deployment].items():
        assert get_spec(name, kind=DEPLOYMENT_KIND[deployment]), (deployment, profile)
    if deployment == "llm":
        from deployments.llm import LLMAppConfig
        fields = set(LLMAppConfig.model_fields)
    else:
        module = importlib.import_module(f"deployments.{deployment}")
        cls = {"generator": "Generator", "matting": "Matting", "faceswap": "FaceSwap",
               "upscale": "Upscaler", "video": "Video", "vision": "Vision"}[deployment]
        fields = set(inspect.signature(getattr(module, cls).func_or_class.__init__).parameters)
    assert {"model", "source"} <= fields
    assert not fields & {"model_path", "model_dir", "weights"}


def test_unknown_names_and_kinds_say_what_exists():
    with pytest.raises(ValueError, match=r"unknown lora model 'tiny-lora-wram'; did you mean "
                       r"tiny-lora-warm.*available: tiny-lora-cool"):
        get_spec("tiny-lora-wram", kind="lora")
    with pytest.raises(ValueError, match="is a lora model, not base"):
        get_spec("tiny-lora-warm", kind="base")
    with pytest.raises(ValueError, match="unknown kind 'audio'"):
        registry.catalogue("audio")
    assert get_spec("sd15", source="/w/sd").source == "/w/sd"
    assert get_spec("sd15").source != "/w/sd"  # the catalogue itself is unchanged


def test_the_zoo_builds_exactly_the_catalogues_tiny_entries():
    assert set(zoo.tiny_names()) == {s.name for s in CATALOGUE if s.tiny}
    with pytest.raises(ValueError, match="unknown tiny model 'sd15'"):
        zoo.ensure("sd15")
