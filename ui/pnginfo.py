"""The PNG Info tab: drop an image, read its generation parameters and other metadata, send them on."""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from backend.postprocess.images import read_info_from_image


@dataclass
class PngInfoTab:
    image: gr.Image
    info: gr.HTML
    parameters: gr.Textbox
    send_to_txt2img: gr.Button
    send_to_img2img: gr.Button
    send_to_inpaint: gr.Button
    send_to_extras: gr.Button


def build() -> PngInfoTab:
    """The tab's layout and wiring; call inside gr.Tab("PNG Info"). The Send buttons are wired by ui.app."""
    with gr.Row(equal_height=False, elem_classes="main-row"):
        with gr.Column(scale=1, min_width=360):
            image = gr.Image(label="Source", type="pil", image_mode=None, format="png",
                             sources=["upload", "clipboard"], elem_id="pnginfo_image", height=480)
        with gr.Column(scale=1, min_width=360):
            info = gr.HTML("<div class='pnginfo-empty'>Drop an image to read its parameters.</div>",
                           elem_id="pnginfo_html", elem_classes="infotext", js_on_load=None)
            parameters = gr.Textbox(visible=False, elem_id="pnginfo_generation_info")
            with gr.Row(elem_classes="image-buttons"):
                to_txt2img = gr.Button("Send to txt2img", size="sm", elem_id="pnginfo_send_to_txt2img")
                to_img2img = gr.Button("Send to img2img", size="sm", elem_id="pnginfo_send_to_img2img")
                to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id="pnginfo_send_to_inpaint")
                to_extras = gr.Button("Send to extras", size="sm", elem_id="pnginfo_send_to_extras")
    image.change(read_image, image, [info, parameters], show_progress="hidden")
    return PngInfoTab(image, info, parameters, to_txt2img, to_img2img, to_inpaint, to_extras)


def read_image(image: Image.Image | None) -> tuple[str, str]:
    """(markup listing the parameters and other text items, the raw infotext or "")."""
    if image is None:
        return "", ""
    geninfo, items = read_info_from_image(image)
    shown = {"parameters": geninfo} if geninfo else {}
    shown.update({str(k): v for k, v in items.items() if isinstance(v, (str, int, float))})
    if not shown:
        return "<div class='pnginfo-empty'>Nothing found in the image.</div>", ""
    body = "".join(
        f"<div class='pnginfo-item'><p class='pnginfo-key'><b>{html.escape(key)}</b></p>"
        f"<p class='pnginfo-value'>{_lines(value)}</p></div>"
        for key, value in shown.items()
    )
    return f"<div class='pnginfo'>{body}</div>", geninfo or ""


def _lines(value: Any) -> str:
    return "<br>".join(html.escape(line) for line in str(value).split("\n"))
