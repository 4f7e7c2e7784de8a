"""Face restoration with GFPGAN or CodeFormer, as A1111 does it (reference section 11).

For each picture:
1. find the faces: facexlib's RetinaFace when both the facexlib package and its weights
   (detection_Resnet50_Final.pth in models/facexlib or models/GFPGAN, where A1111 keeps
   them) are present; otherwise OpenCV's bundled frontal-face Haar cascade, which needs
   no download;
2. map each face onto the 512x512 FFHQ layout the networks were trained on (a similarity
   transform from its eye/nose/mouth points to the template facexlib uses);
3. run the network on the crop (inputs and outputs in [-1, 1]; CodeFormer also gets its
   fidelity weight w);
4. warp the restored crop back and paste it with a feathered mask, so nothing outside the
   face crops changes;
5. blend the whole result with the input by `visibility` (Image.blend), as the Extras tab does.

Weights come from models/GFPGAN and models/Codeformer and are loaded by spandrel (CodeFormer
needs the spandrel_extra_arches package). Nothing is downloaded: a missing file gives an
error naming the file and the folder.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from backend.errors import InvalidRequest, ModelLoadError, ModelNotFound
from backend.postprocess.upscalers import MODEL_EXTENSIONS, WeightsMissing, load_image_model

logger = logging.getLogger(__name__)

FACE_SIZE = 512
# Where eyes, nose tip and mouth corners sit in a 512x512 FFHQ-aligned face (facexlib's template).
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]],
    dtype=np.float32,
)
# The same five points as fractions of an OpenCV frontal-face box (typical positions; the
# cascade gives no landmarks). Fitting them to the template gives a crop about 1.5x the box.
_HAAR_BOX_LANDMARKS = np.array(
    [[0.31, 0.39], [0.69, 0.39], [0.50, 0.60], [0.36, 0.79], [0.64, 0.79]], dtype=np.float32
)
# Grey that facexlib fills the crop with where it leaves the picture.
_CROP_BORDER_VALUE = (135, 133, 132)
# Width of the mask's soft edge, as a fraction of the crop side.
_FEATHER = 0.1
_RETINAFACE_WEIGHTS = "detection_Resnet50_Final.pth"
_RETINAFACE_CONFIDENCE = 0.97
# facexlib ignores detections whose eyes are closer than this (pixels).
_MIN_EYE_DISTANCE = 5.0


@dataclass(frozen=True)
class FaceRestorerSpec:
    """A face restorer A1111 offers: its folder, the file A1111 downloads, and the name filter."""

    name: str
    folder: str
    expected_file: str
    name_contains: str


# A1111's order for /sdapi/v1/face-restorers.
FACE_RESTORERS: tuple[FaceRestorerSpec, ...] = (
    FaceRestorerSpec("CodeFormer", "Codeformer", "codeformer-v0.1.0.pth", "codeformer"),
    # models/GFPGAN also holds facexlib's weights, hence A1111's "GFPGAN in the file name" filter.
    FaceRestorerSpec("GFPGAN", "GFPGAN", "GFPGANv1.4.pth", "gfpgan"),
)


@dataclass(frozen=True)
class FaceRestorerInfo:
    """One face restorer: its weights file, or None when it is not on disk."""

    name: str
    folder: Path
    path: Path | None


@dataclass(frozen=True)
class DetectedFace:
    """A face: its box (x0, y0, x1, y1) and five points (eyes, nose, mouth corners), in pixels."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray


FaceDetector = Callable[[np.ndarray], list[DetectedFace]]


class HaarFaceDetector:
    """OpenCV's frontal-face cascade (shipped inside opencv-python-headless); landmarks from the box."""

    def __init__(self) -> None:
        import cv2

        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ModelLoadError(f"cannot read OpenCV's face cascade {path}")

    def __call__(self, rgb: np.ndarray) -> list[DetectedFace]:
        import cv2

        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        boxes = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        faces = []
        for x, y, w, h in np.asarray(boxes, dtype=np.float32).reshape(-1, 4):
            landmarks = _HAAR_BOX_LANDMARKS * np.array([w, h], dtype=np.float32) + np.array([x, y], dtype=np.float32)
            faces.append(DetectedFace((float(x), float(y), float(x + w), float(y + h)), landmarks))
        return faces


