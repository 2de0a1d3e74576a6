"""Face swap family on insightface: SCRFD detection, ArcFace embedding, INSwapper.

Weights are a folder (nothing is ever downloaded)::

    <folder>/                      (or <folder>/models/, i.e. an ``~/.insightface`` root)
      inswapper_128.onnx           the swapper (any ``inswapper*.onnx``)
      buffalo_l/                   a FaceAnalysis model pack: a SCRFD detector and an
        det_10g.onnx               ArcFace recognizer (other pack files are ignored)
        w600k_r50.onnx

The pack is loaded with insightface's ``FaceAnalysis`` (which picks a class for each ONNX
file from its inputs and outputs) and the swapper with ``insightface.model_zoo.get_model``,
the same calls for the real ``buffalo_l`` + ``inswapper_128.onnx`` and for the tiny seeded
set built by `build_tiny_insightface`. ONNX Runtime runs on CUDA when its CUDA provider is
available, else on CPU.

Images cross the boundary as RGB (or RGBA, alpha dropped) uint8 arrays; insightface works in
BGR, so the conversion happens here and only here. Heavy imports (onnxruntime, insightface,
cv2, torch) are done inside functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError
from models.base import LoadedInfo, ModelFamily
from models.base import check_image as _check_image
from models.registry import ModelSpec, resolve

logger = logging.getLogger(__name__)

TINY_NAME = "tiny-insightface"
SWAPPER_FILE = "inswapper_128.onnx"
DEFAULT_PACK = "buffalo_l"
TINY_PACK = "buffalo_tiny"
DET_SIZE = 640  # detector input side: images are letterboxed into DET_SIZE x DET_SIZE
DET_THRESH = 0.5
MIN_SIDE = 16
MAX_SIDE = 4096
SEED = 0


# --- errors and typed results --------------------------------------------------------------

class NoFaceError(ValueError):
    """No face was found in the source or the target image (`which`)."""

    def __init__(self, which: str, message: str | None = None):
        self.which = which
        super().__init__(
            message
            or f"no face found in the {which} image; use a photo where a face is clearly "
            "visible (frontal, not too small)"
        )


@dataclass(frozen=True)
class DetectedFace:
    """A face found by the detector, in pixels of the image it was found in."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    keypoints: tuple[tuple[float, float], ...]  # eyes, nose, mouth corners

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@dataclass(frozen=True)
class FaceDetection:
    """The detector's answer for image analysis: the faces, left to right, and how long the
    detector worked (``model_s``: usage accounting counts it as the FaceSwap deployment's)."""

    faces: list[DetectedFace]
    timings: dict[str, float]


@dataclass
class FaceSwapRequest:
    """One swap: the face of `source` put onto the face(s) of `target` (HxWx3/4 uint8 RGB)."""

    source: np.ndarray
    target: np.ndarray
    target_face_index: int | None = None  # None: the largest face (unless all_faces)
    all_faces: bool = False
    source_face_index: int | None = None  # None: the largest face in the source


@dataclass
class FaceSwapResult:
    image: np.ndarray  # HxWx3 uint8 RGB, the size of the target
    faces_swapped: int
    source_faces: list[DetectedFace]  # ordered left to right (the order indices refer to)
    target_faces: list[DetectedFace]
    source_face_index: int
    swapped_indices: list[int]  # indices into target_faces
    model: str
    timings: dict[str, float] = field(default_factory=dict)


# --- input checks ----------------------------------------------------------------------------

def check_image(image: Any, field_name: str) -> None:
    """Raise `InputError` (a `ValueError`) with param `field_name` unless `image` is an
    HxWx3/4 uint8 array."""
    _check_image(image, name=field_name, min_side=MIN_SIDE, max_side=MAX_SIDE)


def _check_index(value: Any, field_name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{field_name} must be a non-negative integer or null, got {value!r}",
                         param=field_name)


def check_inputs(req: FaceSwapRequest) -> None:
    """Validate a request before any model work (cheap; usable by the ingress)."""
    check_image(req.source, "source")
    check_image(req.target, "target")
    _check_index(req.target_face_index, "target_face_index")
    _check_index(req.source_face_index, "source_face_index")
    if not isinstance(req.all_faces, (bool, np.bool_)):
        raise InputError(f"all_faces must be true or false, got {req.all_faces!r}",
                         param="all_faces")
    if req.all_faces and req.target_face_index is not None:
        raise InputError(
            "give either target_face_index (swap one face) or all_faces=true (swap every "
            "face), not both", param="all_faces",
        )


