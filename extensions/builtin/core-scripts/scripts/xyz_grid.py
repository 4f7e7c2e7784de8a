"""X/Y/Z plot: A1111's controls and events; the plot itself is backend.scripts.xyz_plot."""
from __future__ import annotations

from typing import Any

import gradio as gr

from backend.scripts import Script
from backend.scripts import xyz_plot

FILL_SYMBOL = "\U0001f4d2"  # 📒, A1111's "fill in every choice" button


class XYZPlot(Script):
    def title(self) -> str:
        return xyz_plot.TITLE

    def ui(self, is_img2img: bool) -> list[Any]:
        options = xyz_plot.axis_options(is_img2img)
        labels = [axis.label for axis in options]
        axes = []
        with gr.Row():
            with gr.Column(scale=19):
                for letter, default in (("x", labels[1]), ("y", labels[0]), ("z", labels[0])):
                    with gr.Row():
                        kind = gr.Dropdown(label=f"{letter.upper()} type", choices=labels, value=default, type="index",
                                           elem_id=self.elem_id(f"{letter}_type"))
                        values = gr.Textbox(value="", label=f"{letter.upper()} values", lines=1,
                                            elem_id=self.elem_id(f"{letter}_values"))
                        values_dropdown = gr.Dropdown(label=f"{letter.upper()} values", visible=False,
                                                      multiselect=True, interactive=True)
                        fill = gr.Button(value=FILL_SYMBOL, elem_id=f"xyz_grid_fill_{letter}_tool_button",
                                         visible=False, size="sm", scale=0, min_width=40)
                    axes.append((kind, values, values_dropdown, fill))

        with gr.Row(variant="compact", elem_id="axis_options"):
            with gr.Column():
                no_fixed_seeds = gr.Checkbox(label="Keep -1 for seeds", value=False,
                                             elem_id=self.elem_id("no_fixed_seeds"))
                with gr.Row():
                    vary = [gr.Checkbox(label=f"Vary seeds for {letter}", value=False, min_width=80,
                                        elem_id=self.elem_id(f"vary_seeds_{letter.lower()}"))
                            for letter in xyz_plot.AXES]
            with gr.Column():
                draw_legend = gr.Checkbox(label="Draw legend", value=True, elem_id=self.elem_id("draw_legend"))
                include_lone_images = gr.Checkbox(label="Include Sub Images", value=False,
                                                  elem_id=self.elem_id("include_lone_images"))
                include_sub_grids = gr.Checkbox(label="Include Sub Grids", value=False,
                                                elem_id=self.elem_id("include_sub_grids"))
                csv_mode = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False,
                                       elem_id=self.elem_id("csv_mode"))
            with gr.Column():
                margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                        elem_id=self.elem_id("margin_size"))

        with gr.Row(variant="compact", elem_id="swap_axes"):
            swaps = [(gr.Button(value=f"Swap {a}/{b} axes", elem_id=f"{a.lower()}{b.lower()}_grid_swap_axes_button"),
                      i, j) for a, b, i, j in (("X", "Y", 0, 1), ("Y", "Z", 1, 2), ("X", "Z", 0, 2))]
        self._wire(options, axes, csv_mode, swaps)

        self.infotext_fields = []
        for letter, (kind, values, values_dropdown, _) in zip(xyz_plot.AXES, axes):
            self.infotext_fields += [(kind, f"{letter} Type"), (values, f"{letter} Values"),
                                     (values_dropdown, _dropdown_from_infotext(letter))]

        (x_type, x_values, x_dropdown, _), (y_type, y_values, y_dropdown, _), (z_type, z_values, z_dropdown, _) = axes
        return [x_type, x_values, x_dropdown, y_type, y_values, y_dropdown, z_type, z_values, z_dropdown,
                draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, *vary, margin_size, csv_mode]

    def _wire(self, options: list[xyz_plot.AxisOption], axes: list[tuple[Any, Any, Any, Any]], csv_mode: Any,
              swaps: list[tuple[Any, int, int]]) -> None:
        def choices_of(axis_index: int) -> list[str] | None:
            axis = options[axis_index]
            return None if axis.choices is None else axis.choices(self.app_context)

        def select_axis(axis_index: int, text: str, chosen: list[str] | None, csv: bool) -> tuple[Any, Any, Any]:
            # A1111: dropdown for axes with choices, text otherwise or in CSV mode; values carried over.
            choices = choices_of(axis_index)
            if choices is not None:
                if csv:
                    if chosen:
                        text = xyz_plot.list_to_csv_string([c for c in chosen if c in choices])
                        chosen = []
                elif text:
                    chosen = [c for c in xyz_plot.csv_string_to_list_strip(text) if c in choices]
                    text = ""
            has_choices = choices is not None
            return (gr.update(visible=has_choices), gr.update(visible=not has_choices or csv, value=text),
                    gr.update(choices=choices or [], visible=has_choices and not csv, value=chosen or []))

        def fill(axis_index: int, csv: bool) -> tuple[Any, Any]:
            choices = choices_of(axis_index)
            if choices is None:
                return gr.update(), gr.update()
            return (gr.update(value=xyz_plot.list_to_csv_string(choices)), gr.update()) if csv \
                else (gr.update(), gr.update(value=choices))

        for kind, values, values_dropdown, fill_button in axes:
            kind.change(select_axis, [kind, values, values_dropdown, csv_mode], [fill_button, values, values_dropdown],
                        show_progress="hidden")
            fill_button.click(fill, [kind, csv_mode], [values, values_dropdown], show_progress="hidden")

        def change_mode(csv: bool, *state: Any) -> list[Any]:
            updates: list[Any] = []
            for i in range(3):
                updates += select_axis(state[3 * i], state[3 * i + 1], state[3 * i + 2], csv)
            return updates

        flat = [component for kind, values, values_dropdown, _ in axes for component in (kind, values, values_dropdown)]
        outputs = [component for kind, values, values_dropdown, fill_button in axes
                   for component in (fill_button, values, values_dropdown)]
        csv_mode.change(change_mode, [csv_mode, *flat], outputs, show_progress="hidden")

        def swap(first: int, second: int, text1: str, chosen1: Any, text2: str, chosen2: Any) -> tuple[Any, ...]:
            return options[second].label, text2, chosen2, options[first].label, text1, chosen1

        for button, i, j in swaps:
            a, b = axes[i], axes[j]
            button.click(swap, [a[0], b[0], a[1], a[2], b[1], b[2]], [a[0], a[1], a[2], b[0], b[1], b[2]],
                         show_progress="hidden")

    def run(self, p: Any, *args: Any) -> Any:
        return xyz_plot.run_plot(p, xyz_plot.PlotArgs.from_args(args))


def _dropdown_from_infotext(letter: str) -> Any:
    def values(params: dict[str, Any]) -> Any:
        return gr.update(value=xyz_plot.csv_string_to_list_strip(str(params.get(f"{letter} Values", ""))))
    return values
