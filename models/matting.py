"""Background removal on rembg sessions: cutout (RGBA), mask (L) or a solid background (RGB).

Weights are ONNX files. rembg's session classes (``rembg.sessions``) supply the model-specific
pre- and post-processing (``normalize``/``predict``) and ``rembg.remove`` does the compositing
(cutout, alpha matting, background colour); this module only decides *which file* a session
opens and batches concurrent images into one ONNX run.

Where weights come from (one code path for real and tiny models):

- ``rembg:<name>`` (``u2net``, ``isnet-general-use``, ``birefnet-general``, ...): the file
  ``<name>.onnx`` where rembg keeps it, ``<home>/models/<name>/<name>.onnx`` (``home`` is
  ``$REMBG_HOME``, default ``~/.rembg``; rembg's legacy ``~/.u2net`` is read too), as put there
  by ``rembg d <name>`` or a manual copy. A missing file is an ``OSError`` telling how to get
  it; nothing is ever downloaded.
- a path to an ``.onnx`` file, or to a folder holding exactly one (the tiny zoo model
  ``tiny-u2net`` is such a folder). The session class comes from the model name (for
  ``tiny-u2net`` rembg's ``u2net_custom``: 320x320 input, ImageNet normalisation, side output
  0 read as the mask, exactly like U²-Net).

The session subclass made here returns the located file from ``download_models`` (so rembg
never reaches its downloader) and pins ``rembg_home`` when a home is given; the rest of the
session -- and of ``rembg.remove`` -- is rembg's own code.

Batching (on GPU by default; on CPU it measured no faster, see DEFAULT_MAX_BATCH_IMAGES): when
the ONNX input has a dynamic batch axis, each image goes through the session's
own ``predict`` once with a recording stand-in for the ONNX session (this captures exactly the
tensor rembg's ``normalize`` makes), the tensors are stacked into one ONNX run, and each image's
slice of the outputs is replayed through ``predict`` for rembg's post-processing.

rembg, onnxruntime and torch are imported lazily: importing this module is cheap. (The
first ``import rembg`` on a machine compiles numba code for ~80 s; it is cached afterwards.)
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from common.errors import InputError
from models.base import LoadedInfo, ModelFamily
from models.base import check_image as _check_image
from models.registry import ModelSpec, catalogue, resolve

logger = logging.getLogger(__name__)

OutputMode = Literal["cutout", "mask", "solid"]
OUTPUT_MODES: tuple[str, ...] = ("cutout", "mask", "solid")

MAX_SIDE = 4096  # longest accepted image side (pixels)
MAX_ERODE_SIZE = 64
# pymatting's closed-form alpha matting grows fast with size (measured, 2 cores, a soft-edged
# disc: 0.25 MP 0.8 s / 0.4 GB, 1 MP 3.2 s / 0.8 GB, 4 MP 16 s / 2.5 GB): cap it at 2048x2048.
MAX_ALPHA_MATTING_PIXELS = 2048 * 2048
DEFAULT_BG_COLOR = (255, 255, 255)
# Images per ONNX run by default. On CPU (2 cores, 640x480 images, U²-Net-shaped models of
# 8-64 channels, 1 or 2 onnxruntime threads) 8 images per run measured within +-8 % of one
# image per run, i.e. no gain, and batches hold 8x the activations: CPU runs one image at a
# time. GPUs batch.
DEFAULT_MAX_BATCH_IMAGES = {"cuda": 8, "cpu": 1}

TINY_NAME = "tiny-u2net"
TINY_FILE = "tiny-u2net.onnx"

# Model name -> rembg session class (by its rembg name) that pre/post-processes for it.
_SESSION_KIND: dict[str, str] = {TINY_NAME: "u2net_custom"}


def rembg_models() -> list[str]:
    """Catalogue matting models that are rembg session names (source ``rembg:<name>``)."""
    return [spec.name for spec in catalogue("matting") if spec.source == f"rembg:{spec.name}"]


def session_kind_for(name: str) -> str:
    """The rembg session (pre/post-processing) used for model `name`."""
    if name in _SESSION_KIND:
        return _SESSION_KIND[name]
    if name in rembg_models():
        return name
    return "u2net_custom"  # U²-Net-style I/O: 320x320, ImageNet mean/std, output 0


# --- requests / results --------------------------------------------------------------------

@dataclass
class MattingRequest:
    """One image (HxWx3 RGB or HxWx4 RGBA uint8) and what to make of it."""

    image: np.ndarray
    output: OutputMode = "cutout"
    bg_color: tuple[int, int, int] | None = None  # output="solid" only; default white
    alpha_matting: bool = False
    alpha_matting_foreground_threshold: int = 240
    alpha_matting_background_threshold: int = 10
    alpha_matting_erode_size: int = 10
    post_process_mask: bool = False


@dataclass
class MattingResult:
    """`image`: HxWx4 RGBA (cutout), HxW uint8 L (mask) or HxWx3 RGB (solid)."""

    image: np.ndarray
    output: OutputMode
    model: str
    batch_size: int  # images in the ONNX run that computed this mask
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        """PIL mode of `image`: "RGBA", "L" or "RGB"."""
        return {"cutout": "RGBA", "mask": "L", "solid": "RGB"}[self.output]


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer between {low} and {high}, got {value!r}",
                         param=name)
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low} and {high}, got {value}", param=name)


def check_image(image: Any, *, name: str = "image", max_side: int = MAX_SIDE) -> None:
    """Raise `InputError` (param `name`) unless `image` is an HxWx3/HxWx4 uint8 array with sane
    sides."""
    _check_image(image, name=name, max_side=max_side)


def check_inputs(req: MattingRequest, *, max_side: int = MAX_SIDE) -> None:
    """Raise `InputError` (a `ValueError`) naming the field (`param`) and the allowed values;
    a plain `ValueError` for something that is not a request at all (a caller's bug)."""
    if not isinstance(req, MattingRequest):
        raise ValueError(f"request must be a MattingRequest, got {type(req).__name__}")
    check_image(req.image, max_side=max_side)
    if req.output not in OUTPUT_MODES:
        raise InputError(f"output must be one of {', '.join(OUTPUT_MODES)}; got {req.output!r}",
                         param="output")
    if req.bg_color is not None:
        if req.output != "solid":
            raise InputError(f"bg_color is only used with output 'solid', not {req.output!r}",
                             param="bg_color")
        if (
            not isinstance(req.bg_color, (tuple, list))
            or len(req.bg_color) != 3
            or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c <= 255
                   for c in req.bg_color)
        ):
            raise InputError(
                f"bg_color must be three integers 0-255 (r, g, b), got {req.bg_color!r}",
                param="bg_color",
            )
    for flag in ("alpha_matting", "post_process_mask"):
        if not isinstance(getattr(req, flag), (bool, np.bool_)):
            raise InputError(f"{flag} must be true or false, got {getattr(req, flag)!r}",
                             param=flag)
    if req.alpha_matting:
        if req.output == "mask":
            raise InputError("alpha_matting only applies to output 'cutout' or 'solid', not "
                             "'mask'", param="alpha_matting")
        _check_int("alpha_matting_foreground_threshold", req.alpha_matting_foreground_threshold,
                   1, 255)
        _check_int("alpha_matting_background_threshold", req.alpha_matting_background_threshold,
                   0, 254)
        if req.alpha_matting_background_threshold >= req.alpha_matting_foreground_threshold:
            raise InputError(
                "alpha_matting_background_threshold must be below "
                f"alpha_matting_foreground_threshold, got {req.alpha_matting_background_threshold}"
                f" >= {req.alpha_matting_foreground_threshold}",
                param="alpha_matting_background_threshold",
            )
        _check_int("alpha_matting_erode_size", req.alpha_matting_erode_size, 0, MAX_ERODE_SIZE)
        height, width = req.image.shape[:2]
        if height * width > MAX_ALPHA_MATTING_PIXELS:
            raise InputError(
                f"alpha_matting works on images of at most {MAX_ALPHA_MATTING_PIXELS:,} pixels "
                f"(e.g. 2048x2048), got {width}x{height}; downscale the image or turn it off",
                param="alpha_matting",
            )


