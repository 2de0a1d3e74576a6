"""`photostudio` command line: run the gateway locally, build the tiny model zoo.

    photostudio serve [--profile tiny|local|production] [--host H] [--port N] [--gpus N]
    photostudio zoo build [--zoo-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console

from storage import cli as storage_cli

console = Console(stderr=True)


def _serve(ns: argparse.Namespace) -> int:
    from graphs.settings import Settings

    settings = Settings()
    profile = ns.profile or settings.profile
    data_dir = Path(ns.data_dir or settings.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if profile != "production":
        # Ray 2.60 turns token auth on by default; a local single-user gateway doesn't need it.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's unix sockets live under its temp dir and must stay under ~107 characters.
    ray_tmp = data_dir / "ray"
    if len(str(ray_tmp)) > 48:
        ray_tmp = Path("/tmp") / f"photostudio-ray-{os.getuid()}"
        console.print(f"[yellow]data dir path is long; Ray temp files go to {ray_tmp}")

    import ray
    from ray import serve

    from graphs.app import AppArgs, build_app

    # Logical CPUs, not cores: the graph's six deployments ask for ~5.5 CPUs between them, and
    # on a small machine they share the cores (the models mostly wait on each other anyway).
    init_kwargs: dict = {"_temp_dir": str(ray_tmp), "include_dashboard": ns.dashboard,
                         "num_cpus": max(8, os.cpu_count() or 1)}
    if ns.gpus is not None:
        init_kwargs["num_gpus"] = ns.gpus  # logical GPUs: lets fractions schedule anywhere
    if ns.address:
        init_kwargs = {"address": ns.address}
    where = f"connecting to {ns.address}" if ns.address else "local"
    console.print(f"[bold]Starting Ray[/] ({where})")
    ray.init(**init_kwargs, logging_level=logging.WARNING)
    stop = threading.Event()

    def _on_signal(signum, _frame):
        console.print(f"[bold]Received {signal.Signals(signum).name}, shutting down…")
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        serve.start(http_options={"host": ns.host or settings.host,
                                  "port": ns.port or settings.port})
        args = AppArgs(profile=profile, data_dir=str(data_dir), generator_model=ns.model,
                       use_gpu=(ns.gpus or 0) > 0 or None)
        console.print(f"[bold]Deploying[/] profile={profile} (first start may build tiny models)")
        serve.run(build_app(args), name="photostudio", route_prefix="/", blocking=False)
        url = f"http://{ns.host or settings.host}:{ns.port or settings.port}"
        console.print(f"[green bold]Photo Studio Gateway is up:[/] {url}  (docs: {url}/docs)")
        console.print("Press Ctrl-C to stop.")
        while not stop.wait(1.0):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        console.print("[bold]Stopped.")
    return 0


def _zoo_build(ns: argparse.Namespace) -> int:
    from models import zoo

    names = ns.names or list(zoo.BUILDERS)
    for name in names:
        path = zoo.ensure(name, ns.zoo_dir)
        console.print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="photostudio", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start a local Ray cluster and deploy the gateway")
    p.add_argument("--profile", choices=["tiny", "local", "production"], default=None,
                   help="default: $PHOTOSTUDIO_PROFILE or tiny")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--gpus", type=float, default=None,
                   help="logical GPUs to declare to Ray (default: what Ray detects)")
    p.add_argument("--model", default=None, help="generator model name (see registry)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--address", default=None, help="connect to an existing Ray cluster")
    p.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True,
                   help="start the Ray dashboard (http://127.0.0.1:8265)")
    p.set_defaults(func=_serve)

    z = sub.add_parser("zoo", help="tiny model zoo")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zb = zsub.add_parser("build", help="build tiny models (all by default)")
    zb.add_argument("names", nargs="*")
    zb.add_argument("--zoo-dir", default=None)
    zb.set_defaults(func=_zoo_build)

    storage_cli.add_subcommands(sub)  # db upgrade|check, storage cleanup

    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
