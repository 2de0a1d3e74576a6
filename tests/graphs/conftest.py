"""Fixtures of the graph tests (tests/conftest.py has the session's Ray and `gateway`)."""

from __future__ import annotations

import pytest

from tests.conftest import Gateway

LOCAL_APP = "local-fallback"


@pytest.fixture(scope="package")
def local_gateway(ray_cluster, zoo_dir, tmp_path_factory) -> Gateway:
    """A second graph for the tests that need an app of their own, deployed once for this
    package next to the shared `gateway` (same Ray, same proxy, route prefix /local): the
    local profile with sd15 weights that are not there (so the Generator falls back to
    tiny-sd, loudly), auth off. test_local_fallback.py reads its fallback reports;
    test_faults.py kills its Generator replica, so the shared `gateway` never loses one and
    no test depends on the order the files run in."""
    from ray import serve

    from graphs.app import AppArgs, build_app

    data_dir = tmp_path_factory.mktemp("local-data")
    args = AppArgs(profile="local", generator_model="sd15",
                   generator_source="nobody/weights-not-here", zoo_dir=str(zoo_dir),
                   data_dir=str(data_dir),
                   auth_enabled=False)  # explicit: allowed for the local profile
    serve.run(build_app(args), name=LOCAL_APP, route_prefix="/local")
    yield Gateway(base_url=f"http://127.0.0.1:{ray_cluster.http_port}/local",
                  app_name=LOCAL_APP, config={}, data_dir=data_dir)
    serve.delete(LOCAL_APP)
