"""The Lora page: a tab beside "Generation" in txt2img and img2img (A1111's extra-networks "Lora" tab).

Layout and wiring only; the cards and their data come from backend.networks.cards.
- The cards are one block of HTML that the page's script (SCRIPT) fetches from /sd_extra_networks/cards
  when the tab first opens and after the refresh button, straight into the page: thousands of cards
  never travel through Gradio's component updates. Previews are lazy-loaded from
  /sd_extra_networks/thumb. Search (name, path, hash), sort (path, name, date, either way) and the
  folder tree run in the browser, so typing never waits on the server.
- Clicking a card adds `<lora:NAME:WEIGHT>` plus its activation text to the prompt, and its negative
  text to the negative prompt; clicking it again takes them out (A1111's cardClicked). The script
  edits the textareas and sends an "input" event so Gradio takes the new value.
- The card's pencil opens the editor: the training metadata, the user metadata kept in `<stem>.json`
  (Save), and "Replace preview" with the picture selected in the tab's gallery. After either, the
  script fetches the card again from /sd_extra_networks/get-single-card.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request
from gradio.routes import App as GradioApp
from starlette.routing import Mount

from backend.context import AppContext
from backend.networks import cards
from backend.networks.registry import NetworkInfo
from ui import common

SORTS = ("Path", "Name", "Date")
ORDERS = ("Ascending", "Descending")
NO_METADATA = "<p class='lora-empty'>This file carries no training metadata.</p>"

# Runs once per cards block, when the tab first shows it (Gradio's js_on_load: `element` is the block,
# `trigger` fires its events).
# Written out as JavaScript; __SORT__ and __ORDER__ are the controls' initial values.
SCRIPT = r"""
const tabname = (element.closest("[id$='_lora_cards_html']") || {id: ""}).id.replace(/_lora_cards_html$/, "");
const view = {search: "", sort: "__SORT__", order: "__ORDER__", folder: ""};
const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
const keys = {
  path: (card) => card.dataset.path,
  name: (card) => card.dataset.sortName,
  date: (card) => parseFloat(card.dataset.sortDate),
};
let sortedAs = "";

function apply() {
  const grid = element.querySelector(".lora-cards");
  if (!grid) return;
  const cards = Array.from(grid.children);
  const order = view.sort + "/" + view.order;
  if (sortedAs !== order) {
    const key = keys[view.sort] || keys.path;
    const sign = view.order === "descending" ? -1 : 1;
    cards.sort((a, b) => {
      const x = key(a), y = key(b);
      return sign * (typeof x === "number" ? x - y : collator.compare(x, y));
    });
    grid.append(...cards);
    sortedAs = order;
  }
  const dirs = Array.from(element.querySelectorAll(".lora-dir"));
  if (view.folder && !dirs.some((dir) => dir.dataset.folder === view.folder)) view.folder = "";
  dirs.forEach((dir) => dir.classList.toggle("selected", dir.dataset.folder === view.folder));
  const terms = view.search.toLowerCase().split(/\s+/).filter(Boolean);
  let shown = 0;
  for (const card of cards) {
    const folder = card.dataset.folder;
    const inFolder = !view.folder || folder === view.folder || folder.startsWith(view.folder + "/");
    const match = inFolder && terms.every((term) => card.dataset.search.includes(term));
    card.hidden = !match;
    if (match) shown += 1;
  }
  const status = element.querySelector(".lora-status");
  if (status) status.textContent = shown === cards.length ? `${cards.length} networks`
                                                          : `${shown} of ${cards.length} networks`;
  const none = element.querySelector(".lora-nomatch");
  if (none) none.hidden = shown > 0;
}

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const box = (suffix) => document.querySelector(`#${tabname}_${suffix} textarea`);
const joined = (text, addition) => !text ? addition : /\s$/.test(text) ? text + addition : text + " " + addition;

function put(area, text) {
  area.value = text;
  area.dispatchEvent(new Event("input", {bubbles: true}));
}

// Every match of `pattern` taken out; whitespace left at the very start goes too.
function removed(text, pattern) {
  let found = false, atStart = false;
  const rest = text.replace(pattern, (match, offset) => {
    found = true;
    if (offset === 0) atStart = true;
    return "";
  });
  return [atStart ? rest.replace(/^\s+/, "") : rest, found];
}

