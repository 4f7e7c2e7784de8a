"""The command-line generator, run the way a user runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from backend.postprocess.images import read_info_from_image
from backend.postprocess.infotext import parse_infotext

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "backend.txt2img", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_writes_images_with_infotext_and_prints_paths(tmp_path: Path, models_dir: Path) -> None:
    out = _run(["--prompt", "a lighthouse at dusk, (waves:1.3)", "--negative-prompt", "blurry", "--steps", "3",
                "--sampler", "DPM++ 2M Karras", "--seed", "1234", "--width", "64", "--height", "64",
                "--batch-size", "2", "--n-iter", "2", "--clip-skip", "2",
                "--data-dir", str(tmp_path / "data"), "--models-dir", str(models_dir)], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    paths = [Path(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(paths) == 5  # 4 images + 1 grid
    images = [p for p in paths if "txt2img-images" in str(p)]
    assert [p.name for p in images] == ["00000-1234.png", "00001-1235.png", "00002-1236.png", "00003-1237.png"]
    for seed, path in zip(range(1234, 1238), images):
        with Image.open(path) as im:
            text, _ = read_info_from_image(im)
        params = parse_infotext(text)
        assert params["Prompt"] == "a lighthouse at dusk, (waves:1.3)"
        assert params["Negative prompt"] == "blurry"
        assert (params["Seed"], params["Sampler"], params["Schedule type"]) == (str(seed), "DPM++ 2M", "Karras")
        assert params["Clip skip"] == "2" and params["Model"] == "sd-tiny-builtin"
    assert "txt2img-grids" in str(paths[-1]) and paths[-1].name == "grid-0000.png"


def test_cli_is_deterministic_and_reads_prompts_from_a_file(tmp_path: Path, models_dir: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\n\na green pear\n")
    common = ["--steps", "2", "--seed", "7", "--width", "64", "--height", "64", "--skip-grid",
              "--models-dir", str(models_dir), "--from-file", str(prompts)]
    a = _run([*common, "--outdir", str(tmp_path / "a"), "--data-dir", str(tmp_path / "d1")], tmp_path)
    b = _run([*common, "--outdir", str(tmp_path / "b"), "--data-dir", str(tmp_path / "d2")], tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-2000:] + b.stderr[-2000:]
    pa, pb = a.stdout.split(), b.stdout.split()
    assert len(pa) == 2 and len(pb) == 2
    for x, y in zip(pa, pb):
        assert Path(x).read_bytes() == Path(y).read_bytes()
    with Image.open(pa[1]) as im:
        assert read_info_from_image(im)[0].startswith("a green pear\n")


def test_cli_reports_bad_input_clearly(tmp_path: Path, models_dir: Path) -> None:
    out = _run(["--prompt", "x", "--width", "65", "--models-dir", str(models_dir),
                "--data-dir", str(tmp_path / "data")], tmp_path)
    assert out.returncode == 2
    assert "width: must be a multiple of 8, got 65" in out.stderr