# --- weights --------------------------------------------------------------------------------

def _rembg_session_class(kind: str):
    from rembg.sessions import sessions

    if kind not in sessions:
        raise ValueError(f"unknown rembg session {kind!r}; available: {', '.join(sessions)}")
    return sessions[kind]


def _home_class(kind: str, home: str | os.PathLike | None):
    """rembg's session class for `kind`, with its model home pinned to `home` if given."""
    base = _rembg_session_class(kind)
    if home is None:
        return base
    pinned = os.path.abspath(os.path.expanduser(os.fspath(home)))
    return type(base.__name__, (base,), {
        "rembg_home": classmethod(lambda cls, *a, **k: pinned),
        "legacy_home": classmethod(lambda cls, *a, **k: pinned),
    })


def locate_rembg_model(name: str, *, home: str | os.PathLike | None = None) -> Path:
    """The ONNX file of rembg model `name` (`rembg d <name>` layout); `OSError` if absent.

    Never downloads. `home` replaces rembg's home (``$REMBG_HOME``, default ``~/.rembg``).
    """
    if name not in rembg_models():
        raise ValueError(f"unknown rembg model {name!r}; available: {', '.join(rembg_models())}")
    cls = _home_class(name, home)
    fname = f"{name}.onnx"
    found = cls.resolve_existing(fname)
    if found is None:
        target = os.path.join(cls.model_dir(), fname)
        raise OSError(
            f"rembg model {name!r} is not on this machine (looked for {target}"
            + ("" if home is not None else f" and {os.path.join(cls.legacy_home(), fname)}")
            + f"). Get it where there is network access with `rembg d {name}` (it writes "
            f"$REMBG_HOME/models/{name}/{fname}) and copy the file to {target}, or point "
            "source at a local .onnx file"
        )
    return Path(found)