class RetinaFaceDetector:
    """facexlib's RetinaFace (what A1111 uses): boxes and five landmarks per face."""

    def __init__(self, net: Any) -> None:
        self._net = net

    def __call__(self, rgb: np.ndarray) -> list[DetectedFace]:
        with torch.no_grad():
            detections = self._net.detect_faces(np.ascontiguousarray(rgb[:, :, ::-1]), _RETINAFACE_CONFIDENCE)
        faces = []
        for row in np.asarray(detections, dtype=np.float32).reshape(-1, 15):
            landmarks = row[5:15].reshape(5, 2)
            if np.linalg.norm(landmarks[0] - landmarks[1]) < _MIN_EYE_DISTANCE:
                continue
            faces.append(DetectedFace(tuple(float(v) for v in row[:4]), landmarks))
        return faces


def default_detector(models_dir: Path, device: torch.device) -> FaceDetector:
    """RetinaFace when facexlib and its weights are both there, else the OpenCV cascade."""
    candidates = (models_dir / "facexlib" / _RETINAFACE_WEIGHTS, models_dir / "GFPGAN" / _RETINAFACE_WEIGHTS)
    weights = next((path for path in candidates if path.is_file()), None)
    if weights is not None and importlib.util.find_spec("facexlib") is not None:
        from facexlib.detection import init_detection_model

        # The file is already in model_rootpath, so facexlib does not download it.
        net = init_detection_model("retinaface_resnet50", half=False, device=device, model_rootpath=str(weights.parent))
        return RetinaFaceDetector(net)
    return HaarFaceDetector()


# ---------------------------------------------------------------------------
# Crop, restore, paste
# ---------------------------------------------------------------------------


def alignment_matrix(face: DetectedFace) -> np.ndarray:
    """2x3 similarity transform taking the picture to the 512x512 aligned crop."""
    import cv2

    matrix, _ = cv2.estimateAffinePartial2D(face.landmarks.astype(np.float32), FFHQ_TEMPLATE_512, method=cv2.LMEDS)
    if matrix is None:
        raise InvalidRequest("face", "cannot align a detected face (degenerate landmarks)")
    return matrix


