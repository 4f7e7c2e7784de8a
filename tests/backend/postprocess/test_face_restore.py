"""Face restoration: detection, 512px alignment, feathered paste-back, GFPGAN/CodeFormer via spandrel."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from backend.errors import ModelLoadError, ModelNotFound
from backend.postprocess import face_restore as fr
from backend.postprocess.upscalers import WeightsMissing
from tests.backend.postprocess import tiny_weights as tw

CPU = torch.device("cpu")
BACKGROUND = (40, 60, 90)
FACE_AT = (30, 40)
FACE_SIZE = 128


def _drawn_face(size: int) -> Image.Image:
    """A simple frontal face (skin oval, brows, eyes, nose, mouth) that OpenCV's cascade detects."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cx = cy = size / 2
    fw, fh = size * 0.34, size * 0.44
    draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=(225, 185, 160))
    for side in (-1, 1):
        ex, ey = cx + side * fw * 0.42, cy - fh * 0.18
        draw.rectangle([ex - fw * 0.25, ey - fh * 0.22, ex + fw * 0.25, ey - fh * 0.15], fill=(70, 50, 40))
        draw.ellipse([ex - fw * 0.2, ey - fh * 0.07, ex + fw * 0.2, ey + fh * 0.07], fill=(250, 250, 250))
        draw.ellipse([ex - fw * 0.09, ey - fh * 0.07, ex + fw * 0.09, ey + fh * 0.07], fill=(30, 20, 20))
    draw.polygon([(cx, cy - fh * 0.05), (cx - fw * 0.12, cy + fh * 0.25), (cx + fw * 0.12, cy + fh * 0.25)],
                 fill=(200, 150, 130))
    draw.ellipse([cx - fw * 0.35, cy + fh * 0.4, cx + fw * 0.35, cy + fh * 0.55], fill=(150, 60, 60))
    return image.filter(ImageFilter.GaussianBlur(size / 150))


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    """A 360x220 picture with one face on the left and an empty right half."""
    canvas = Image.new("RGB", (360, 220), BACKGROUND)
    canvas.paste(_drawn_face(FACE_SIZE), FACE_AT)
    return canvas


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    # fp16 on disk halves the write; spandrel loads the values into an fp32 network.
    gfpgan = {key: value.half() for key, value in tw.gfpgan_state_dict().items()}
    tw.save_weights(gfpgan, root / "GFPGAN" / "GFPGANv1.4.pth")
    tw.save_weights(tw.codeformer_state_dict(), root / "Codeformer" / "codeformer-v0.1.0.pth", params_ema=True)
    # facexlib's weights live in models/GFPGAN in A1111; they are not a GFPGAN model.
    (root / "GFPGAN" / "detection_Resnet50_Final.pth").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def registry(models: Path) -> fr.FaceRestorerRegistry:
    return fr.FaceRestorerRegistry(models)


@pytest.fixture(scope="module")
def gfpgan_result(registry: fr.FaceRestorerRegistry, picture: Image.Image) -> Image.Image:
    return registry.restore_faces(picture, "GFPGAN", device=CPU)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def _changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(_pixels(a) - _pixels(b)).max(axis=2) > 0


def test_opencv_cascade_finds_the_drawn_face(picture: Image.Image) -> None:
    faces = fr.HaarFaceDetector()(np.asarray(picture))
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    expected = (FACE_AT[0] + FACE_SIZE / 2, FACE_AT[1] + FACE_SIZE / 2)
    assert abs(centre[0] - expected[0]) < 10 and abs(centre[1] - expected[1]) < 10
    left_eye, right_eye = faces[0].landmarks[:2]
    assert left_eye[0] < right_eye[0] and abs(left_eye[1] - right_eye[1]) < 1e-3
    empty = Image.new("RGB", (200, 200), BACKGROUND)
    assert fr.HaarFaceDetector()(np.asarray(empty)) == []


def test_alignment_maps_template_landmarks_to_themselves() -> None:
    face = fr.DetectedFace((0, 0, 512, 512), fr.FFHQ_TEMPLATE_512.copy())
    np.testing.assert_allclose(fr.alignment_matrix(face), [[1, 0, 0], [0, 1, 0]], atol=1e-3)


def test_paste_changes_only_the_face_crop_with_a_soft_edge(picture: Image.Image) -> None:
    rgb = np.asarray(picture)
    faces = fr.HaarFaceDetector()(rgb)
    white = fr.paste_faces(rgb, faces, lambda crop: np.full_like(crop, 255))
    changed = np.abs(white.astype(int) - rgb.astype(int)).max(axis=2) > 0
    x0, y0, x1, y1 = faces[0].box
    assert (white[int((y0 + y1) / 2), int((x0 + x1) / 2)] == 255).all()
    assert not changed[:, 250:].any()  # the right side, far from the face, is untouched
    # The edge is feathered: along a row through the face the values rise gradually.
    row = white[int((y0 + y1) / 2), :, 0]
    assert len({int(v) for v in row[:200]} - {BACKGROUND[0], 255}) > 10
    same = fr.paste_faces(rgb, faces, lambda crop: crop)
    assert np.abs(same.astype(int) - rgb.astype(int)).mean() < 1.0