def _to_bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, :, 2::-1])  # RGB(A) -> BGR, alpha dropped


# --- locating the weights --------------------------------------------------------------------

def find_weights(folder: str | Path, *, pack: str | None = None) -> tuple[Path, Path]:
    """Return ``(pack_dir, swapper_file)`` inside `folder` (or `folder/models`).

    Raises `FileNotFoundError` (an `OSError`, so the registry's fallback policy applies)
    naming the files that were expected. Nothing is downloaded.
    """
    folder = Path(folder).expanduser()
    roots = [folder, folder / "models"]
    swapper = next((r / SWAPPER_FILE for r in roots if (r / SWAPPER_FILE).is_file()), None)
    if swapper is None:
        others = [p for r in roots if r.is_dir() for p in sorted(r.glob("inswapper*.onnx"))]
        swapper = others[0] if others else None
    if pack is not None:
        packs = [r / pack for r in roots if any((r / pack).glob("*.onnx"))]
    else:
        packs = [d for r in roots if r.is_dir() for d in sorted(r.iterdir())
                 if d.is_dir() and any(d.glob("*.onnx"))]
        preferred = [d for d in packs if d.name == DEFAULT_PACK]
        packs = preferred or packs
    missing = []
    if not packs:
        name = pack or DEFAULT_PACK
        missing.append(
            f"a FaceAnalysis model pack folder '{folder / name}/' with a SCRFD detector "
            f"and an ArcFace recognizer (e.g. {name}/det_10g.onnx and {name}/w600k_r50.onnx)"
        )
    if swapper is None:
        missing.append(f"the swapper '{folder / SWAPPER_FILE}'")
    if missing:
        raise FileNotFoundError(
            f"face swap weights not found in '{folder}' (also looked in '{folder / 'models'}'):"
            f" expected {' and '.join(missing)}. Nothing is downloaded: copy the files there "
            "first."
        )
    if len(packs) > 1:
        raise ValueError(
            f"several model packs in '{folder}': {', '.join(p.name for p in packs)}; "
            "name the one to use with pack=..."
        )
    return packs[0], swapper


