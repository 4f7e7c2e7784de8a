"""The Train tab in a real browser: check a data set, train a 2-step LoRA, see it finish, its file and sample."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.backend.training.test_lora_training import star_folder
from tests.ui.browser import open_tab, set_number, type_text, wait_for_text
from tests.ui.conftest import serve_ui


def test_check_dataset_and_train_two_steps(open_page: Any, tmp_path: Path, models_dir: Path,
                                          screenshot_dir: Path) -> None:
    folder = star_folder(tmp_path / "stars")
    with serve_ui(tmp_path / "data", models_dir, "--lora-dir", str(tmp_path / "Lora")) as server:
        page = open_page(server)
        open_tab(page, "Train")
        type_text(page, "train_dataset_folder", str(folder))
        set_number(page, "train_dataset_resolution", 64)
        page.click("#train_dataset_scan")
        wait_for_text(page, "train_dataset_warnings", "only 4 images")
        wait_for_text(page, "train_dataset_tags", "zkstar")

        open_tab(page, "LoRA")
        type_text(page, "train_lora_name", "uistar")
        type_text(page, "train_lora_dataset", str(folder))
        set_number(page, "train_lora_resolution", 64)
        set_number(page, "train_lora_max_train_steps", 2)
        type_text(page, "train_lora_sample_prompt", "zkstar")
        set_number(page, "train_lora_sample_steps", 2)
        page.click("#train_lora_start")
        wait_for_text(page, "train_lora_progress", "done: step 2/2")
        wait_for_text(page, "train_lora_files", "uistar.safetensors")
        assert (tmp_path / "Lora" / "uistar.safetensors").is_file()
        assert (tmp_path / "Lora" / "uistar.png").is_file()  # the sample is the card's preview
        page.wait_for_function("() => document.querySelectorAll('#train_lora_samples img').length >= 1")
        page.screenshot(path=str(screenshot_dir / "train.png"), full_page=True)
        page.close()  # before the server stops: an open page's connection holds its shutdown up