function toggle(card) {
  const data = card.dataset;
  const prompt = box("prompt"), negative = box("neg_prompt");
  if (!prompt) return;
  const names = [data.tag, data.name].filter(Boolean).map(escape).join("|");
  const activation = data.activation ? `(?:[ \\t]*${escape(data.activation)})?` : "";
  const tag = new RegExp(`\\s*<(?:lora|lyco):(?:${names})(?::[^>]*)?>${activation}`, "g");
  const [rest, found] = removed(prompt.value, tag);
  if (found) {
    put(prompt, rest);
    if (negative && data.negative) {
      const [negativeRest, hit] = removed(negative.value, new RegExp(`\\s*${escape(data.negative)}`, "g"));
      if (hit) put(negative, negativeRest);
    }
  } else {
    put(prompt, joined(prompt.value, data.prompt));
    if (negative && data.negative && !negative.value.includes(data.negative)) {
      put(negative, joined(negative.value, data.negative));
    }
  }
}

element.addEventListener("click", (event) => {
  const dir = event.target.closest(".lora-dir");
  if (dir) {
    view.folder = dir.dataset.folder;
    apply();
    return;
  }
  const card = event.target.closest(".lora-card");
  if (!card) return;
  if (event.target.closest(".lora-edit")) trigger("click", {name: card.dataset.name});
  else toggle(card);
});

// The search box filters as the user types (or pastes): straight from its textarea, no server round trip.
document.addEventListener("input", (event) => {
  if (event.target.closest && event.target.closest(`#${tabname}_lora_extra_search`)) {
    view.search = event.target.value || "";
    apply();
  }
});

// The cards, sorted and filtered as the controls say.
async function load() {
  const query = new URLSearchParams({page: "lora", tabname: tabname});
  const response = await fetch(`./sd_extra_networks/cards?${query}`);
  element.innerHTML = response.ok ? await response.text()
                                  : `<p class="lora-empty">The networks could not be listed (${response.status}).</p>`;
  sortedAs = "";
  apply();
}

