"""The ingress's handles to the model deployments and the Router's to the LLM: the transport a
setting picks (deployments/_common.py `with_transport`, graphs/ingress.py `model_handle`), and
the setting's way from the environment and the builder args to the Ingress and the Router.
The whole HTTP suite runs on the default (grpc) transport."""

from __future__ import annotations

import pytest

from graphs.app import AppArgs, build_app
from graphs.ingress import model_handle
from graphs.middleware import CancellableHandle


class RecordingHandle:
    """Stands in for a DeploymentHandle: records the options it was given."""

    def __init__(self, options: dict | None = None):
        self.given = options or {}

    def options(self, **kwargs) -> RecordingHandle:
        return RecordingHandle({**self.given, **kwargs})


def test_grpc_transport_sends_by_value_and_actor_keeps_serves_default():
    grpc = model_handle(RecordingHandle(), "grpc")
    actor = model_handle(RecordingHandle(), "actor")
    assert isinstance(grpc, CancellableHandle) and isinstance(actor, CancellableHandle)
    assert grpc.unwrap().given == {"_by_reference": False}
    assert actor.unwrap().given == {}
    # later options (a LoRA set's multiplexed model id) keep the transport
    assert grpc.options(multiplexed_model_id="set-1").unwrap().given == {
        "_by_reference": False, "multiplexed_model_id": "set-1"}


def _transport_of(app) -> str:
    config = next(a for a in app._bound_deployment.init_args
                  if hasattr(a, "handle_transport"))
    return config.handle_transport


def _router_transport_of(app) -> str:
    router = next(a for a in app._bound_deployment.init_args
                  if getattr(getattr(a, "_bound_deployment", None), "name", None) == "Router")
    return router._bound_deployment.init_kwargs["handle_transport"]


@pytest.mark.parametrize("transport", ["grpc", "actor"])
def test_the_router_calls_its_llm_over_the_same_transport(transport):
    """The Router's LLM handle is sent as the Ingress's handles are: by value over gRPC by
    default, Ray actor calls with ``actor``; no LLM, no handle."""
    from deployments.router import Router

    router = Router.func_or_class(RecordingHandle(), use_embeddings=False,
                                  handle_transport=transport)
    assert router._llm_handle.given == ({"_by_reference": False} if transport == "grpc"
                                        else {})
    assert Router.func_or_class(None, use_embeddings=False)._llm_handle is None


@pytest.mark.parametrize(("env", "arg", "expected"), [
    (None, None, "grpc"),  # the default
    ("actor", None, "actor"),  # PHOTOSTUDIO_HANDLE_TRANSPORT
    ("actor", "grpc", "grpc"),  # a builder arg wins over the environment
])
def test_handle_transport_comes_from_args_then_settings(tmp_path, monkeypatch, env, arg,
                                                        expected):
    if env is None:
        monkeypatch.delenv("PHOTOSTUDIO_HANDLE_TRANSPORT", raising=False)
    else:
        monkeypatch.setenv("PHOTOSTUDIO_HANDLE_TRANSPORT", env)
    app = build_app(AppArgs(profile="tiny", data_dir=str(tmp_path), handle_transport=arg))
    assert _transport_of(app) == expected
    assert _router_transport_of(app) == expected


def test_an_unknown_transport_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="grpc"):
        AppArgs(profile="tiny", handle_transport="http")
