"""Make `import torchvision` survive CPU torch with a CUDA torchvision wheel.

PyPI's torchvision wheels are CUDA builds; with the CPU torch build their ``_C`` extension
can't load, and ``torchvision/_meta_registrations.py`` then crashes the import with
"operator torchvision::nms does not exist" (pytorch/vision#9085). That crash also breaks
transformers (which imports torchvision when it is installed) and spandrel.

`install_torchvision_guard()` (called from ``models/__init__``, and by
``router.embeddings`` before sentence-transformers loads) adds an import hook that is
free until something imports torchvision; then it imports it for real and, only if it hits
that exact crash, declares the two missing operator schemas (no kernels: torchvision.ops.nms
stays unusable, as it is anyway without ``_C``) and retries. With CUDA torch, or a matching
CPU torchvision, the first import just works and nothing is declared.

In `common/` because both `models/` and `router/` need it. torch and torchvision are imported
inside the functions, only when something asks for torchvision.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

_STUB_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_stub_lib: Any = None  # must stay referenced: dropping it undoes the definitions


def _declare_missing_ops() -> list[str]:
    global _stub_lib
    import torch

    declared = []
    for name, schema in _STUB_OPS.items():
        try:
            getattr(torch.ops.torchvision, name)
            continue  # exists (loaded _C, or declared before)
        except (AttributeError, RuntimeError):
            pass
        if _stub_lib is None:
            _stub_lib = torch.library.Library("torchvision", "FRAGMENT")
        _stub_lib.define(schema)
        declared.append(name)
    return declared


def import_torchvision() -> Any:
    """Import torchvision, applying the workaround above when (and only when) needed."""
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        declared = _declare_missing_ops()
        logger.info("torchvision's C++ ops did not load (CPU torch with a CUDA torchvision "
                    "wheel); declared stub schemas for %s so it imports", declared)
        import torchvision
    return torchvision


class _Loaded(importlib.abc.Loader):
    def __init__(self, module):
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        return None


class _TorchvisionGuard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot; also keeps the real import below unhooked
        if importlib.machinery.PathFinder.find_spec(name, path) is None:
            return None  # not installed: let the import fail normally
        module = import_torchvision()
        return importlib.machinery.ModuleSpec(name, _Loaded(module), is_package=True)


def install_torchvision_guard() -> None:
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionGuard)
                                           for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionGuard())
