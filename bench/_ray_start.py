"""`ray start` with more patience: Ray gives a new node's raylet 30 s (hard-coded in
`ray._private.node.Node`) to appear in the GCS, which a loaded 2-core machine running several
clusters misses (GCS answers took over a minute at load average 90). This runs Ray's own CLI
with `services.get_node` retrying for up to RAY_START_NODE_WAIT_S (default 300 s) first.

    python -m bench._ray_start start --block --head ...   (bench/_cluster.py uses it)
"""

from __future__ import annotations

import os
import sys
import time

import ray._private.services as services

_get_node = services.get_node
WAIT_S = float(os.environ.get("RAY_START_NODE_WAIT_S", "300"))


def _patient_get_node(*args, **kwargs):
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return _get_node(*args, **kwargs)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


services.get_node = _patient_get_node

if __name__ == "__main__":
    from ray.scripts.scripts import main

    sys.argv[0] = "ray"
    sys.exit(main())