def locate_model_file(location: str | os.PathLike) -> Path:
    """An .onnx file, or a folder holding exactly one; `OSError` otherwise."""
    path = Path(location).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        files = sorted(path.glob("*.onnx"))
        if len(files) == 1:
            return files[0]
        raise OSError(
            f"model folder {str(path)!r} must hold exactly one .onnx file, found "
            f"{[f.name for f in files] or 'none'}; pass the file itself"
        )
    raise OSError(f"no model file at {str(path)!r}")


GraphOptimization = Literal["auto", "all", "extended", "basic", "disabled"]
GRAPH_OPTIMIZATIONS: tuple[str, ...] = get_args(GraphOptimization)
_ORT_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED",
               "basic": "ORT_ENABLE_BASIC", "disabled": "ORT_DISABLE_ALL"}
# `auto` on CPU: what it compares (onnxruntime's default, and the same without its layout
# transformations), and how many timed runs of each
AUTO_CANDIDATES = ("all", "extended")
AUTO_RUNS = 2


def _open_session(kind: str, model_file: Path, *, providers: list[Any], threads: int | None,
                  home: str | os.PathLike | None, graph_optimization: str = "all"):
    """A rembg session of class `kind` on `model_file` (like `rembg.new_session`, no download),
    its graph optimized at `graph_optimization` (onnxruntime's level; not "auto")."""
    import onnxruntime as ort

    base = _home_class(kind, home)
    located = str(model_file.resolve())

    class Session(base):  # type: ignore[misc, valid-type]
        @classmethod
        def download_models(cls, *args: Any, **kwargs: Any) -> str:
            return located  # the family located the file; rembg never downloads

    Session.__name__ = Session.__qualname__ = base.__name__
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    elif "OMP_NUM_THREADS" in os.environ:  # as rembg.new_session does
        opts.intra_op_num_threads = opts.inter_op_num_threads = int(os.environ["OMP_NUM_THREADS"])
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                            _ORT_LEVELS[graph_optimization])
    # model_path is what rembg's *_custom sessions require; the others ignore it.
    return Session(kind, opts, providers=providers, model_path=located)


def _feed_of(session: Any, image: Any) -> dict[str, np.ndarray]:
    """The ONNX input rembg's `predict` gives the session for `image` (its own `normalize`:
    the model's input size and layout), without running the model."""
    captured = copy.copy(session)  # shallow: shares the ONNX session
    captured.inner_session = recorder = _Recorder(session.inner_session)
    try:
        captured.predict(image)
    except _Captured:
        pass
    if recorder.feed is None:
        raise RuntimeError(f"{type(session).__name__}.predict ran no ONNX session")
    return recorder.feed