def onnx_providers(device: str | None = None) -> tuple[str, list[str]]:
    """(device, ONNX Runtime providers): CUDA when asked for or available, else CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    want_cuda = device is None or device.startswith("cuda")
    if want_cuda and "CUDAExecutionProvider" in available:
        return "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device is not None and device.startswith("cuda"):
        raise ValueError(
            "device 'cuda' asked for but ONNX Runtime has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu or use device='cpu'"
        )
    return "cpu", ["CPUExecutionProvider"]


# --- the family --------------------------------------------------------------------------------

class FaceSwapModel(ModelFamily):
    family = "faceswap"
    kind = "face"

    def __init__(self, app: Any, swapper: Any, *, info: LoadedInfo):
        self._app = app  # insightface FaceAnalysis (detection + recognition)
        self._swapper = swapper  # insightface INSwapper
        self._info = info

    @classmethod
    def load(cls, source: str, *, name: str, device: str | None = None, tiny: bool = False,
             fallback_reason: str | None = None, pack: str | None = None,
             det_size: int = DET_SIZE, det_thresh: float = DET_THRESH) -> FaceSwapModel:
        """Load the FaceAnalysis pack and the INSwapper found in folder `source`."""
        from insightface.app import FaceAnalysis
        from insightface.model_zoo import get_model
        from insightface.model_zoo.inswapper import INSwapper

        started = time.perf_counter()
        pack_dir, swapper_file = find_weights(source, pack=pack)
        device, providers = onnx_providers(device)
        try:
            # `name` an existing folder: FaceAnalysis loads it as is (a bare name would be
            # looked up under root/models and downloaded when missing).
            app = FaceAnalysis(name=str(pack_dir), root=str(Path(source).expanduser()),
                               allowed_modules=["detection", "recognition"],
                               providers=providers)
        except AssertionError:
            raise ValueError(
                f"model pack '{pack_dir}' has no SCRFD face detector (an ONNX file with 6 or "
                "9 outputs, e.g. det_10g.onnx)"
            ) from None
        if "recognition" not in app.models:
            raise ValueError(
                f"model pack '{pack_dir}' has no ArcFace recognizer (an ONNX file with a "
                "square 112x112 input and one output, e.g. w600k_r50.onnx)"
            )
        app.prepare(ctx_id=0 if device == "cuda" else -1, det_thresh=det_thresh,
                    det_size=(det_size, det_size))
        with contextlib.redirect_stdout(io.StringIO()):  # INSwapper prints its input shape
            swapper = get_model(str(swapper_file), providers=providers)
        if not isinstance(swapper, INSwapper):
            raise ValueError(
                f"'{swapper_file}' is not an INSwapper model (two inputs: target 1x3x128x128 "
                "and source 1x512, one output)"
            )
        info = LoadedInfo(
            name=name, family=cls.family, source=str(source), tiny=tiny, device=device,
            dtype="float32", fallback_reason=fallback_reason,
            extra={"pack": str(pack_dir), "swapper": str(swapper_file),
                   "providers": providers, "det_size": det_size},
        )
        model = cls(app, swapper, info=info)
        model.probe()  # warm up: builds the detector's session for det_size
        logger.info("loaded %s from %s on %s in %.2fs", name, source, device,
                    time.perf_counter() - started)
        return model

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, zoo_dir: str | None = None,
                  allow_fallback: bool = False, device: str | None = None) -> FaceSwapModel:
        """Resolve a spec (tiny zoo model or a local folder) and load it."""
        resolved = resolve(spec, zoo_dir=zoo_dir, allow_fallback=allow_fallback,
                           load_check=lambda location: find_weights(location))
        return cls.load(resolved.location, name=resolved.spec.name, device=device,
                        tiny=resolved.spec.tiny, fallback_reason=resolved.fallback_reason)

    @property
    def info(self) -> LoadedInfo:
        return self._info

    # -- inference ----------------------------------------------------------------------------
    def run(self, request: FaceSwapRequest) -> FaceSwapResult:
        return self.swap(
            request.source, request.target, target_face_index=request.target_face_index,
            all_faces=request.all_faces, source_face_index=request.source_face_index,
        )

    def probe(self) -> float:
        """Run the detector on a small blank image; return the seconds it took."""
        started = time.perf_counter()
        self._app.det_model.detect(np.zeros((32, 32, 3), dtype=np.uint8))
        return time.perf_counter() - started

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an RGB image, ordered left to right."""
        check_image(image, "image")
        return [_describe(f) for f in self._faces(_to_bgr(image))]

    def _faces(self, bgr: np.ndarray) -> list[Any]:
        """Detected faces (insightface `Face`s, no embedding yet), ordered left to right.

        Detection only: the swapper needs a target face's keypoints, and only the chosen
        source face needs an embedding (`_embed`), so recognition runs once per swap.
        """
        from insightface.app.common import Face

        boxes, kpss = self._app.det_model.detect(bgr, max_num=0)
        faces = [
            Face(bbox=boxes[i, :4], kps=None if kpss is None else kpss[i], det_score=boxes[i, 4])
            for i in range(boxes.shape[0])
        ]
        return sorted(faces, key=lambda f: (float(f.bbox[0]), float(f.bbox[1])))

    def _embed(self, bgr: np.ndarray, face: Any) -> None:
        self._app.models["recognition"].get(bgr, face)  # sets face.embedding

    def swap(self, source: np.ndarray, target: np.ndarray, *,
             target_face_index: int | None = None, all_faces: bool = False,
             source_face_index: int | None = None) -> FaceSwapResult:
        """Put the source face onto the target's largest face (or the one at
        `target_face_index`, or every face with `all_faces`).

        Raises `NoFaceError` (a `ValueError`) when either image has no face, and
        `ValueError` for bad arguments or an index beyond the faces found.
        """
        check_inputs(FaceSwapRequest(source, target, target_face_index, all_faces,
                                     source_face_index))
        timings: dict[str, float] = {}
        started = time.perf_counter()
        source_bgr = _to_bgr(source)
        src_faces = self._faces(source_bgr)
        if not src_faces:
            raise NoFaceError("source")
        target_bgr = _to_bgr(target)
        tgt_faces = self._faces(target_bgr)
        if not tgt_faces:
            raise NoFaceError("target")
        src_index = _pick(src_faces, source_face_index, "source_face_index", "source")
        tgt_indices = (
            list(range(len(tgt_faces))) if all_faces
            else [_pick(tgt_faces, target_face_index, "target_face_index", "target")]
        )
        timings["detect_s"] = time.perf_counter() - started
        started = time.perf_counter()
        self._embed(source_bgr, src_faces[src_index])
        timings["embed_s"] = time.perf_counter() - started
        started = time.perf_counter()
        out = target_bgr
        for i in tgt_indices:
            out = self._swapper.get(out, tgt_faces[i], src_faces[src_index], paste_back=True)
        timings["swap_s"] = time.perf_counter() - started
        return FaceSwapResult(
            image=np.ascontiguousarray(out[:, :, ::-1]),
            faces_swapped=len(tgt_indices),
            source_faces=[_describe(f) for f in src_faces],
            target_faces=[_describe(f) for f in tgt_faces],
            source_face_index=src_index,
            swapped_indices=tgt_indices,
            model=self._info.name,
            timings=timings,
        )