window.sdLora = window.sdLora || {};
window.sdLora[tabname] = {
  load: load,
  view(change) { Object.assign(view, change); apply(); },
  async reloadCard(name) {
    const query = new URLSearchParams({page: "lora", tabname: tabname, name: name});
    const response = await fetch(`./sd_extra_networks/get-single-card?${query}`);
    if (!response.ok) return;
    const old = Array.from(element.querySelectorAll(".lora-card")).find((card) => card.dataset.name === name);
    if (!old) return;
    const template = document.createElement("template");
    template.innerHTML = (await response.json()).html.trim();
    const fresh = template.content.firstElementChild;
    fresh.hidden = old.hidden;
    old.replaceWith(fresh);
  },
};
load();
"""


@dataclass
class LoraPage:
    """The Lora tab of one generation tab, and its card editor."""

    tabname: str
    search: gr.Textbox
    sort: gr.Dropdown
    order: gr.Dropdown
    refresh: gr.Button
    cards: gr.HTML
    editor: gr.Column
    editing: gr.Textbox  # the name of the network in the editor (hidden; the script reads it)
    heading: gr.HTML
    training: gr.HTML
    description: gr.Textbox
    sd_version: gr.Dropdown
    preferred_weight: gr.Slider
    activation_text: gr.Textbox
    negative_text: gr.Textbox
    notes: gr.Textbox
    save: gr.Button
    replace_preview: gr.Button
    close: gr.Button
    message: gr.HTML

    @property
    def fields(self) -> list[Any]:
        """The user-metadata fields, in cards.USER_METADATA_KEYS order."""
        return [self.description, self.sd_version, self.activation_text, self.preferred_weight, self.negative_text,
                self.notes]


def build(ctx: AppContext, tabname: str) -> LoraPage:
    """The page's layout and its own events; call inside `gr.Tab("Lora")`."""
    p = f"{tabname}_lora"
    with gr.Row(elem_classes="lora-controls", equal_height=True):
        search = gr.Textbox(show_label=False, placeholder="Search by name, path or hash", scale=4, min_width=160,
                            elem_id=f"{p}_extra_search", container=False)
        sort = gr.Dropdown(list(SORTS), value=SORTS[0], show_label=False, scale=1, min_width=100,
                           elem_id=f"{p}_extra_sort", container=False)
        order = gr.Dropdown(list(ORDERS), value=ORDERS[0], show_label=False, scale=1, min_width=120,
                            elem_id=f"{p}_extra_sortorder", container=False)
        refresh = gr.Button(common.REFRESH_ICON, elem_id=f"{p}_extra_refresh", elem_classes="tool", size="sm",
                            scale=0, min_width=40)
    with gr.Column(visible=False, elem_id=f"{p}_editor", elem_classes="lora-editor") as editor:
        with gr.Row(equal_height=False, elem_classes="lora-editor-top"):
            heading = gr.HTML("", elem_id=f"{p}_editor_heading", js_on_load=None, apply_default_css=False)
            close = gr.Button(common.CLEAR_ICON, elem_id=f"{p}_editor_close", elem_classes="tool", size="sm",
                              scale=0, min_width=40)
        training = gr.HTML("", elem_id=f"{p}_training", js_on_load=None, apply_default_css=False)
        description = gr.Textbox(label="Description", lines=2, elem_id=f"{p}_description")
        with gr.Row():
            sd_version = gr.Dropdown(list(cards.SD_VERSIONS), value=cards.SD_VERSIONS[0],
                                     label="Stable Diffusion version", elem_id=f"{p}_sd_version")
            weight = gr.Slider(0, 2, value=0, step=0.05, label="Preferred weight", elem_id=f"{p}_preferred_weight")
        activation = gr.Textbox(label="Activation text", lines=1, elem_id=f"{p}_activation_text")
        negative = gr.Textbox(label="Negative prompt", lines=1, elem_id=f"{p}_negative_text")
        notes = gr.Textbox(label="Notes", lines=2, elem_id=f"{p}_notes")
        with gr.Row(elem_classes="lora-editor-buttons"):
            save = gr.Button("Save", variant="primary", elem_id=f"{p}_save", size="sm")
            replace = gr.Button("Replace preview", elem_id=f"{p}_replace_preview", size="sm")
        message = gr.HTML("", elem_id=f"{p}_message", elem_classes="html-log", js_on_load=None)
    editing = gr.Textbox(visible=False, elem_id=f"{p}_editing")
    script = SCRIPT.replace("__SORT__", SORTS[0].lower()).replace("__ORDER__", ORDERS[0].lower())
    html_cards = gr.HTML("", elem_id=f"{p}_cards_html", js_on_load=script, apply_default_css=False)
    page = LoraPage(tabname, search, sort, order, refresh, html_cards, editor, editing, heading, training,
                    description, sd_version, weight, activation, negative, notes, save, replace, close, message)
    _wire_page(ctx, page)
    return page


def wire(ctx: AppContext, page: LoraPage, results: common.ResultsPanel) -> None:
    """Wire "Replace preview": the picture selected in the tab's results gallery becomes the card's preview."""
    def replace_preview(name: str, gallery: list | None, index: int) -> tuple[str, str]:
        image = common.gallery_image(gallery, index)
        if image is None:
            raise gr.Error("No picture to use: generate one and select it in the gallery first")
        with common.shown_as_gr_error():
            info = cards.find_network(ctx.networks.registry, name)
            path = ctx.networks.registry.replace_preview(info, image, str(ctx.options["samples_format"]))
        return _heading(ctx, info), f"<div class='saved'>Preview saved: <code>{html.escape(path.name)}</code></div>"

    page.replace_preview.click(replace_preview, [page.editing, results.gallery, results.selected],
                               [page.heading, page.message], show_progress="hidden").success(
        None, page.editing, None, js=_reload_card_js(page.tabname))


def install_login_check(app: FastAPI) -> None:
    """Let browsers logged in to the UI (--gradio-auth) use /sd_extra_networks with their session cookie.

    Call after mounting the UI on `app`. The cookie names are Gradio's own login cookies.
    """
    access = getattr(app.state, "ui_access", None)
    ui = next((route.app for route in reversed(app.routes)
               if isinstance(route, Mount) and isinstance(route.app, GradioApp)), None)
    if access is None or ui is None:
        return

    def session_user(request: Request) -> str | None:
        token = (request.cookies.get(f"access-token-{ui.cookie_id}")
                 or request.cookies.get(f"access-token-unsecure-{ui.cookie_id}"))
        return ui.tokens.get(token) if token else None

    access.session_user = session_user