def _crop_mask() -> np.ndarray:
    """1 inside the crop, falling smoothly to 0 over its outer `_FEATHER` band."""
    edge = np.arange(FACE_SIZE, dtype=np.float32) + 0.5
    distance = np.minimum(edge, FACE_SIZE - edge) / (FACE_SIZE * _FEATHER)
    ramp = np.clip(distance, 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible edge where the ramp ends
    return np.minimum(ramp[:, None], ramp[None, :])


def paste_faces(
    rgb: np.ndarray, faces: list[DetectedFace], restore: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Crop each face to 512x512, `restore` it (uint8 RGB in, uint8 RGB out), and paste it back.

    Pixels outside every face crop are returned exactly as they were.
    """
    import cv2

    height, width = rgb.shape[:2]
    result = rgb.astype(np.float32)
    mask = _crop_mask()
    for face in faces:
        matrix = alignment_matrix(face)
        crop = cv2.warpAffine(rgb, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=_CROP_BORDER_VALUE)
        restored = restore(crop)
        inverse = cv2.invertAffineTransform(matrix)
        back = cv2.warpAffine(restored.astype(np.float32), inverse, (width, height), flags=cv2.INTER_LINEAR)
        soft = cv2.warpAffine(mask, inverse, (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)[:, :, None]
        result = soft * back + (1.0 - soft) * result
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)


def _network_runner(descriptor: Any, codeformer_weight: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Call the bare network as A1111 does: GFPGAN without its RGB side outputs, CodeFormer with w."""
    architecture = descriptor.architecture.id
    model = descriptor.model
    if architecture == "GFPGAN":
        # The stored noise buffers instead of fresh noise, so a face restores the same way every time.
        return lambda x: model(x, return_rgb=False, randomize_noise=False)[0]
    if architecture == "CodeFormer":
        return lambda x: model(x, weight=codeformer_weight, adain=True)[0]
    raise ModelLoadError(f"{architecture} is not a face restoration model GFPGAN or CodeFormer can use")


def _restore_crop(
    crop: np.ndarray, run: Callable[[torch.Tensor], torch.Tensor], device: torch.device, dtype: torch.dtype
) -> np.ndarray:
    tensor = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].to(device=device, dtype=dtype) / 127.5 - 1.0
    with torch.inference_mode():
        output = run(tensor)
    output = (output[0].float().clamp(-1, 1) + 1.0) * 127.5
    return output.round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


class FaceRestorerRegistry:
    """GFPGAN and CodeFormer from one models folder; keeps the last used network loaded.

    `detector` replaces the default face detector (tests, or a detector of the caller's).
    """

    def __init__(self, models_dir: Path, detector: FaceDetector | None = None) -> None:
        self.models_dir = Path(models_dir)
        self._detector = detector
        self._lock = threading.RLock()
        self._loaded: tuple[str, Path, Any] | None = None

    def list(self) -> list[FaceRestorerInfo]:
        """CodeFormer and GFPGAN, with the weights file each would use (None when missing)."""
        return [
            FaceRestorerInfo(spec.name, self.models_dir / spec.folder, self._weights(spec)) for spec in FACE_RESTORERS
        ]

    def restore_faces(
        self,
        image: Image.Image,
        model_name: str,
        *,
        codeformer_weight: float = 0.5,
        visibility: float = 1.0,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        unload_after: bool = False,
    ) -> Image.Image:
        """Restore every face in `image` with `model_name` and blend by `visibility` (0 returns the input).

        `codeformer_weight` is CodeFormer's w (0 = strongest restoration, 1 = closest to the
        input); `unload_after` moves the network to the CPU afterwards (face_restoration_unload).
        """
        if not 0.0 <= visibility <= 1.0:
            raise InvalidRequest("visibility", f"must be between 0 and 1, got {visibility}")
        if not 0.0 <= codeformer_weight <= 1.0:
            raise InvalidRequest("codeformer_weight", f"must be between 0 and 1, got {codeformer_weight}")
        spec = self._spec(model_name)
        if visibility == 0:
            return image.copy()
        rgb_image = image.convert("RGB")
        with self._lock:
            descriptor = self._network(spec, device, dtype)
            run = _network_runner(descriptor, codeformer_weight)
            model_dtype = next(descriptor.model.parameters()).dtype
            rgb = np.asarray(rgb_image, dtype=np.uint8)
            faces = self._face_detector(device)(rgb)
            logger.info("%s: restoring %d face(s)", spec.name, len(faces))
            try:
                restored = paste_faces(rgb, faces, lambda crop: _restore_crop(crop, run, device, model_dtype))
            finally:
                if unload_after:
                    descriptor.to(torch.device("cpu"))
        result = Image.fromarray(restored, "RGB")
        if visibility < 1.0:
            result = Image.blend(rgb_image, result, visibility)
        return result

    def unload(self) -> None:
        """Drop the loaded network."""
        with self._lock:
            self._loaded = None

    def _spec(self, name: str) -> FaceRestorerSpec:
        spec = next((s for s in FACE_RESTORERS if s.name.lower() == str(name).lower()), None)
        if spec is None:
            raise ModelNotFound("face restorer", name, [s.name for s in FACE_RESTORERS])
        return spec

    def _weights(self, spec: FaceRestorerSpec) -> Path | None:
        folder = self.models_dir / spec.folder
        if not folder.is_dir():
            return None
        candidates = sorted(
            path for path in folder.rglob("*")
            if path.is_file() and path.suffix.lower() in MODEL_EXTENSIONS and spec.name_contains in path.name.lower()
        )
        preferred = [path for path in candidates if path.name == spec.expected_file]
        return (preferred or candidates or [None])[0]

    def _network(self, spec: FaceRestorerSpec, device: torch.device, dtype: torch.dtype) -> Any:
        path = self._weights(spec)
        if path is None:
            raise WeightsMissing("face restorer", spec.name, self.models_dir / spec.folder / spec.expected_file)
        if self._loaded is not None and self._loaded[:2] == (spec.name, path):
            descriptor = self._loaded[2]
        else:
            self._loaded = None
            if spec.name == "CodeFormer" and importlib.util.find_spec("spandrel_extra_arches") is None:
                raise ModelLoadError("CodeFormer needs the spandrel_extra_arches package (not installed)")
            descriptor = load_image_model(path, device=device, dtype=dtype)
            if descriptor.architecture.id != spec.name:
                raise ModelLoadError(f"{path} holds a {descriptor.architecture.id} model, not {spec.name}")
            self._loaded = (spec.name, path, descriptor)
        descriptor.to(device)
        return descriptor

    def _face_detector(self, device: torch.device) -> FaceDetector:
        if self._detector is None:
            self._detector = default_detector(self.models_dir, device)
        return self._detector
