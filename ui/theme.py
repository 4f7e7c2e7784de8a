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
.styles-row { align-items: flex-end; gap: 6px; flex-wrap: nowrap !important; }
.styles-row button.tool { align-self: flex-end; }
.styles-dialog { margin-bottom: 8px; padding: 10px 12px !important; border: 1px solid var(--color-accent);
                 border-radius: 8px; background: var(--background-fill-secondary); gap: 8px !important; }
.styles-dialog-top { align-items: flex-end; flex-wrap: nowrap !important; gap: 6px; }
.styles-dialog-buttons { justify-content: flex-end; gap: 8px; }

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
.defaults-changes { border-collapse: collapse; font-size: 0.85rem; margin-top: 6px; }
.defaults-changes th, .defaults-changes td { border: 1px solid var(--border-color-primary); padding: 3px 8px;
                                             text-align: left; }
.defaults-changes th { background: var(--background-fill-secondary); }
.hint p { font-size: 0.85rem; color: var(--body-text-color-subdued); }

/* Lora page (ui/extra_networks.py) */
.lora-controls { gap: 6px; align-items: center; margin-bottom: 6px; flex-wrap: nowrap !important; }
.lora-page { display: flex; gap: 10px; align-items: flex-start; }
.lora-tree { flex: 0 0 160px; max-height: 70vh; overflow-y: auto; display: flex; flex-direction: column; gap: 1px; }
.lora-dir { display: flex; justify-content: space-between; gap: 6px; text-align: left; cursor: pointer;
            padding: 3px 8px 3px calc(8px + var(--depth, 0) * 12px); border: none; border-radius: 6px;
            background: transparent; color: var(--body-text-color); font-size: 0.85rem; }
.lora-dir span:first-child { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.lora-dir:hover { background: var(--background-fill-secondary); }
.lora-dir.selected { background: var(--color-accent-soft); font-weight: 600; }
.lora-count { color: var(--body-text-color-subdued); font-size: 0.75rem; }
.lora-main { flex: 1; min-width: 0; }
.lora-status { font-size: 0.8rem; color: var(--body-text-color-subdued); margin-bottom: 6px; }
.lora-cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(128px, 1fr)); gap: 8px;
              max-height: 70vh; overflow-y: auto; align-content: start; padding: 2px; }
.lora-card { position: relative; aspect-ratio: 3 / 4; border-radius: 8px; overflow: hidden; cursor: pointer;
             background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary);
             user-select: none; content-visibility: auto; contain-intrinsic-size: auto 170px; }
.lora-card[hidden] { display: none !important; }
.lora-card:hover { border-color: var(--color-accent); box-shadow: 0 0 0 1px var(--color-accent); }
.lora-thumb, .lora-thumb img { width: 100%; height: 100%; }
.lora-thumb img { object-fit: cover; display: block; }
.lora-noimage { display: flex; align-items: center; justify-content: center; width: 100%; height: 100%;
                font-size: 2.6rem; font-weight: 700; color: var(--body-text-color-subdued);
                background: linear-gradient(135deg, var(--background-fill-secondary), var(--color-accent-soft)); }
.lora-text { position: absolute; left: 0; right: 0; bottom: 0; padding: 18px 8px 6px; color: #fff;
             background: linear-gradient(transparent, rgba(0, 0, 0, 0.78)); }
.lora-name { font-weight: 600; font-size: 0.82rem; line-height: 1.2; word-break: break-word; }
.lora-desc { font-size: 0.72rem; line-height: 1.25; opacity: 0.9; margin-top: 2px; display: -webkit-box;
             -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden; }
.lora-family { position: absolute; top: 6px; left: 6px; font-size: 0.65rem; font-weight: 600; padding: 1px 7px;
               border-radius: 999px; background: rgba(0, 0, 0, 0.6); color: #fff; }
.lora-family-sdxl { background: rgba(124, 58, 237, 0.85); }
.lora-family-sd2 { background: rgba(37, 99, 235, 0.85); }
.lora-family-sd1 { background: rgba(234, 88, 12, 0.85); }
.lora-edit { position: absolute; top: 4px; right: 4px; width: 26px; height: 26px; border: none; border-radius: 6px;
             background: rgba(0, 0, 0, 0.55); color: #fff; cursor: pointer; opacity: 0.7; font-size: 0.9rem; }
.lora-card:hover .lora-edit { opacity: 1; }
.lora-edit:hover { background: var(--color-accent); }
.lora-empty { color: var(--body-text-color-subdued); padding: 12px 0; font-size: 0.9rem; }
.lora-empty[hidden] { display: none; }
.lora-editor { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px !important;
               margin-bottom: 8px; gap: 8px !important; }
.lora-heading { display: flex; gap: 12px; align-items: flex-start; }
.lora-editor-top { align-items: flex-start !important; flex-wrap: nowrap !important; }
.lora-editor-top button.tool { align-self: flex-start; }
.lora-heading h3 { margin: 0 0 4px 0; font-size: 1.1rem; font-weight: 600; }
.lora-heading-thumb { flex: 0 0 72px; height: 96px; border-radius: 6px; overflow: hidden; }
.lora-heading-thumb img { width: 100%; height: 100%; object-fit: cover; }
.lora-heading-facts { font-size: 0.8rem; color: var(--body-text-color-subdued); word-break: break-word; }
.lora-heading-prompt { margin-top: 4px; font-size: 0.8rem; }
.lora-training { font-size: 0.85rem; }
.lora-training-table { border-collapse: collapse; margin-bottom: 6px; }
.lora-training-table th { text-align: left; font-weight: 400; padding: 2px 14px 2px 0; white-space: nowrap;
                          color: var(--body-text-color-subdued); vertical-align: top; }
.lora-training-table td { padding: 2px 0; word-break: break-word; }
.lora-tags-title { font-weight: 600; margin: 4px 0; color: var(--body-text-color-subdued); }
.lora-tags { display: flex; flex-wrap: wrap; gap: 4px; }
.lora-tag { font-size: 0.75rem; padding: 1px 7px; border-radius: 999px; background: var(--background-fill-secondary);
            border: 1px solid var(--border-color-primary); }
.lora-raw summary { cursor: pointer; margin-top: 6px; color: var(--body-text-color-subdued); }
.lora-raw pre { max-height: 240px; overflow: auto; font-size: 0.75rem; }
.lora-editor-buttons { gap: 6px; }
"""
