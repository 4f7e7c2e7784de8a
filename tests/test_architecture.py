"""Architecture rules that a grep or a subprocess can check (style.md rules 4, 5, 6)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("backend", "ui") for p in (ROOT / d).rglob("*.py")] + [ROOT / "webui.py"]


def _modules() -> list[str]:
    mods = []
    for path in SOURCES:
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods.append(".".join(parts))
    return sorted(mods)


def test_importing_every_module_has_no_side_effects(tmp_path: Path) -> None:
    """Import everything with a hostile argv in an empty folder: no argv parsing, no files, no CUDA."""
    code = f"""
import importlib, os, sys
sys.argv = ["x", "--definitely-not-a-flag", "--port", "nonsense"]
os.chdir({str(tmp_path)!r})
for name in {_modules()!r}:
    importlib.import_module(name)
import torch
assert not torch.cuda.is_initialized(), "CUDA initialised at import"
print("imported", len({_modules()!r}))
"""
    env = {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    created = [p for p in tmp_path.rglob("*") if not p.name.startswith(".")]
    assert created == [], f"import created files: {created}"


def test_no_monkey_patching_of_libraries() -> None:
    """Patch weights, never classes: no assignment to attributes of torch/diffusers/transformers."""
    pattern = re.compile(r"^\s*(torch|diffusers|transformers|k_diffusion|gradio|gr)(\.\w+)+\s*=[^=]", re.M)
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in SOURCES for m in pattern.finditer(p.read_text())]
    assert offenders == []


def test_cuda_literal_only_in_devices() -> None:
    """Only DevicePolicy decides placement (style rule 5)."""
    offenders = [str(p.relative_to(ROOT)) for p in SOURCES
                 if p.name != "devices.py" and re.search(r"""["']cuda""", p.read_text())]
    assert offenders == []


def test_random_draws_only_in_noise_module() -> None:
    """Under backend/sampling, only noise.py draws random numbers (style rule 1)."""
    sampling = ROOT / "backend" / "sampling"
    offenders = [str(p.relative_to(ROOT)) for p in sampling.rglob("*.py")
                 if p.name != "noise.py" and re.search(r"torch\.(randn|rand|randint|normal|randn_like|rand_like)\(", p.read_text())]
    assert offenders == []
