"""Workflows: typed node graphs (the format, validation, and the executor).

Pure Python: no Ray, no HTTP. The ops' parameter models and the services a node calls are
injected by the ingress (`graphs/workflows.py`), so the routes' own pydantic models validate a
node's params and the nodes call the same code paths as the routes.
"""

from workflows.engine import Engine, NodeContext, NodeFailed, RunResult
from workflows.graph import (
    Catalogue,
    Graph,
    Limits,
    Node,
    OpSpec,
    Port,
    Problem,
    ValidGraph,
    WorkflowInvalid,
    validate,
)

__all__ = ["Catalogue", "Engine", "Graph", "Limits", "Node", "NodeContext", "NodeFailed",
           "OpSpec", "Port", "Problem", "RunResult", "ValidGraph", "WorkflowInvalid",
           "validate"]