def _pick(faces: list[Any], index: int | None, field_name: str, which: str) -> int:
    if index is None:  # the largest face
        areas = [_describe(f).area for f in faces]
        return int(np.argmax(areas))
    if index >= len(faces):
        raise InputError(
            f"{field_name} {index} is out of range: {len(faces)} face"
            f"{'s' if len(faces) != 1 else ''} found in the {which} image "
            f"(valid: 0 to {len(faces) - 1}, ordered left to right)", param=field_name,
        )
    return int(index)


def _describe(face: Any) -> DetectedFace:
    box = tuple(round(float(v), 2) for v in face.bbox[:4])
    kps = () if face.kps is None else tuple(
        (round(float(x), 2), round(float(y), 2)) for x, y in face.kps
    )
    return DetectedFace(box=box, score=round(float(face.det_score), 4), keypoints=kps)


# --- the tiny seeded model set ------------------------------------------------------------------

# Keypoints of the tiny detector, relative to a blob's centre in units of its radius:
# left eye, right eye, nose, left and right mouth corner (the ArcFace template's proportions).
TINY_KEYPOINTS = ((-0.35, -0.3), (0.35, -0.3), (0.0, 0.1), (-0.29, 0.5), (0.29, 0.5))
# Radius bands (min, max) per stride, in detector-input pixels (the image letterboxed into
# 640x640). Each band looks at a window just larger than its biggest blob, so blobs a little
# apart are measured separately.
_TINY_BANDS = {
    8: ((6.0, 9.0), (8.0, 13.0), (11.0, 19.0)),
    16: ((16.0, 27.0), (23.0, 38.0)),
    32: ((32.0, 54.0), (46.0, 78.0), (66.0, 112.0), (95.0, 160.0), (136.0, 230.0),
         (195.0, 300.0)),
}


def _pool(stride: int) -> int:
    """Each stride measures on the colour mask average-pooled by stride / 2."""
    return stride // 2


def _band_windows(stride: int, rmax: float) -> tuple[int, int]:
    """Half-sizes (pooled cells) of a band's inner window (the blob must fit) and outer
    window (nothing else may be there)."""
    inner = int(np.ceil((rmax + stride / 2 + 2) / _pool(stride)))
    return inner, inner + 2  # a blob cut by the inner window has mass in the ring


