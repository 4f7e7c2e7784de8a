"""The look: Gradio's default theme in A1111's orange, and the CSS for A1111's layout details.

Fonts are Gradio's bundled local ones, so the page loads nothing from the internet.
"""
from __future__ import annotations

import gradio as gr


def theme() -> gr.themes.Base:
    return gr.themes.Default(primary_hue="orange", secondary_hue="blue", neutral_hue="slate", radius_size="sm",
                             spacing_size="sm")


CSS = """
.gradio-container { max-width: 100% !important; padding: 0 12px !important; }
footer { display: none !important; }

/* quicksettings bar */
#quicksettings { align-items: flex-end; gap: 8px; margin-bottom: 4px; }
#quicksettings > * { flex-grow: 0; }
#server_status { flex-grow: 1 !important; text-align: right; align-self: center; }
.server-status { font-size: 0.85rem; padding: 3px 10px; border-radius: 999px;
                 background: var(--background-fill-secondary); color: var(--body-text-color-subdued); }
.server-status.busy { color: var(--body-text-color); background: var(--color-accent-soft); }

/* small square tool buttons (🎲 ♻️ ↙️ 🗑️ ⇅ 🔄) */
button.tool { min-width: 2.6em !important; max-width: 2.6em; height: 2.6em; padding: 0 !important;
              font-size: 1.05rem; line-height: 1; align-self: flex-end; }

/* prompt row */
.toprow { gap: 10px; margin-bottom: 6px; }
.prompt-box { position: relative; gap: 0 !important; }
.token-counter-box { position: absolute !important; top: 6px; right: 10px; z-index: 20; width: auto !important;
                     min-width: 0 !important; pointer-events: none; padding: 0 !important; }
.token-counter { font-size: 0.75rem; padding: 1px 6px; border-radius: 4px; opacity: 0.85;
                 background: var(--background-fill-secondary); color: var(--body-text-color-subdued); }
.token-counter-over { color: #d33; }
.actions { gap: 6px !important; }
button.generate { min-height: 5.8em; font-size: 1.25rem !important; font-weight: 600; }
.interrupt-row, .tool-row { gap: 6px; flex-wrap: nowrap !important; }
.interrupt-row button { min-height: 5.8em; }
.tool-row { justify-content: flex-start; }

/* settings column */
.size-row { align-items: center; flex-wrap: nowrap !important; }
.size-row button.tool { align-self: center; }
.seed-row { align-items: flex-end; flex-wrap: nowrap !important; }
.seed-row .gr-checkbox, .seed-row label { white-space: nowrap; }

/* results */
.results { gap: 6px !important; }
.progress-box:empty { display: none; }
.progress-bar { position: relative; height: 1.7em; border-radius: 6px; overflow: hidden;
                background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary); }
.progress-fill { height: 100%; background: var(--color-accent); opacity: 0.75; transition: width 0.4s ease; }
.progress-text { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
                 font-size: 0.85rem; color: var(--body-text-color); }
.live-preview img { width: 100% !important; height: 100% !important; object-fit: contain; }
.batch-count { font-size: 0.85rem; margin-bottom: 4px; }
.image-buttons { gap: 6px; flex-wrap: wrap; }
.image-buttons button { flex: 1 1 0; white-space: nowrap; }
.infotext { font-size: 0.9rem; line-height: 1.45; word-break: break-word; }
.infotext-body { padding: 8px 10px; border-radius: 6px; background: var(--background-fill-secondary); }
.html-log, .saved, .comments, .interrupted { font-size: 0.8rem; color: var(--body-text-color-subdued); }
.interrupted { color: #d33; }

/* PNG Info */
.pnginfo-item { margin-bottom: 10px; }
.pnginfo-key { margin: 0 0 2px 0; }
.pnginfo-value { margin: 0; white-space: pre-wrap; word-break: break-word; }
.pnginfo-empty { color: var(--body-text-color-subdued); padding: 12px 0; }

/* Settings */
#settings_top { align-items: center; gap: 12px; }
.settings-section { max-width: 960px; }
.settings-nav .wrap { flex-direction: column !important; gap: 2px !important; }
.settings-nav label { width: 100%; border: none !important; background: transparent !important;
                      box-shadow: none !important; padding: 6px 10px !important; border-radius: 6px; }
.settings-nav label.selected { background: var(--color-accent-soft) !important; font-weight: 600; }
.settings-nav input[type=radio] { display: none; }
.settings-result { font-size: 0.9rem; }
.hint p { font-size: 0.85rem; color: var(--body-text-color-subdued); }
"""
