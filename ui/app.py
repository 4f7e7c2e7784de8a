"""The Gradio UI, mounted on the FastAPI app that webui.py builds (which also serves the API with --api).

Tabs in A1111's order: txt2img, img2img, Extras, PNG Info, Settings, under a quicksettings
bar with the checkpoint dropdown and the server's status. Layout and event wiring only:
every generation is a processing object submitted to the shared job queue.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from fastapi import FastAPI

from backend.context import AppContext
from ui import common, extensions, extra_networks, extras, img2img, paste, pnginfo, settings, train, txt2img
from ui.generation import wire_paste
from ui.progress import outcome, status_html, watch
from ui.theme import CSS, theme

STATUS_INTERVAL = 1.0


def mount_ui(app: FastAPI, ctx: AppContext, blocks: gr.Blocks | None = None) -> FastAPI:
    """Mount the Gradio UI (built by build_ui unless given) at the root of `app` (the app that
    serves the API with --api), with the enabled extensions' style.css and javascript files.

    Mount it last: the UI takes every path that no route added before it matches.
    """
    blocks = blocks or build_ui(ctx)
    enabled = [e for e in ctx.scripts.extensions if e.enabled]
    scripts = "".join(f"<script>\n{path.read_text(encoding='utf-8')}\n</script>\n"
                      for e in enabled for path in e.javascript_files)
    gr.mount_gradio_app(app, blocks, path="", auth=_gradio_auth(ctx), theme=theme(), css=CSS,
                        css_paths=[e.css_file for e in enabled if e.css_file], head=scripts or None, show_error=True)
    extra_networks.install_login_check(app)
    return app


def _gradio_auth(ctx: AppContext) -> list[tuple[str, str]] | None:
    entries: list[str] = []
    if ctx.settings.gradio_auth:
        entries += ctx.settings.gradio_auth.split(",")
    if ctx.settings.gradio_auth_path:
        with open(ctx.settings.gradio_auth_path, encoding="utf8") as f:
            for line in f:
                entries += [x for x in line.strip().split(",") if x]
    pairs = [tuple(e.split(":", 1)) for e in entries if ":" in e]
    return pairs or None  # type: ignore[return-value]


@dataclass
class Quicksettings:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    status: gr.HTML


def _build_quicksettings(ctx: AppContext) -> Quicksettings:
    with gr.Row(elem_id="quicksettings", equal_height=True):
        checkpoint = gr.Dropdown(ctx.registry.titles(), value=ctx.options["sd_model_checkpoint"],
                                 label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint",
                                 scale=0, min_width=380)
        refresh = gr.Button(common.REFRESH_ICON, elem_id="refresh_sd_model_checkpoint", elem_classes="tool",
                            size="sm", scale=0, min_width=40)
        status = gr.HTML(status_html(ctx), elem_id="server_status", js_on_load=None)
    return Quicksettings(checkpoint, refresh, status)


def checkpoint_choices(ctx: AppContext) -> Any:
    """The checkpoint dropdown as it should read now (titles gain their hash once a model is hashed)."""
    return gr.update(choices=ctx.registry.titles(), value=ctx.options["sd_model_checkpoint"], interactive=True)


def _wire_quicksettings(ctx: AppContext, quick: Quicksettings) -> None:
    def switch(title: str) -> Iterator[Any]:
        """Load the chosen checkpoint in the job queue (after the running job); it then becomes the option."""
        with common.shown_as_gr_error():
            job = ctx.switch_checkpoint(title)  # the same path as the options API
        if job is not None:
            yield gr.update(interactive=False)
            for _ in watch(job):
                yield gr.skip()
            outcome(job)
        yield checkpoint_choices(ctx)

    def restore() -> Any:
        return checkpoint_choices(ctx)

    def refresh() -> Any:
        ctx.registry.refresh()
        return checkpoint_choices(ctx)

    # .input fires for the user's choice only, not when a page load fills the dropdown in.
    quick.checkpoint.input(switch, quick.checkpoint, quick.checkpoint, show_progress="hidden",
                           concurrency_limit=None).then(restore, None, quick.checkpoint, show_progress="hidden")
    quick.refresh.click(refresh, None, quick.checkpoint, show_progress="hidden")
    timer = gr.Timer(STATUS_INTERVAL)
    timer.tick(lambda: status_html(ctx), None, quick.status, show_progress="hidden", queue=False)


def _extension_tabs(ctx: AppContext) -> None:
    """Top-level tabs extensions add with on_ui_tabs: [(gr.Blocks, title, elem_id)] each."""
    for tabs in ctx.scripts.callbacks.fire("ui_tabs"):
        for blocks, title, elem_id in tabs or []:
            with gr.Tab(title, id=elem_id, elem_id=f"tab_{elem_id}"):
                blocks.render()


def build_ui(ctx: AppContext) -> gr.Blocks:
    """Every tab and the events between them."""
    counter = common.TokenCounter(ctx)
    ctx.scripts.callbacks.fire("before_ui")
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as blocks:
        quick = _build_quicksettings(ctx)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img") as t2i_tab:
                t2i = txt2img.build(ctx, counter)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img") as i2i_tab:
                i2i = img2img.build(ctx, counter)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras") as extras_tab:
                ex = extras.build(ctx)
            # The controls take their saved defaults now, before the page's config is made.
            defaults = settings.UiDefaults(settings.ui_config_path(ctx.settings))
            for name, tab in (("txt2img", t2i_tab), ("img2img", i2i_tab), ("extras", extras_tab)):
                defaults.add_tab(name, tab)
            defaults.save()
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = pnginfo.build()
            with gr.Tab("Train", id="train", elem_id="tab_train"):
                train.build(ctx)
            _extension_tabs(ctx)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                st = settings.build(ctx, defaults)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions.build(ctx)
        _wire_quicksettings(ctx, quick)
        wire_paste(ctx, t2i)
        wire_paste(ctx, i2i)
        _wire_send_buttons(ctx, tabs, t2i, i2i, ex, png)
        toprows = [t2i.toprow, i2i.toprow]
        common.wire_style_saving(ctx, toprows)

        def on_load() -> list[Any]:
            # Values that may have changed since the page was built (by the API, another page, a restart).
            return [*settings.current_values(ctx, st), checkpoint_choices(ctx), *common.style_choices(ctx, toprows)]

        # Marks the page as ready once the values above are in, for scripts and browser tests.
        blocks.load(on_load, None, [*st.components, quick.checkpoint, *common.style_dropdowns(toprows)],
                    show_progress="hidden").then(
            None, None, None, js=common.tooltips_js()).then(
            None, None, None, js="() => { document.body.dataset.uiLoaded = 'true'; }")
    return blocks


# ---------------------------------------------------------------------------
# "Send to": an image and its parameters from one tab to another
# ---------------------------------------------------------------------------

def _wire_send_buttons(ctx: AppContext, tabs: gr.Tabs, t2i: txt2img.Txt2ImgTab, i2i: img2img.Img2ImgTab,
                       ex: extras.ExtrasTab, png: pnginfo.PngInfoTab) -> None:
    assert i2i.inputs is not None and i2i.inpaint is not None
    inputs = i2i.inputs
    i2i_fields = i2i.paste_fields(ctx)
    t2i_fields = t2i.paste_fields(ctx)

    def params_of(text: str) -> dict[str, object]:
        return paste.parse(text, ctx.options, ctx.styles, ctx.scripts.callbacks) if text else {}

    def to_img2img(image: Any, text: str, sub_tab: str) -> list[Any]:
        if image is None:
            raise gr.Error("No image to send")
        params = params_of(text)
        target = inputs.inpaint_editor if sub_tab == "inpaint" else inputs.image
        return [image if c is target else gr.skip() for c in (inputs.image, inputs.inpaint_editor)] + [
            gr.Tabs(selected="img2img"), gr.Tabs(selected=sub_tab), *img2img.select_mode(sub_tab),
            *(paste.values_for(params, i2i_fields) if params else [gr.skip()] * len(i2i_fields))]

    img2img_outputs = [inputs.image, inputs.inpaint_editor, tabs, inputs.tabs, inputs.mode, i2i.inpaint.group,
                       *(f.component for f in i2i_fields)]

    def to_extras(image: Any) -> list[Any]:
        if image is None:
            raise gr.Error("No image to send")
        return [image, gr.Tabs(selected="extras"), gr.Tabs(selected="single_image"), extras.MODES[0]]

    extras_outputs = [ex.image, tabs, ex.tabs, ex.mode]

    # From a results gallery: the picture the user clicked and its infotext.
    for tab in (t2i, i2i):
        r = tab.results
        source = [r.gallery, r.selected, r.generation_info]
        assert r.send_to_img2img is not None and r.send_to_inpaint is not None
        for button, sub_tab in ((r.send_to_img2img, "img2img"), (r.send_to_inpaint, "inpaint")):
            button.click(_from_gallery(lambda image, text, s=sub_tab: to_img2img(image, text, s)), source,
                         img2img_outputs, show_progress="hidden")
        r.send_to_extras.click(_from_gallery(lambda image, text: to_extras(image)), source, extras_outputs,
                               show_progress="hidden")

    # From PNG Info: the dropped image and the parameters read from it.
    def to_txt2img(text: str) -> list[Any]:
        params = params_of(text)
        if not params:
            raise gr.Error("No generation parameters in this image")
        return [gr.Tabs(selected="txt2img"), *paste.values_for(params, t2i_fields)]

    png.send_to_txt2img.click(to_txt2img, png.parameters, [tabs, *(f.component for f in t2i_fields)],
                              show_progress="hidden")
    png.send_to_img2img.click(lambda image, text: to_img2img(image, text, "img2img"), [png.image, png.parameters],
                              img2img_outputs, show_progress="hidden")
    png.send_to_inpaint.click(lambda image, text: to_img2img(image, text, "inpaint"), [png.image, png.parameters],
                              img2img_outputs, show_progress="hidden")
    png.send_to_extras.click(to_extras, png.image, extras_outputs, show_progress="hidden")


def _from_gallery(send: Any) -> Any:
    """Adapt a (image, infotext) sender to the gallery's inputs (gallery, selected index, generation info)."""
    def from_gallery(gallery: list | None, index: int, info: dict) -> Any:
        image = common.gallery_image(gallery, index)
        return send(image, common.selected_infotext(info, index))

    return from_gallery