def _seconds_per_run(session: Any, feed: dict[str, np.ndarray], runs: int) -> float:
    session.inner_session.run(None, feed)  # the first run allocates
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        session.inner_session.run(None, feed)
        best = min(best, time.process_time() - started)
    return best


def _open_calibrated(kind: str, model_file: Path, *, providers: list[Any], threads: int | None,
                     home: str | os.PathLike | None, graph_optimization: str
                     ) -> tuple[Any, str, dict[str, float]]:
    """(session, the level it uses, CPU ms per run of each level timed). `auto` on CPU opens
    the model at each of `AUTO_CANDIDATES` and keeps the one whose run of the model's input
    took less CPU: onnxruntime's `all` adds layout transformations (NCHWc) that speed up wide
    convolutions (a U²-Net of real width: 151 vs 239 ms) and slow down narrow ones (the tiny
    zoo model: 39 vs 33 ms; BENCHMARKS.md, "Background removal"). On CUDA, `auto` is `all`."""
    def open_at(level: str) -> Any:
        return _open_session(kind, model_file, providers=providers, threads=threads, home=home,
                             graph_optimization=level)

    if graph_optimization not in GRAPH_OPTIMIZATIONS:
        raise ValueError(f"graph_optimization must be one of {', '.join(GRAPH_OPTIMIZATIONS)}, "
                         f"got {graph_optimization!r}")
    if graph_optimization != "auto":
        return open_at(graph_optimization), graph_optimization, {}
    first = open_at(AUTO_CANDIDATES[0])
    if first.inner_session.get_providers()[0] != "CPUExecutionProvider":
        return first, AUTO_CANDIDATES[0], {}
    feed = _feed_of(first, Image.new("RGB", (64, 64), (128, 128, 128)))
    sessions = {AUTO_CANDIDATES[0]: first}
    timed = {AUTO_CANDIDATES[0]: _seconds_per_run(first, feed, AUTO_RUNS)}
    for level in AUTO_CANDIDATES[1:]:
        sessions[level] = open_at(level)
        timed[level] = _seconds_per_run(sessions[level], feed, AUTO_RUNS)
    chosen = min(timed, key=timed.__getitem__)
    return sessions[chosen], chosen, {k: round(v * 1e3, 2) for k, v in timed.items()}


def _providers(device: str | None) -> list[Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in (None, "auto"):
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                "device 'cuda' asked for but onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu"
            )
        index = device.partition(":")[2] or "0"
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    if device != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return ["CPUExecutionProvider"]


# --- batching through rembg's own predict ---------------------------------------------------

class _Captured(Exception):
    pass


