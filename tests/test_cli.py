"""`photostudio serve` starts, answers over HTTP, and stops cleanly on Ctrl-C (the `served`
fixture of tests/conftest.py, shared with tests/test_front_door.py); its other commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "graphs.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "serve" in out and "zoo" in out


def test_zoo_build_reuses_the_cache(zoo_dir):
    out = subprocess.run([sys.executable, "-m", "graphs.cli", "zoo", "build", "tiny-sd",
                          "--zoo-dir", str(zoo_dir)], capture_output=True, text=True,
                         check=True)
    assert str(zoo_dir / "tiny-sd") in out.stderr + out.stdout


@pytest.mark.slow
def test_serve_starts_and_generates_with_the_key_it_printed(served):
    """`photostudio serve` answers over HTTP (tests/conftest.py `served`, whose teardown
    checks that Ctrl-C then stops it cleanly)."""
    url = f"{served.url}/v1/images/generations"
    body = {"prompt": "a cat", "size": "64x64"}
    # auth is on by default: the first start made a key and printed it once
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    keys = re.findall(r"psk_[\w-]{43}", served.output)
    assert len(keys) == 1, served.output[-3000:]
    r = httpx.post(url, json=body, timeout=120, headers={"Authorization": f"Bearer {keys[0]}"})
    assert r.status_code == 200 and r.json()["data"][0]["b64_json"]


def test_production_profile_refuses_no_auth(tmp_path):
    out = subprocess.run([sys.executable, "-m", "graphs.cli", "serve", "--profile", "production",
                          "--no-auth", "--data-dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "requires API-key auth" in out.stderr


def test_request_path_env_keeps_haproxys_socket_path_short(tmp_path):
    from graphs.cli import request_path_env

    deep = tmp_path / ("a" * 60)
    env = request_path_env(deep, free_ports=True)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in env
    assert env["RAY_SERVE_HAPROXY_MAXCONN"] == "256"  # not Ray's 4096 (cli.HAPROXY_MAXCONN)
    # Serve adds "/<56-character node id>" before the socket's name; HAProxy's limit is 97
    sock = Path(env["RAY_SERVE_HAPROXY_SOCKET_PATH"])
    assert len(str(sock.parent / ("n" * 56) / sock.name)) <= 97
    assert Path(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]).is_dir()
    assert env == {**request_path_env(deep, free_ports=True),  # the same folder each time
                   **{k: env[k] for k in env if k.endswith("_PORT")}}
    assert int(env["RAY_SERVE_HAPROXY_STATS_PORT"]) != 8404
    always = {"RAY_max_direct_call_object_size": str(4 * 1024 * 1024),
              "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
}
    assert request_path_env(deep, haproxy=False) == always
    assert request_path_env(deep, haproxy=False, throughput_optimized=True) == {
        **always, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def test_request_path_env_sends_images_inline_unless_the_operator_says(tmp_path, monkeypatch):
    """Images up to 4 MiB go to and from model replicas inside the call (Ray's default puts
    anything over 100 KiB in the object store); an operator's own value wins."""
    from graphs.cli import request_path_env

    monkeypatch.delenv("RAY_max_direct_call_object_size", raising=False)
    env = request_path_env(tmp_path, haproxy=False)
    assert env["RAY_max_direct_call_object_size"] == "4194304"
    monkeypatch.setenv("RAY_max_direct_call_object_size", "102400")
    assert request_path_env(tmp_path, haproxy=False)[
        "RAY_max_direct_call_object_size"] == "102400"


