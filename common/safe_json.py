"""The one way JSON from a client is parsed: `loads`, with a nesting-depth limit.

Python's json module (and so ``json.loads``, FastAPI's body parsing, Starlette's
``request.json()``) recurses once per nested array/object: 10,000 ``[`` raise
``RecursionError``, which is not a ``ValueError`` and became a 500. `check_depth` counts the
nesting with a cheap scan before anything recursive runs; `loads` is ``json.loads`` after it.

`JsonTooDeep` is a `common.errors.InputError` (a ``ValueError``), so callers that already
turn bad JSON into a 400 keep doing so, and `errors.to_api_error` maps it to a 400 naming the
field (the `param` given to `loads`) where it escapes. Depth 64 is far beyond
any request this API takes (edit ops and chat contexts are 2-4 levels deep).

Every place that parses JSON from a client uses this module; FastAPI's own body parsing is
covered by `middleware.RequestPath`, which runs `json_depth_exceeds` on JSON bodies as they
are read.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from common.errors import InputError

MAX_JSON_DEPTH = 64

# A JSON string: cut out before counting (brackets inside strings do not nest).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_CHUNK = 1 << 20


# The depth step of each byte: +1 for [ {, -1 for ] }, else 0.
_STEPS = np.zeros(256, np.int8)
_STEPS[[ord("["), ord("{")]] = 1
_STEPS[[ord("]"), ord("}")]] = -1


class JsonTooDeep(InputError):
    """JSON nested deeper than the limit (arrays and objects count one level each). `what`
    names it in the message; `param` is the request field it came in (None: the body)."""

    def __init__(self, max_depth: int, what: str = "JSON", *, param: str | None = None):
        super().__init__(f"{what} is nested deeper than {max_depth} levels of arrays/objects; "
                         f"send at most {max_depth}", param=param, code="json_too_deep")
        self.max_depth = max_depth
        self.what = what

    def __reduce__(self):  # pickles (Ray) with its own arguments, not the message
        return (type(self), (self.max_depth, self.what), {"param": self.param})


def json_depth_exceeds(data: str | bytes | bytearray | memoryview,
                       max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether `data` (JSON text) nests arrays/objects deeper than `max_depth`.

    Linear and without recursion or a Python loop per character: text with at most
    `max_depth` brackets in all is answered by two ``count`` calls; otherwise strings are cut
    out (brackets inside strings do not nest) and the running depth is a cumulative sum
    (numpy, in chunks). For invalid JSON (an unterminated string) the answer may be True;
    it is rejected either way."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    elif not isinstance(data, bytes):
        data = bytes(data)
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return False
    structure = _STRING.sub(b"", data)
    if structure.count(b"[") + structure.count(b"{") <= max_depth:
        return False
    depth = 0
    for start in range(0, len(structure), _CHUNK):
        chunk = np.frombuffer(structure, np.uint8, offset=start,
                              count=min(_CHUNK, len(structure) - start))
        running = np.cumsum(_STEPS[chunk], dtype=np.int64)
        if depth + int(running.max()) > max_depth:
            return True
        depth += int(running[-1])
    return False


def check_depth(data: str | bytes | bytearray | memoryview, *, max_depth: int = MAX_JSON_DEPTH,
                what: str = "JSON", param: str | None = None) -> None:
    """Raise `JsonTooDeep` (with `param`) when `data` nests deeper than `max_depth`."""
    if json_depth_exceeds(data, max_depth):
        raise JsonTooDeep(max_depth, what, param=param)


def loads(data: str | bytes | bytearray, *, max_depth: int = MAX_JSON_DEPTH,
          what: str = "JSON", param: str | None = None) -> Any:
    """``json.loads`` of client input, after `check_depth`. Raises ``ValueError``
    (``json.JSONDecodeError``, or `JsonTooDeep`, an `InputError` whose `param` is `param`:
    the request field the JSON came in, None for a whole body) for anything that is not
    acceptable JSON. `what` names the JSON in the message ("ops", "the request body")."""
    check_depth(data, max_depth=max_depth, what=what, param=param)
    try:
        return json.loads(data)
    except RecursionError:  # unreachable after check_depth; never a 500 all the same
        raise JsonTooDeep(max_depth, what, param=param) from None


__all__ = ["MAX_JSON_DEPTH", "JsonTooDeep", "check_depth", "json_depth_exceeds", "loads"]
