"""serve_config.yaml and cluster.yaml are valid for Ray's own schemas and for our builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from graphs.app import AppArgs

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_against_rays_cluster_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head node is CPU-only"
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values()), "a GPU worker type"


def test_cluster_yaml_gcs_port_is_not_redis_port():
    """Ray's GCS defaults to 6379, Redis's port: on a head that also runs the limits' Redis
    (serve_config.yaml rate_limit_storage) one of them would fail to start. The head listens
    elsewhere and the workers join on that port."""
    import re

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    redis_port = int(re.search(r":(\d+)", yaml.safe_load((REPO / "serve_config.yaml").read_text())
                               ["applications"][0]["args"]["rate_limit_storage"]).group(1))
    [head] = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    [worker] = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    port = int(re.search(r"--port=(\d+)", head).group(1))
    assert port != redis_port == 6379
    assert f"--address=$RAY_HEAD_IP:{port}" in worker


def test_cluster_schema_check_is_real():
    from jsonschema.exceptions import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["head"]["not_a_field"] = 1
    with pytest.raises(ValidationError):
        validate_config(prepare_config(config))


def test_serve_config_validates_and_packs_one_gpu():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(config) if hasattr(
        ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(config)
    [app] = config["applications"]
    args = AppArgs(**app["args"])
    assert args.profile == "production"
    fractions = {d["name"]: d.get("ray_actor_options", {}).get("num_gpus", 0)
                 for d in app["deployments"]}
    # vLLM's share sits on its own placement group, set from the builder args
    fractions["vLLM"] = app["args"]["llm_num_gpus"]
    assert sum(fractions.values()) == pytest.approx(1.0), fractions  # one GPU, fully packed
    from deployments.llm import check_gpu_memory_utilization

    check_gpu_memory_utilization(app["args"]["llm_num_gpus"],
                                 app["args"]["llm_gpu_memory_utilization"])
    for d in app["deployments"]:
        assert d.get("max_ongoing_requests") and d.get("max_queued_requests"), d["name"]
        assert d.get("autoscaling_config"), d["name"]
    # video is packed beside the others on the same GPU, as long work: 1-2 clips a replica
    video = next(d for d in app["deployments"] if d["name"] == "Video")
    assert 0 < fractions["Video"] < 1 and 1 <= video["max_ongoing_requests"] <= 2
    assert args.video_model == "ltx-video"


def test_builder_args_reject_unknown_keys():
    with pytest.raises(ValueError, match="extra"):
        AppArgs(profile="tiny", generator_modle="x")


def test_the_tested_graph_has_the_limits_photostudio_serve_ships():
    """The HTTP, hostile-input and fuzz suites run on serve_config.yaml (tests/conftest.py);
    `photostudio serve` builds from AppArgs' defaults. Their request limits and batch size
    must be the same, or the suites test another product (issue #13, 3: n=9/10 failed on the
    shipped batch size while the tests passed)."""
    args = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]
    defaults = AppArgs(profile="tiny")
    for name in ("max_batch_size", "max_image_pixels", "max_upload_bytes",
                 "max_request_pixels"):
        assert args[name] == getattr(defaults, name), name
