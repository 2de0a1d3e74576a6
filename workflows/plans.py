"""Chat plans are workflows: a router `Plan` becomes the workflow graph the engine runs (the
chat has no executor of its own), the same graph `/v1/chat/plan` returns and a user can save.

Node ids: ``upload<k>`` (the message's k-th image), ``session`` (the session's last image),
``step<i>`` (plan step i) and ``step<i>_refine`` (its prompt refinement). An uploaded image is
referenced as asset id ``upload:<k>``: the caller supplies those images when it runs the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from router.schemas import Plan

# plan intent -> workflow op
INTENT_OPS = {"image_generation": "generate", "image_edit": "edit",
              "style_transfer": "style_transfer", "background_removal": "remove_background",
              "upscale": "upscale", "face_swap": "face_swap"}
UPLOAD_PREFIX = "upload:"
MAX_REFERENCES = 3  # edit's reference ports: reference, reference2, reference3


def upload_ref(index: int) -> str:
    return f"{UPLOAD_PREFIX}{index}"


def plan_workflow(plan: Plan, *, session_image: str | None = None,
                  fit_size: Callable[[int, int], tuple[int, int]] | None = None
                  ) -> tuple[dict[str, Any], dict[str, str]]:
    """The workflow of `plan` and the plan intent of each step node. `fit_size(w, h)`: an
    asked-for size fitted to the generator's limits (None: kept as asked)."""
    nodes: dict[str, dict[str, Any]] = {}
    intents: dict[str, str] = {}
    step_node: dict[int, str] = {}

    def source(ref) -> str:
        if ref.source == "upload":
            node = f"upload{ref.index or 0}"
            nodes.setdefault(node, {"op": "image_input",
                                    "params": {"asset_id": upload_ref(ref.index or 0)}})
            return f"{node}.image"
        if ref.source == "previous_step":
            index = ref.index if ref.index is not None else max(step_node)
            return f"{step_node[index]}.image"
        image_id = ref.image_id or session_image
        node = "session" if image_id == session_image else f"image_{len(nodes)}"
        nodes.setdefault(node, {"op": "image_input", "params": {"asset_id": image_id}})
        return f"{node}.image"

    last = None
    for i, step in enumerate(plan.steps):
        op = INTENT_OPS.get(step.intent)
        if op is None:  # general: a text answer, no node
            continue
        p = step.params
        node_id = f"step{i}"
        node: dict[str, Any] = {"op": op, "params": {}, "in": {}}
        refs: dict[str, list[str]] = {}
        for ref in step.inputs:
            refs.setdefault(ref.role, []).append(source(ref))
        if op in ("generate", "edit"):
            refine = f"{node_id}_refine"
            nodes[refine] = {"op": "refine", "params": {
                "text": p.get("prompt") or "an image",
                **({"style": p["style"]} if p.get("style") else {})}}
            node["in"].update(prompt=f"{refine}.prompt",
                              negative_prompt=f"{refine}.negative_prompt")
            node["params"].update({k: p[k] for k in ("n", "seed", "negative_prompt")
                                   if p.get(k) is not None})
            if "width" in p and "height" in p:
                w, h = fit_size(p["width"], p["height"]) if fit_size else (p["width"],
                                                                          p["height"])
                node["params"]["size"] = f"{w}x{h}"
            if op == "edit":
                node["in"]["image"] = refs["image"][0]
                for k, ref in enumerate(refs.get("reference", [])[:MAX_REFERENCES]):
                    node["in"]["reference" if k == 0 else f"reference{k + 1}"] = ref
        elif op == "face_swap":
            node["in"].update(source=refs["source_face"][0], target=refs["target"][0])
            node["params"].update({k: p[k] for k in ("target_face_index", "all_faces")
                                   if p.get(k) is not None})
        else:
            node["in"]["image"] = refs["image"][0]
            if op == "upscale":
                node["params"]["scale"] = int(p.get("scale") or 2)
            elif op == "style_transfer":
                node["params"].update(style=p.get("style") or "watercolor",
                                      **{k: p[k] for k in ("prompt", "seed")
                                         if p.get(k) is not None})
        if not node["in"]:
            del node["in"]
        if not node["params"]:
            del node["params"]
        nodes[node_id] = node
        intents[node_id] = step.intent
        step_node[i] = node_id
        last = node_id
    graph = {"nodes": nodes, "outputs": [f"{last}.image"] if last else []}
    return graph, intents