def _tiny_detector():
    """A SCRFD-shaped torch module whose fixed weights find warm-coloured blobs."""
    import torch
    from torch import nn

    class TinyFaceDetector(nn.Module):
        def __init__(self):
            super().__init__()
            self.pools = nn.ModuleList(nn.AvgPool2d(_pool(s)) for s in _TINY_BANDS)
            kps = torch.tensor(TINY_KEYPOINTS)
            self.register_buffer("ux", kps[:, 0].reshape(1, 5, 1, 1).clone())
            self.register_buffer("uy", kps[:, 1].reshape(1, 5, 1, 1).clone())
            self.inner = nn.ModuleList()
            self.outer = nn.ModuleList()
            for stride, bands in _TINY_BANDS.items():
                for _, rmax in bands:
                    inner, outer = _band_windows(stride, rmax)
                    self.inner.append(self._moments(inner, _pool(stride), ramps=True))
                    self.outer.append(self._moments(outer, _pool(stride), ramps=False))

        @staticmethod
        def _moments(half: int, pool: int, *, ramps: bool) -> nn.Conv2d:
            """Sums of mask, mask*dx, mask*dy and mask*(dx^2+dy^2) (pixels) over a
            (2*half+1)^2 window of pooled cells centred on each anchor (every second cell:
            anchors are 2 cells apart)."""
            size = 2 * half + 1
            conv = nn.Conv2d(1, 4 if ramps else 1, size, stride=2, padding=half, bias=False)
            ramp = (torch.arange(size, dtype=torch.float32) - half) * pool
            with torch.no_grad():
                conv.weight[0, 0] = 1.0
                if ramps:
                    rx = ramp.view(1, size).expand(size, size)
                    ry = ramp.view(size, 1).expand(size, size)
                    conv.weight[1, 0] = rx
                    conv.weight[2, 0] = ry
                    conv.weight[3, 0] = rx * rx + ry * ry
            return conv

        def _band(self, k: int, mask, stride: int, rmin: float, rmax: float):
            m = self.inner[k](mask)
            mass, total = m[:, 0:1], self.outer[k](mask)
            pool = _pool(stride)
            # Centroid offset from the anchor (pooled cell i is centred on pixel
            # i*pool + (pool-1)/2, anchor j on pixel j*stride = cell 2j).
            mx, my = m[:, 1:2] / (mass + 1e-6), m[:, 2:3] / (mass + 1e-6)
            dx, dy = mx + (pool - 1) / 2, my + (pool - 1) / 2
            r2 = mass * (pool * pool) / torch.pi  # squared radius of a disk of equal area
            r = torch.sqrt(r2 + 1e-6)
            # Spread about the centroid relative to a disk's (r^2/2; the disk is the most
            # compact shape): ~1 for one disk, >= 1.5 for two disks seen as one.
            spread = m[:, 3:4] / (mass + 1e-6) - mx * mx - my * my + pool * pool / 6
            compact = spread / (r2 / 2 + 1e-6)
            score = (
                torch.sigmoid(50.0 * (mass / (total + 1e-6) - 0.92))  # the whole blob, alone
                * torch.sigmoid(20.0 * (1.3 - compact))  # one round blob
                * torch.sigmoid(8.0 * (stride / 2 + 1 - dx.abs()))  # at the nearest anchor
                * torch.sigmoid(8.0 * (stride / 2 + 1 - dy.abs()))
                * torch.sigmoid(16.0 * (r - rmin) / rmin)  # within this band's radii
                * torch.sigmoid(16.0 * (rmax - r) / rmin)
            )
            box = torch.cat([r - dx, r - dy, r + dx, r + dy], dim=1)
            kps = torch.stack([dx + self.ux * r, dy + self.uy * r], dim=2).flatten(1, 2)
            return score, box, kps

        def forward(self, x):
            # Colour mask: 1 where red - blue > ~80/255 (input is (rgb - 127.5) / 128).
            full = torch.sigmoid(20.0 * (x[:, 0:1] - x[:, 2:3]) - 12.5)
            scores, boxes, kpss = [], [], []
            k = 0
            for j, (stride, bands) in enumerate(_TINY_BANDS.items()):
                mask = self.pools[j](full)
                found = [self._band(k + i, mask, stride, *band) for i, band in enumerate(bands)]
                k += len(bands)
                weight = sum(f[0] for f in found) + 1e-6
                score = found[0][0]
                for f in found[1:]:
                    score = torch.maximum(score, f[0])
                # Bands that fire measure the same blob: their score-weighted mean.
                box = sum(f[0] * f[1] for f in found) / weight / stride
                kps = sum(f[0] * f[2] for f in found) / weight / stride
                scores.append(self._rows(torch.cat([score, torch.zeros_like(score)], 1), 1))
                boxes.append(self._rows(torch.cat([box, box], 1), 4))
                kpss.append(self._rows(torch.cat([kps, kps], 1), 10))
            return (*scores, *boxes, *kpss)

        @staticmethod
        def _rows(t, width: int):
            # (1, anchors*width, h, w) -> (h*w*anchors, width): SCRFD's row order.
            return t.permute(0, 2, 3, 1).reshape(-1, width)

    return TinyFaceDetector().eval()


