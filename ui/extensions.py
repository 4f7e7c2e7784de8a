"""The Extensions tab: installed extensions with enable/disable, applied by restarting the server in-process.

Nothing is installed from here (no install-from-URL, no pip): an extension is a folder copied into
`extensions/`. That keeps the server safe to expose with --listen, which is why A1111 hides its
installer behind --enable-insecure-extension-access.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from backend.context import AppContext
from backend.scripts import Extension
from backend.scripts.extensions import DISABLE_CHOICES

# The page reloads itself once the restarted server answers again.
_RELOAD_JS = """() => {
  const ping = () => fetch(window.location.href, {cache: 'no-store'}).then(
      r => { if (r.ok) { window.location.reload(); } else { setTimeout(ping, 500); } },
      () => setTimeout(ping, 500));
  setTimeout(ping, 1500);
}"""


@dataclass
class ExtensionsTab:
    enabled: gr.CheckboxGroup
    disable_all: gr.Radio
    apply: gr.Button
    table: gr.HTML


def build(ctx: AppContext) -> ExtensionsTab:
    """Call inside gr.Tab("Extensions")."""
    extensions = ctx.scripts.extensions
    with gr.Column(elem_id="extensions_installed"):
        table = gr.HTML(table_html(extensions), elem_id="extensions_table")
        enabled = gr.CheckboxGroup([e.name for e in extensions],
                                   value=[e.name for e in extensions if e.name not in _disabled(ctx)],
                                   label="Enabled extensions", elem_id="extensions_enabled")
        disable_all = gr.Radio(list(DISABLE_CHOICES), value=ctx.options["disable_all_extensions"],
                               label="Disable all extensions", elem_id="extensions_disable_all")
        with gr.Row():
            apply = gr.Button("Apply and restart UI", variant="primary", elem_id="extensions_apply", scale=0,
                              min_width=220)
        gr.Markdown("To install an extension, copy its folder into `extensions/` and restart. Nothing is "
                    "downloaded or installed from here.", elem_classes="extensions-note")

    def apply_and_restart(names: list[str], disable: str) -> None:
        chosen = set(names or [])
        ctx.options.set("disabled_extensions", sorted(e.name for e in extensions if e.name not in chosen))
        ctx.options.set("disable_all_extensions", disable)
        ctx.options.save()
        if ctx.request_restart is None:
            raise gr.Error("Saved; restart the server to apply (this server cannot restart itself)")
        ctx.request_restart()

    apply.click(apply_and_restart, [enabled, disable_all], None, show_progress="hidden").then(
        None, None, None, js=_RELOAD_JS)
    return ExtensionsTab(enabled, disable_all, apply, table)


def _disabled(ctx: AppContext) -> set[str]:
    return {name.lower() for name in ctx.options["disabled_extensions"]}


def table_html(extensions: list[Extension]) -> str:
    """One row per extension: name, kind, state, version, scripts and load errors."""
    rows = []
    for e in extensions:
        scripts = ", ".join(html.escape(c.__name__) for c in e.script_classes) or "-"
        errors = "<br>".join(html.escape(x) for x in e.errors)
        state = "enabled" if e.enabled else "disabled"
        rows.append(
            f"<tr class='ext-{state}'><td>{html.escape(e.name)}</td><td>{'built-in' if e.is_builtin else 'user'}</td>"
            f"<td>{state}</td><td>{html.escape(e.version) or '-'}</td><td>{scripts}</td>"
            f"<td class='ext-errors'>{errors}</td></tr>")
    if not rows:
        rows.append("<tr><td colspan='6'>No extensions installed.</td></tr>")
    return ("<table class='extensions-table'><thead><tr><th>Extension</th><th>Kind</th><th>State</th>"
            "<th>Version</th><th>Scripts</th><th>Problems</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")