class _Recorder:
    """Stands in for the ONNX session during `predict`: keeps the input feed, stops predict."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.feed: dict[str, np.ndarray] | None = None

    def get_inputs(self):
        return self._inner.get_inputs()

    def get_outputs(self):
        return self._inner.get_outputs()

    def run(self, output_names, feed, *args, **kwargs):
        if self.feed is not None:
            raise RuntimeError("predict ran the ONNX session more than once; cannot batch it")
        self.feed = feed
        raise _Captured


class _Replay:
    """Stands in for the ONNX session during `predict`: returns precomputed outputs."""

    def __init__(self, inner: Any, outputs: list[np.ndarray]):
        self._inner = inner
        self._outputs = outputs

    def get_inputs(self):
        return self._inner.get_inputs()

    def get_outputs(self):
        return self._inner.get_outputs()

    def run(self, output_names, feed, *args, **kwargs):
        return self._outputs


class _FixedMasks:
    """A session for `rembg.remove` whose prediction is already made."""

    def __init__(self, masks: list[Any]):
        self._masks = masks

    def predict(self, img, *args, **kwargs):
        return self._masks


# --- the family ------------------------------------------------------------------------------

class MattingModel(ModelFamily):
    """One rembg session (one ONNX InferenceSession), reused for every call."""

    family = "matting"
    kind = "matting"

    def __init__(self, session: Any, *, info: LoadedInfo, max_side: int = MAX_SIDE):
        self._session = session
        self._info = info
        self.max_side = max_side
        shape = session.inner_session.get_inputs()[0].shape
        self.batchable = bool(shape) and not isinstance(shape[0], int)

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str, *, name: str, device: str | None = None,
             session_kind: str | None = None, home: str | os.PathLike | None = None,
             threads: int | None = None, tiny: bool = False,
             fallback_reason: str | None = None, max_side: int = MAX_SIDE,
             graph_optimization: GraphOptimization = "auto") -> MattingModel:
        """Open `source`: ``rembg:<name>`` (a file in the rembg home) or an .onnx path/folder.
        `graph_optimization`: onnxruntime's graph optimization level; ``auto`` (on CPU) times
        the model at ``all`` and ``extended`` once at load and keeps the faster
        (`_open_calibrated`)."""
        kind = session_kind or session_kind_for(name)
        if source.startswith("rembg:"):
            model_file = locate_rembg_model(source.removeprefix("rembg:"), home=home)
        else:
            model_file = locate_model_file(source)
        started = time.perf_counter()
        session, level, timed = _open_calibrated(
            kind, model_file, providers=_providers(device), threads=threads, home=home,
            graph_optimization=graph_optimization)
        inner = session.inner_session
        active = inner.get_providers()
        input_meta = inner.get_inputs()[0]
        logger.info("loaded matting model %s (%s session) from %s on %s in %.3fs, graph "
                    "optimization %s%s", name, kind, model_file, active[0],
                    time.perf_counter() - started, level,
                    f" (CPU ms per run: {timed})" if timed else "")
        info = LoadedInfo(
            name=name,
            family=cls.family,
            source=str(model_file),
            tiny=tiny,
            device="cuda" if active[0] == "CUDAExecutionProvider" else "cpu",
            dtype={"tensor(float)": "float32", "tensor(float16)": "float16"}.get(
                input_meta.type, input_meta.type),
            fallback_reason=fallback_reason,
            extra={"session": kind, "providers": active, "input_shape": list(input_meta.shape),
                   "graph_optimization": level, "graph_optimization_ms": timed},
        )
        return cls(session, info=info, max_side=max_side)

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, zoo_dir: str | os.PathLike | None = None,
                  allow_fallback: bool = False, device: str | None = None,
                  home: str | os.PathLike | None = None, **kwargs: Any) -> MattingModel:
        """Resolve a spec (tiny zoo, ``rembg:<name>`` or a path) to a file and load it."""

        def check(location: str) -> None:
            if location.startswith("rembg:"):
                locate_rembg_model(location.removeprefix("rembg:"), home=home)
            else:
                locate_model_file(location)

        # tiny fallbacks are registry models (models/registry.py): one fallback policy
        resolved = resolve(spec, zoo_dir=zoo_dir, load_check=check,
                           allow_fallback=allow_fallback)
        return cls.load(resolved.location, name=resolved.spec.name, device=device, home=home,
                        tiny=resolved.spec.tiny, fallback_reason=resolved.fallback_reason,
                        **kwargs)

    @property
    def info(self) -> LoadedInfo:
        return self._info

    # -- inference ------------------------------------------------------------------------
    def run(self, requests: Sequence[MattingRequest], *, max_batch_images: int | None = None,
            on_batch: Callable[[int], None] | None = None) -> list[MattingResult]:
        """Process requests (any mix of options); their masks are predicted in ONNX runs of up
        to `max_batch_images` images (default `self.max_batch_images`); `on_batch(n)` is called
        after each run of n images."""
        for req in requests:
            check_inputs(req, max_side=self.max_side)
        return self._run(list(requests), max_batch_images=max_batch_images, on_batch=on_batch)

    def remove(
        self,
        images: Sequence[np.ndarray],
        *,
        output: OutputMode = "cutout",
        bg_color: tuple[int, int, int] | None = None,
        alpha_matting: bool = False,
        alpha_matting_foreground_threshold: int = 240,
        alpha_matting_background_threshold: int = 10,
        alpha_matting_erode_size: int = 10,
        post_process_mask: bool = False,
        max_batch_images: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[MattingResult]:
        """Remove the background of each image, all with the same options (see `run`)."""
        if isinstance(images, np.ndarray) or not isinstance(images, Sequence) or not images:
            raise ValueError("images must be a non-empty list of HxWx3/HxWx4 uint8 arrays")
        for i, image in enumerate(images):
            check_image(image, name=f"images[{i}]", max_side=self.max_side)
        requests = [
            MattingRequest(
                image=image, output=output, bg_color=bg_color, alpha_matting=alpha_matting,
                alpha_matting_foreground_threshold=alpha_matting_foreground_threshold,
                alpha_matting_background_threshold=alpha_matting_background_threshold,
                alpha_matting_erode_size=alpha_matting_erode_size,
                post_process_mask=post_process_mask,
            )
            for image in images
        ]
        return self.run(requests, max_batch_images=max_batch_images, on_batch=on_batch)

    @property
    def max_batch_images(self) -> int:
        """Images per ONNX run when the caller does not say: 1 unless batching pays off."""
        return DEFAULT_MAX_BATCH_IMAGES[self._info.device] if self.batchable else 1

    def _run(self, requests: list[MattingRequest], *, max_batch_images: int | None,
             on_batch: Callable[[int], None] | None) -> list[MattingResult]:
        if not requests:
            return []
        pil_images = [Image.fromarray(req.image) for req in requests]
        masks: list[Any] = [None] * len(requests)
        sizes: list[int] = [1] * len(requests)
        seconds: list[float] = [0.0] * len(requests)
        if max_batch_images is None:
            max_batch_images = self.max_batch_images
        step = max(1, max_batch_images) if self.batchable else 1
        for start in range(0, len(requests), step):
            idx = list(range(start, min(start + step, len(requests))))
            started = time.perf_counter()
            chunk = self._predict([pil_images[i] for i in idx])
            elapsed = time.perf_counter() - started
            if on_batch is not None:
                on_batch(len(idx))
            for i, mask in zip(idx, chunk, strict=True):
                masks[i], sizes[i], seconds[i] = mask, len(idx), elapsed
        return [
            self._compose(req, img, mask, size, secs)
            for req, img, mask, size, secs in zip(requests, pil_images, masks, sizes, seconds,
                                                   strict=True)
        ]

    def _predict(self, images: list[Any]) -> list[Any]:
        """One mask (PIL "L", image size) per image, from one ONNX run."""
        if len(images) == 1:
            return [self._one_mask(self._session.predict(images[0]))]
        feeds = [_feed_of(self._session, img) for img in images]
        names = list(feeds[0])
        stacked = {n: np.concatenate([f[n] for f in feeds], axis=0) for n in names}
        outputs = self._session.inner_session.run(None, stacked)
        masks = []
        for k, (img, feed) in enumerate(zip(images, feeds, strict=True)):
            replay = copy.copy(self._session)
            replay.inner_session = _Replay(self._session.inner_session,
                                           [out[k:k + 1] for out in outputs])
            replay.normalize = lambda *args, _feed=feed, **kwargs: _feed
            masks.append(self._one_mask(replay.predict(img)))
        return masks

    @staticmethod
    def _one_mask(masks: list[Any]) -> Any:
        if len(masks) != 1:
            raise RuntimeError(f"expected one mask per image from the session, got {len(masks)}")
        return masks[0]

    def _compose(self, req: MattingRequest, img: Any, mask: Any, batch_size: int,
                 inference_s: float) -> MattingResult:
        from rembg import remove

        started = time.perf_counter()
        bgcolor = None
        if req.output == "solid":
            bgcolor = (*(req.bg_color or DEFAULT_BG_COLOR), 255)
        out = remove(
            img,
            session=_FixedMasks([mask]),
            only_mask=req.output == "mask",
            post_process_mask=req.post_process_mask,
            alpha_matting=req.alpha_matting,
            alpha_matting_foreground_threshold=req.alpha_matting_foreground_threshold,
            alpha_matting_background_threshold=req.alpha_matting_background_threshold,
            alpha_matting_erode_size=req.alpha_matting_erode_size,
            bgcolor=bgcolor,
        )
        want = {"cutout": "RGBA", "mask": "L", "solid": "RGB"}[req.output]
        if out.mode != want:
            out = out.convert(want)
        return MattingResult(
            image=np.array(out),
            output=req.output,
            model=self._info.name,
            batch_size=batch_size,
            timings={"inference_s": inference_s, "compose_s": time.perf_counter() - started},
        )


# --- tiny zoo model ------------------------------------------------------------------------

def _tiny_u2net_module(width: int = 8, mid: int = 4):
    """A small U²-Net: RSU blocks in an encoder/decoder, sigmoid side outputs and a fused one."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class ConvBNReLU(nn.Module):  # U²-Net's REBNCONV
        def __init__(self, cin: int, cout: int, dilation: int = 1):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    def up(x, factor: int = 2):  # 320 = 5 * 2**6: every level halves exactly
        return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)

    class RSU(nn.Module):
        """Residual U-block of `height` levels (RSU-L); `dilated` is U²-Net's RSU-4F."""

        def __init__(self, height: int, cin: int, cmid: int, cout: int, dilated: bool = False):
            super().__init__()
            self.dilated = dilated
            self.inp = ConvBNReLU(cin, cout)
            rates = [2 ** i if dilated else 1 for i in range(height)]
            self.enc = nn.ModuleList(
                [ConvBNReLU(cout, cmid, rates[0])]
                + [ConvBNReLU(cmid, cmid, r) for r in rates[1:]]
            )
            self.dec = nn.ModuleList(
                [ConvBNReLU(2 * cmid, cmid, r) for r in reversed(rates[1:-1])]
                + [ConvBNReLU(2 * cmid, cout, rates[0])]
            )

        def forward(self, x):
            xin = self.inp(x)
            feats = []
            h = xin
            for i, conv in enumerate(self.enc):
                if i and not self.dilated and i < len(self.enc) - 1:
                    h = F.max_pool2d(h, 2, ceil_mode=True)
                h = conv(h)
                feats.append(h)
            h = feats.pop()
            for j, conv in enumerate(self.dec):
                skip = feats.pop()
                if j and not self.dilated:  # the bottom level was not pooled; the others were
                    h = up(h)
                h = conv(torch.cat([h, skip], 1))
            return h + xin

    class TinyU2Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stage1 = RSU(4, 3, mid, width)
            self.stage2 = RSU(3, width, mid, width)
            self.stage3 = RSU(3, width, mid, width, dilated=True)
            self.stage2d = RSU(3, 2 * width, mid, width)
            self.stage1d = RSU(4, 2 * width, mid, width)
            self.side1 = nn.Conv2d(width, 1, 3, padding=1)
            self.side2 = nn.Conv2d(width, 1, 3, padding=1)
            self.side3 = nn.Conv2d(width, 1, 3, padding=1)
            self.outconv = nn.Conv2d(3, 1, 1)

        def forward(self, x):
            hx1 = self.stage1(x)
            hx2 = self.stage2(F.max_pool2d(hx1, 2, ceil_mode=True))
            hx3 = self.stage3(F.max_pool2d(hx2, 2, ceil_mode=True))
            hx2d = self.stage2d(torch.cat([up(hx3), hx2], 1))
            hx1d = self.stage1d(torch.cat([up(hx2d), hx1], 1))
            d1 = self.side1(hx1d)
            d2 = up(self.side2(hx2d))
            d3 = up(self.side3(hx3), 4)
            d0 = self.outconv(torch.cat([d1, d2, d3], 1))
            return tuple(torch.sigmoid(d) for d in (d0, d1, d2, d3))

    return TinyU2Net()


def export_u2net_like(path: Path, *, width: int = 8, mid: int = 4, seed: int = 0) -> Path:
    """Export a seeded U²-Net-shaped model as ONNX with U²-Net's I/O.

    Input ``input.1`` Nx3x320x320 float32 (dynamic batch); outputs ``d0`` (fused, read by
    rembg's u2net sessions as ``ort_outs[0]``) and side outputs ``d1``-``d3``, each Nx1x320x320.
    """
    import torch

    torch.manual_seed(seed)
    model = _tiny_u2net_module(width=width, mid=mid).eval()
    outputs = ["d0", "d1", "d2", "d3"]
    dynamic = {name: {0: "batch_size"} for name in ["input.1", *outputs]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, on purpose
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 320, 320),),
            str(path),
            input_names=["input.1"],
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    return path


def build_tiny_u2net(path: Path) -> None:
    """Zoo builder: ``path/tiny-u2net.onnx``, loaded like any U²-Net ONNX file."""
    export_u2net_like(Path(path) / TINY_FILE)