def _tiny_recognizer():
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(),
        nn.Conv2d(8, 16, 4, stride=4), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 512),
    ).eval()


def _tiny_swapper():
    import torch
    from torch import nn

    class TinySwapper(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(SEED)
            self.encode = nn.Conv2d(3, 8, 3, padding=1)
            self.identity = nn.Linear(512, 8)
            self.decode = nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, target, source):
            identity = self.identity(source)[:, :, None, None]
            h = torch.relu(self.encode(target * 2.0 - 1.0) + identity)
            return torch.sigmoid(self.decode(h))

    return TinySwapper().eval()


def build_tiny_insightface(path: Path) -> None:
    """Write a tiny insightface model set (fixed weights/seeds, ONNX) into `path`.

    Layout, the same as real weights (`find_weights`)::

        path/inswapper_128.onnx         INSwapper-shaped: target 1x3x128x128 + source 1x512
                                        -> 1x3x128x128; last initializer the 512x512 emap
        path/buffalo_tiny/det_tiny.onnx SCRFD-shaped detector (dynamic HxW input, 9 outputs)
        path/buffalo_tiny/w_tiny.onnx   ArcFace-shaped recognizer (1x3x112x112 -> 1x512)

    The recognizer and swapper have random weights (seed 0). The detector's weights are set
    in code (no randomness) so that detection is deterministic and meaningful on synthetic
    images. A "face" is a round, warm-coloured blob: a filled disk whose red minus blue is
    above ~80 of 255 (skin tone (224, 172, 105), red, orange, yellow ...) with a radius of
    about 6 to 240 pixels in the 640x640 detector input (the image letterboxed: for a
    320x240 image, radius 3 to 120 pixels), apart from other such blobs by at least about
    one radius. Plain images (gray, white, black, blue, ...) have no face; each separate disk
    is one face.

    How: the detector computes the colour mask, average-pools it, and per stride (8/16/32)
    and radius band convolves it with fixed kernels that sum the mask, its x/y moments and
    its second moment in a window just larger than the band's biggest blob, plus the mass in
    a slightly larger window. The score (~0.7 to 0.97) is high only at the anchor nearest
    the blob's centroid, when the whole blob lies inside the window with nothing else nearby,
    its equal-area radius is in the band and its spread is that of a disk (two merged disks
    are rejected). The box is centroid +/- radius, the 5 keypoints sit at fixed proportions
    of the radius (`TINY_KEYPOINTS`: eyes, nose, mouth corners), so alignment, the ArcFace
    crop and INSwapper's paste-back all work as on a real face.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    path = Path(path)
    pack = path / TINY_PACK
    pack.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in _TINY_BANDS]
        torch.onnx.export(
            _tiny_detector(), (torch.zeros(1, 3, 640, 640),), str(pack / "det_tiny.onnx"),
            input_names=["input.1"], output_names=names, dynamo=False, opset_version=17,
            dynamic_axes={"input.1": {2: "height", 3: "width"},
                          **{n: {0: f"{n}_rows"} for n in names}},
        )
        torch.onnx.export(
            _tiny_recognizer(), (torch.zeros(1, 3, 112, 112),), str(pack / "w_tiny.onnx"),
            input_names=["input.1"], output_names=["embedding"], dynamo=False, opset_version=17,
        )
        swapper_file = path / SWAPPER_FILE
        torch.onnx.export(
            _tiny_swapper(), (torch.zeros(1, 3, 128, 128), torch.zeros(1, 512)),
            str(swapper_file), input_names=["target", "source"], output_names=["output"],
            dynamo=False, opset_version=17,
        )
    # INSwapper reads the identity map `emap` from the graph's last initializer.
    emap = np.random.default_rng(SEED).standard_normal((512, 512)) / np.sqrt(512)
    model = onnx.load(str(swapper_file))
    model.graph.initializer.append(numpy_helper.from_array(emap.astype(np.float32), "emap"))
    onnx.save(model, str(swapper_file))