def test_serves_haproxy_request_metrics_are_off_unless_the_operator_says(tmp_path,
                                                                        monkeypatch):
    """Serve's per-request HTTP metrics from HAProxy are off (the ingress records its own);
    turned back on by an operator, each gateway's datagram socket is its own."""
    from graphs.cli import request_path_env

    name = "RAY_SERVE_HAPROXY_METRICS_ENABLED"
    monkeypatch.delenv(name, raising=False)
    env = request_path_env(tmp_path, free_ports=True)
    assert env[name] == "0"
    assert Path(env["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"]).parent == Path(
        env["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent  # under the gateway's own state dir
    monkeypatch.setenv(name, "1")
    assert request_path_env(tmp_path, free_ports=True)[name] == "1"


def test_replicas_run_user_code_on_their_own_loop_unless_the_operator_says(tmp_path,
                                                                           monkeypatch):
    """User code on the replica's own event loop (Serve's default: a second loop in a thread
    of its own); an operator's own value wins."""
    from graphs.cli import request_path_env

    name = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"
    monkeypatch.delenv(name, raising=False)
    assert request_path_env(tmp_path, haproxy=False)[name] == "0"
    monkeypatch.setenv(name, "1")
    assert request_path_env(tmp_path, haproxy=False)[name] == "1"


def test_serve_binds_ray_to_loopback_and_sets_the_front_doors_timeouts(tmp_path, monkeypatch):
    import stat

    from graphs import cli

    for name in ("RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S", "RAY_SERVE_HAPROXY_BINARY_PATH",
                 "PHOTOSTUDIO_HAPROXY_TIMEOUT_HTTP_REQUEST_S", "PHOTOSTUDIO_HAPROXY_STATS_HOST"):
        monkeypatch.delenv(name, raising=False)
    env = cli.request_path_env(tmp_path, free_ports=True)
    assert env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "60"  # Serve's default: 3600
    assert env["PHOTOSTUDIO_HAPROXY_TIMEOUT_HTTP_REQUEST_S"] == "10"  # Serve's: none
    assert env["PHOTOSTUDIO_HAPROXY_STATS_HOST"] == "127.0.0.1"  # Serve's: every interface
    launcher = Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"])  # Serve starts HAProxy through it
    assert os.access(launcher, os.X_OK) and "-m graphs.haproxy_guard" in launcher.read_text()
    state = Path(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent  # admin socket: this user only
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert cli.http_options("127.0.0.1", 8000) == {"host": "127.0.0.1", "port": 8000,
                                                    "keep_alive_timeout_s": 10}  # Serve's: 90
    monkeypatch.setenv("RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S", "30")  # an operator's value wins
    assert cli.request_path_env(tmp_path)["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "30"

    ray_env, init_kwargs = cli.local_ray_options()
    assert init_kwargs == {"_node_ip_address": "127.0.0.1", "dashboard_host": "127.0.0.1"}
    # Ray keeps a loopback node address only with this (else it takes the routable one)
    assert ray_env == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    resolved = subprocess.run(
        [sys.executable, "-c", "from ray._private.services import resolve_ip_for_localhost; "
                               "print(resolve_ip_for_localhost('127.0.0.1'))"],
        env={**os.environ, **ray_env}, capture_output=True, text=True, check=True, timeout=120)
    assert resolved.stdout.strip() == "127.0.0.1"
    assert cli.local_ray_options("10.0.0.5") == (
        {}, {"_node_ip_address": "10.0.0.5", "dashboard_host": "127.0.0.1"})


def test_the_cli_imports_no_ray_before_it_sets_rays_environment():
    """Ray reads some settings once, when it is first imported (e.g. the switch that keeps a
    local Ray on 127.0.0.1): `photostudio` must set them before anything imports Ray."""
    import subprocess
    import sys

    code = "import sys, graphs.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
def test_serve_prints_one_clean_banner_and_keeps_rays_logs_in_files(served):
    """The first start's output: progress lines, then one banner with the studio, docs and
    logs; Ray's and the replicas' log lines are in files under the data dir, not here."""
    out = served.output
    assert out.count("Photo Studio Gateway is ready") == 1, out[-3000:]
    assert f"{served.url}/studio/" in out and f"{served.url}/docs" in out
    assert "Ray dashboard  off (--no-dashboard)" in out
    assert re.search(r"API key\s+psk_[\w-]{43}", out)
    assert "Deploying the gateway" in out and re.search(r"\[\d/\d\] Ingress: healthy", out)
    logs = re.search(r"Logs\s+(\S+)", out).group(1)
    assert Path(logs).is_dir() and any(Path(logs).rglob("*.log"))
    # nothing of Ray's own chatter: no "(ServeController pid=…)" / "(ServeReplica…)" lines
    assert "pid=" not in out, out[-3000:]
    assert "Traceback" not in out


def test_serve_names_the_extra_to_install_before_starting_ray(tmp_path, monkeypatch, capsys):
    """An install without the extras: no Ray started, a message naming the extra."""
    from graphs import cli

    monkeypatch.setattr(cli, "missing_extras", lambda: {"tools": ["onnxruntime", "rembg"]})
    started = []
    monkeypatch.setattr(cli, "_prebuild_zoo", lambda profile: started.append(profile))
    rc = cli.main(["serve", "--data-dir", str(tmp_path), "--no-auth"])
    err = capsys.readouterr().err
    assert rc == 2 and started == []
    assert "onnxruntime, rembg" in err and "pip install -e '.[tools]'" in err


def test_missing_extras_checks_each_needed_module():
    from graphs import cli

    present = {"rembg", "cv2", "spandrel", "insightface"}
    missing = cli.missing_extras(find_spec=lambda name: object() if name in present else None)
    assert missing == {"tools": ["onnxruntime"]}
    assert cli.missing_extras() == {}  # this test environment has every extra


# --- builder args: `photostudio serve --config FILE --set NAME=VALUE` -----------------------


def test_set_values_are_read_as_yaml_and_win_over_the_config_file(tmp_path):
    from graphs.cli import builder_args

    config = tmp_path / "args.yaml"
    config.write_text("max_batch_size: 2\nauto_tag: true\nrequests_per_minute: 60\n")
    args = builder_args(["max_batch_size=4", "lora-import-dirs=[/data/a, /data/b]",
                         "public_base_url=https://studio.example.com", "project=42x",
                         "batch_wait_timeout_s=0.01"], str(config))
    assert args == {"max_batch_size": 4, "auto_tag": True, "requests_per_minute": 60,
                    "lora_import_dirs": ["/data/a", "/data/b"],
                    "public_base_url": "https://studio.example.com", "project": "42x",
                    "batch_wait_timeout_s": 0.01}


def test_a_serve_config_file_gives_its_gateway_applications_args():
    """serve_config.yaml itself works as --config: the args of its graphs.app:build_app
    application."""
    import yaml

    from graphs.cli import builder_args

    repo = Path(__file__).resolve().parents[1]
    shipped = yaml.safe_load((repo / "serve_config.yaml").read_text())
    [ours] = [a for a in shipped["applications"] if a["import_path"] == "graphs.app:build_app"]
    assert builder_args([], str(repo / "serve_config.yaml")) == ours["args"]


@pytest.mark.parametrize(("sets", "config", "says"), [
    (["auto_tag"], None, "--set takes NAME=VALUE"),
    (["=1"], None, "--set takes NAME=VALUE"),
    ([], "missing.yaml", "cannot read it"),
    ([], "list.yaml", "expected a mapping of builder args"),
    ([], "other_app.yaml", "without an application whose import_path is graphs.app:build_app"),
])
def test_builder_args_that_cannot_be_read_say_what_to_fix(tmp_path, sets, config, says):
    from graphs.cli import UsageError, builder_args

    (tmp_path / "list.yaml").write_text("- auto_tag\n")
    (tmp_path / "other_app.yaml").write_text(
        "applications:\n  - name: x\n    import_path: other:app\n")
    with pytest.raises(UsageError, match=re.escape(says)):
        builder_args(sets, str(tmp_path / config) if config else None)


def test_app_args_names_each_bad_arg_and_the_flags_win():
    from graphs.cli import UsageError, app_args

    args = app_args({"max_batch_size": 4, "profile": "production"}, profile="tiny",
                    auth_enabled=None)
    assert args.max_batch_size == 4 and args.profile == "tiny" and args.auth_enabled is None
    with pytest.raises(UsageError) as bad:
        app_args({"max_batch": 4, "max_batch_size": "many", "handle_transport": "http"})
    message = str(bad.value)
    assert "unknown builder arg 'max_batch' (did you mean max_batch_size?)" in message
    assert "max_batch_size:" in message and "'many'" in message
    assert "handle_transport:" in message and "grpc" in message


def test_serve_refuses_a_bad_builder_arg_before_starting_ray(tmp_path):
    out = subprocess.run([sys.executable, "-m", "graphs.cli", "serve", "--data-dir",
                          str(tmp_path), "--set", "max_batch=4", "--no-dashboard"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "did you mean max_batch_size" in out.stderr
    assert "Starting Ray" not in out.stdout + out.stderr  # refused before Ray started


@pytest.mark.slow
def test_serve_applies_builder_args_given_with_set(served):
    """The served gateway was started with ``--set max_image_pixels=65536``
    (tests/conftest.py `served`): an upload over it is refused with that limit."""
    import io

    import numpy as np
    from PIL import Image

    limit = served.builder_args["max_image_pixels"]
    keys = re.findall(r"psk_[\w-]{43}", served.output)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((300, 300, 3), dtype=np.uint8)).save(buf, format="PNG")
    r = httpx.post(f"{served.url}/v1/images/remove-background", timeout=60,
                   headers={"Authorization": f"Bearer {keys[0]}"},
                   files={"image": ("big.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "image_too_large" and f"the limit is {limit} pixels" in error["message"]