def _reload_card_js(tabname: str) -> str:
    return f"(name) => {{ window.sdLora?.[{json.dumps(tabname)}]?.reloadCard(name); }}"


def _view_js(tabname: str, key: str) -> str:
    return f"(value) => {{ window.sdLora?.[{json.dumps(tabname)}]?.view({{{key}: (value || '').toLowerCase()}}); }}"


def _wire_page(ctx: AppContext, page: LoraPage) -> None:
    registry = ctx.networks.registry

    page.refresh.click(registry.refresh, None, None, show_progress="hidden").success(
        None, None, None, js=f"() => {{ window.sdLora?.[{json.dumps(page.tabname)}]?.load(); }}")
    for control, key in ((page.sort, "sort"), (page.order, "order")):
        control.input(None, control, None, js=_view_js(page.tabname, key))

    def open_editor(evt: gr.EventData) -> list[Any]:
        with common.shown_as_gr_error():
            info = cards.find_network(registry, str(getattr(evt, "name", "")))
        fields = cards.user_metadata_fields(info)
        return [gr.update(visible=True), info.name, _heading(ctx, info), _training_html(info),
                *(fields[key] for key in cards.USER_METADATA_KEYS), ""]

    page.cards.click(open_editor, None, [page.editor, page.editing, page.heading, page.training, *page.fields,
                                         page.message], show_progress="hidden").success(
        None, None, None, js=f"() => document.getElementById('{page.tabname}_lora_editor')"
                             "?.scrollIntoView({block: 'nearest'})")

    def save(name: str, description: str, sd_version: str, activation: str, weight: float, negative: str,
             notes: str) -> str:
        with common.shown_as_gr_error():
            info = cards.find_network(registry, name)
            cards.update_user_metadata(registry, info, description=description, sd_version=sd_version,
                                       activation_text=activation, preferred_weight=weight, negative_text=negative,
                                       notes=notes)
        return f"<div class='saved'>Saved <code>{html.escape(info.user_metadata_path.name)}</code></div>"

    page.save.click(save, [page.editing, *page.fields], page.message, show_progress="hidden").success(
        None, page.editing, None, js=_reload_card_js(page.tabname))
    page.close.click(lambda: gr.update(visible=False), None, page.editor, show_progress="hidden", queue=False)


def _heading(ctx: AppContext, info: NetworkInfo) -> str:
    card = cards.make_card(ctx.networks.registry, info, **cards.card_settings(ctx.options))
    url = card.thumb_url
    picture = (f"<img src='{html.escape(url, quote=True)}' alt=''>" if url
               else f"<div class='lora-noimage'>{html.escape(card.name[:1].upper())}</div>")
    facts = [card.relative_path, card.family_title, f"hash {card.shorthash}" if card.shorthash else "not hashed yet"]
    return (f"<div class='lora-heading'><div class='lora-heading-thumb'>{picture}</div><div>"
            f"<h3>{html.escape(card.name)}</h3>"
            f"<div class='lora-heading-facts'>{' &middot; '.join(html.escape(f) for f in facts)}</div>"
            f"<div class='lora-heading-prompt'><code>{html.escape(card.prompt)}</code></div></div></div>")


def _training_html(info: NetworkInfo) -> str:
    """The training-metadata summary, the top tags, and every metadata key in a fold."""
    if not info.metadata:
        return NO_METADATA
    summary = cards.training_summary(info.metadata)
    rows = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
                   for label, value in summary.rows)
    table = f"<table class='lora-training-table'>{rows}</table>" if rows else ""
    tags = ""
    if summary.top_tags:
        chips = "".join(f"<span class='lora-tag'>{html.escape(tag)} <b>{count}</b></span>"
                        for tag, count in summary.top_tags)
        tags = (f"<div class='lora-tags-title'>Most frequent tags ({len(summary.top_tags)} of "
                f"{summary.tag_count})</div><div class='lora-tags'>{chips}</div>")
    shown = {key: value for key, value in info.metadata.items() if key != "ssmd_cover_images"}
    raw = html.escape(json.dumps(shown, indent=2, ensure_ascii=False))
    return (f"<div class='lora-training'>{table}{tags}<details class='lora-raw'><summary>All metadata "
            f"({len(shown)} keys)</summary><pre>{raw}</pre></details></div>")
