"""The `Script` base class: A1111's scripts.Script, with the same methods and the same meaning.

A script is a class in an extension's `scripts/*.py`. `show()` decides where it appears:
False hides it, True makes it a selectable script of the "Script" dropdown (only its `run` is
called), `AlwaysVisible` makes it an always-on script whose hooks run on every generation.
`ui()` returns Gradio components; their values, in order, are the `*args` of every hook.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from PIL import Image

from backend.errors import ExtensionError


class _AlwaysVisible:
    def __repr__(self) -> str:
        return "AlwaysVisible"


AlwaysVisible = _AlwaysVisible()
"""Return this from `Script.show()` for an always-on script (A1111's scripts.AlwaysVisible)."""


@dataclass
class PostprocessImageArgs:
    """postprocess_image: replace `image` to change the saved/returned picture."""

    image: Image.Image


@dataclass
class PostprocessBatchListArgs:
    """postprocess_batch_list: edit `images` (a list of PIL images) in place."""

    images: list[Image.Image]


class Script:
    """Subclass and override what you need; every hook's default does nothing.

    Attributes set by the runner: `filename`, `extension` (its folder name), `is_txt2img`,
    `is_img2img`, `alwayson`, `args_from`/`args_to` (this script's slice of `p.script_args`),
    `controls` (what `ui()` returned, for the API's defaults), `tabname`; and `app_context`, the
    application (backend.context.AppContext: registry, models, upscalers, styles, options, ...),
    set before `ui()` is first called so choices can list the user's files.
    """

    app_context: Any = None

    filename: str = ""
    extension: str = ""
    is_txt2img = False
    is_img2img = False
    alwayson = False
    args_from = 0
    args_to = 0
    controls: list[Any] = []
    tabname = ""
    section: str | None = None
    infotext_fields: list[tuple[Any, str]] | None = None
    paste_field_names: list[str] | None = None

    def title(self) -> str:
        """The display name; the API matches it case-insensitively. Override it: the class name
        stands in only so a script that forgot still shows up under a recognisable name."""
        return type(self).__name__

    @property
    def name(self) -> str:
        return self.title().lower()

    def show(self, is_img2img: bool) -> bool | _AlwaysVisible:
        return True

    def ui(self, is_img2img: bool) -> list[Any]:
        """Gradio components whose values become the hooks' *args (created inside the tab's layout)."""
        return []

    def run(self, p: Any, *args: Any) -> Any:
        """Selectable scripts: do the whole job, usually by calling `process_images`, and return a Processed."""
        raise ExtensionError(self.extension or type(self).__name__,
                             f"script {self.title()!r} is selectable but has no run()")

    def setup(self, p: Any, *args: Any) -> None:
        """Called when p's scripts and args are assigned, before anything else."""

    def before_process(self, p: Any, *args: Any) -> None:
        """Before anything is prepared (prompts and seeds are not set yet)."""

    def process(self, p: Any, *args: Any) -> None:
        """After prompts, seeds and the model are set up, before the first batch."""

    def before_process_batch(self, p: Any, *args: Any, batch_number: int, prompts: list[str], seeds: list[int],
                             subseeds: list[int]) -> None:
        """Before a batch's extra networks are parsed: prompts may still be edited (add <lora:...> here)."""

    def after_extra_networks_activate(self, p: Any, *args: Any, batch_number: int, prompts: list[str],
                                      seeds: list[int], subseeds: list[int], extra_network_data: dict) -> None:
        """After the batch's LoRA networks were applied."""

    def process_batch(self, p: Any, *args: Any, batch_number: int, prompts: list[str], seeds: list[int],
                      subseeds: list[int]) -> None:
        """Just before a batch is sampled."""

    def postprocess_batch(self, p: Any, *args: Any, images: Any, batch_number: int) -> None:
        """After VAE decoding: `images` is the batch as a [B, 3, H, W] tensor in [0, 1]."""

    def postprocess_batch_list(self, p: Any, pp: PostprocessBatchListArgs, *args: Any, batch_number: int) -> None:
        """After VAE decoding, the batch as a list of images that may be edited or extended."""

    def postprocess_image(self, p: Any, pp: PostprocessImageArgs, *args: Any) -> None:
        """Each image before it is saved; set pp.image to replace it."""

    def before_hr(self, p: Any, *args: Any) -> None:
        """txt2img with hires fix: before the second pass."""

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        """After every image is done; `processed` is the result being returned."""

    def elem_id(self, item_id: str) -> str:
        """A1111's element id: script_<tab>_<title>_<item>."""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        tab = f"{self.tabname}_" if self.tabname else ""
        return f"script_{tab}{title}_{item_id}"
