"""Example extension (README, "Write an extension"): an always-on script with its own UI section,
an option in Settings, an infotext field and an HTTP route. Copy the `prompt-suffix` folder into
`extensions/` and restart to try it."""
import gradio as gr

from backend import callbacks
from backend.config import OptionInfo
from backend.scripts import AlwaysVisible, Script


class PromptSuffix(Script):
    def title(self) -> str:
        return "Prompt suffix"

    def show(self, is_img2img: bool) -> object:
        return AlwaysVisible  # runs on every generation, in both tabs

    def ui(self, is_img2img: bool) -> list:
        with gr.Accordion("Prompt suffix", open=False):
            enabled = gr.Checkbox(False, label="Enabled", elem_id=self.elem_id("enabled"))
            suffix = gr.Textbox("", label="Suffix", elem_id=self.elem_id("suffix"))
        return [enabled, suffix]  # their values are the *args of every hook below

    def process(self, p, enabled: bool, suffix: str) -> None:
        # Prompts and seeds are set up by now; each batch takes its slice of p.all_prompts.
        separator = p.context.options["prompt_suffix_separator"]
        if enabled and suffix:
            p.all_prompts = [f"{prompt}{separator}{suffix}" for prompt in p.all_prompts]
            p.extra_generation_params["Prompt suffix"] = suffix


def add_settings(opts) -> None:
    opts.add_option("prompt_suffix_separator", OptionInfo(", ", "Prompt suffix separator", "prompt_suffix"))


def add_routes(demo, app) -> None:
    @app.get("/prompt-suffix/version")
    def version() -> dict:
        return {"version": 1}


callbacks.on_ui_settings(add_settings)
callbacks.on_app_started(add_routes)