def test_network_runner_passes_codeformer_weight_and_fixed_gfpgan_noise() -> None:
    calls: list[dict] = []

    def model(x: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor]:
        calls.append(kwargs)
        return (x,)

    for architecture in ("CodeFormer", "GFPGAN"):
        descriptor = SimpleNamespace(architecture=SimpleNamespace(id=architecture), model=model)
        fr._network_runner(descriptor, 0.7)(torch.zeros(1, 3, 4, 4))
    assert calls == [{"weight": 0.7, "adain": True}, {"return_rgb": False, "randomize_noise": False}]
    with pytest.raises(ModelLoadError):
        fr._network_runner(SimpleNamespace(architecture=SimpleNamespace(id="ESRGAN"), model=model), 0.5)


def test_retinaface_rows_become_faces() -> None:
    landmarks = [100, 120, 140, 120, 120, 140, 105, 160, 135, 160]
    close_eyes = [100, 120, 102, 120, 120, 140, 105, 160, 135, 160]
    net = SimpleNamespace(detect_faces=lambda bgr, threshold: np.array(
        [[80, 90, 160, 180, 0.99, *landmarks], [10, 10, 20, 20, 0.98, *close_eyes]]))
    faces = fr.RetinaFaceDetector(net)(np.zeros((200, 200, 3), np.uint8))
    assert len(faces) == 1 and faces[0].box == (80, 90, 160, 180)
    np.testing.assert_array_equal(faces[0].landmarks[0], [100, 120])


def test_default_detector_is_the_cascade_without_facexlib(models: Path) -> None:
    assert isinstance(fr.default_detector(models, CPU), fr.HaarFaceDetector)


def test_list_finds_the_weights_files(registry: fr.FaceRestorerRegistry, models: Path, tmp_path: Path) -> None:
    assert [(i.name, i.path) for i in registry.list()] == [
        ("CodeFormer", models / "Codeformer" / "codeformer-v0.1.0.pth"),
        ("GFPGAN", models / "GFPGAN" / "GFPGANv1.4.pth"),
    ]
    (tmp_path / "GFPGAN").mkdir()
    (tmp_path / "GFPGAN" / "detection_Resnet50_Final.pth").write_bytes(b"")
    assert [i.path for i in fr.FaceRestorerRegistry(tmp_path).list()] == [None, None]


def test_missing_weights_name_the_file(tmp_path: Path, picture: Image.Image) -> None:
    empty = fr.FaceRestorerRegistry(tmp_path)
    with pytest.raises(WeightsMissing, match=r"GFPGAN/GFPGANv1\.4\.pth"):
        empty.restore_faces(picture, "GFPGAN", device=CPU)
    with pytest.raises(WeightsMissing, match=r"Codeformer/codeformer-v0\.1\.0\.pth"):
        empty.restore_faces(picture, "CodeFormer", device=CPU)
    with pytest.raises(ModelNotFound, match="CodeFormer"):
        empty.restore_faces(picture, "RestoreAnything", device=CPU)
    # Visibility 0 is a no-op, as in A1111's Extras: no weights needed.
    unchanged = empty.restore_faces(picture, "GFPGAN", visibility=0, device=CPU)
    np.testing.assert_array_equal(_pixels(unchanged), _pixels(picture))


def test_wrong_architecture_in_the_folder(tmp_path: Path, picture: Image.Image) -> None:
    tw.save_weights(tw.compact_state_dict(), tmp_path / "GFPGAN" / "GFPGAN_custom.pth")
    with pytest.raises(ModelLoadError, match="not GFPGAN"):
        fr.FaceRestorerRegistry(tmp_path).restore_faces(picture, "GFPGAN", device=CPU)


def test_gfpgan_restores_only_the_face(gfpgan_result: Image.Image, picture: Image.Image) -> None:
    assert gfpgan_result.size == picture.size and gfpgan_result.mode == "RGB"
    changed = _changed(gfpgan_result, picture)
    face_centre = (FACE_AT[1] + FACE_SIZE // 2, FACE_AT[0] + FACE_SIZE // 2)
    assert changed[face_centre]
    assert not changed[:, 250:].any()


def test_visibility_blends_with_the_input(
    registry: fr.FaceRestorerRegistry, picture: Image.Image, gfpgan_result: Image.Image
) -> None:
    half = registry.restore_faces(picture, "GFPGAN", visibility=0.5, device=CPU, unload_after=True)
    expected = Image.blend(picture, gfpgan_result, 0.5)
    assert np.abs(_pixels(half) - _pixels(expected)).max() <= 1
    assert next(registry._loaded[2].model.parameters()).device == CPU


def test_codeformer_restores_only_the_face(registry: fr.FaceRestorerRegistry, picture: Image.Image) -> None:
    result = registry.restore_faces(picture, "CodeFormer", codeformer_weight=0.5, device=CPU)
    changed = _changed(result, picture)
    assert changed[FACE_AT[1] + FACE_SIZE // 2, FACE_AT[0] + FACE_SIZE // 2]
    assert not changed[:, 250:].any()

