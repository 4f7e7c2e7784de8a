"""Prompt styles: A1111's styles.csv (modules/styles.py), read, edited, applied and recognised.

A style is a name with a prompt and a negative prompt. Applying it substitutes the prompt for
`{prompt}` in the style's text, or, without the placeholder, appends the style's text after
", " (empty parts are skipped). Reading an infotext can find the styles that were applied and
strip them again (extract_styles_from_prompt), which A1111 does for the "Styles" dropdown.

Files are A1111's: columns name, prompt, negative_prompt (the legacy "text" column is read as
the prompt), UTF-8 with or without BOM, rows whose name starts with "#" ignored. Several files
and glob patterns can be given (--styles-file, repeatable); new styles go to the first file.
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from backend.errors import InvalidRequest

log = logging.getLogger(__name__)

DEFAULT_FILENAME = "styles.csv"
PROMPT_PLACEHOLDER = "{prompt}"
CSV_FIELDS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class PromptStyle:
    """One style; `path` is the file it was read from and is written back to."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""
    path: Path | None = None


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """One style applied to one prompt, by A1111's rule."""
    if PROMPT_PLACEHOLDER in style_prompt:
        return style_prompt.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, style_prompts: Iterable[str]) -> str:
    """Styles applied in order, each to the result of the previous one."""
    for style_prompt in style_prompts:
        prompt = merge_prompts(style_prompt, prompt)
    return prompt


def extract_style_text_from_prompt(style_text: str, prompt: str) -> tuple[bool, str]:
    """(True, prompt without the style) if `style_text` was applied to the prompt, else (False, prompt).

    "masterpiece" matches "a cat, masterpiece" (giving "a cat"); "best, {prompt}" matches
    "best, a cat". An empty style text matches any prompt, which it leaves unchanged.
    """
    stripped_prompt = prompt.strip()
    stripped_style = style_text.strip()
    if PROMPT_PLACEHOLDER in stripped_style:
        left, _, right = stripped_style.partition(PROMPT_PLACEHOLDER)
        if stripped_prompt.startswith(left) and stripped_prompt.endswith(right):
            return True, stripped_prompt[len(left):len(stripped_prompt) - len(right)]
    elif stripped_prompt.endswith(stripped_style):
        rest = stripped_prompt[:len(stripped_prompt) - len(stripped_style)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


def extract_original_prompts(style: PromptStyle, prompt: str, negative_prompt: str) -> tuple[bool, str, str]:
    """Whether `style` was applied to both prompts, and the prompts without it."""
    if not style.prompt and not style.negative_prompt:
        return False, prompt, negative_prompt
    matched, positive = extract_style_text_from_prompt(style.prompt, prompt)
    if not matched:
        return False, prompt, negative_prompt
    matched, negative = extract_style_text_from_prompt(style.negative_prompt, negative_prompt)
    if not matched:
        return False, prompt, negative_prompt
    return True, positive, negative


def style_files(flags: Sequence[str] | None, data_dir: Path) -> list[Path]:
    """The --styles-file values (paths or glob patterns), else <data dir>/styles.csv (A1111's default)."""
    if not flags:
        return [data_dir / DEFAULT_FILENAME]
    return [Path(os.path.abspath(Path(flag).expanduser())) for flag in flags]


def _is_pattern(path: Path) -> bool:
    return "*" in path.name or "?" in path.name


class StyleDatabase:
    """Every style of the configured files, by name; edits are saved back to the file each came from.

    Safe to share between threads: reads see a consistent snapshot, edits are serialised.
    """

    def __init__(self, paths: Sequence[Path] = ()) -> None:
        self.paths = list(paths)
        self.default_path: Path | None = None
        if self.paths:
            first = self.paths[0]
            if _is_pattern(first):
                # A pattern first: new styles go to its first match, else to styles.csv beside it (A1111).
                self.default_path = next(iter(sorted(first.parent.glob(first.name))), first.parent / DEFAULT_FILENAME)
                self.paths.insert(0, self.default_path)
            else:
                self.default_path = first
        self._styles: dict[str, PromptStyle] = {}
        self._lock = threading.Lock()
        self.reload()

    # -- reading --------------------------------------------------------------------------

    def reload(self) -> None:
        """Read every file again (edits made by hand show after this)."""
        styles: dict[str, PromptStyle] = {}
        for path in self.files():
            if path.is_file():
                styles.update((s.name, s) for s in read_styles_csv(path))
        with self._lock:
            self._styles = styles

    def files(self) -> list[Path]:
        """The files the configured paths and patterns name now, without duplicates."""
        found: list[Path] = []
        for path in self.paths:
            matches = sorted(path.parent.glob(path.name)) if _is_pattern(path) else [path]
            found.extend(m for m in matches if m not in found)
        return found

    @property
    def styles(self) -> Mapping[str, PromptStyle]:
        with self._lock:
            return MappingProxyType(dict(self._styles))

    def names(self) -> list[str]:
        with self._lock:
            return list(self._styles)

    def get(self, name: str) -> PromptStyle | None:
        with self._lock:
            return self._styles.get(name)

    # -- applying -------------------------------------------------------------------------

    def apply_styles_to_prompt(self, prompt: str, names: Iterable[str]) -> str:
        """The prompt with the named styles applied; unknown names are ignored, as in A1111."""
        return apply_styles_to_prompt(prompt, [s.prompt for s in self._known(names)])

    def apply_negative_styles_to_prompt(self, negative_prompt: str, names: Iterable[str]) -> str:
        return apply_styles_to_prompt(negative_prompt, [s.negative_prompt for s in self._known(names)])

    def _known(self, names: Iterable[str]) -> list[PromptStyle]:
        with self._lock:
            styles = self._styles
            known = [styles[name] for name in names if name in styles]
        return known

    def extract_styles_from_prompt(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """(styles found, prompt and negative prompt without them), A1111's greedy search.

        Styles are stripped from the end inwards, so the list comes back in the order they were applied.
        """
        candidates = list(self.styles.values())
        found: list[str] = []
        while True:
            for style in candidates:
                matched, new_prompt, new_negative = extract_original_prompts(style, prompt, negative_prompt)
                if matched:
                    prompt, negative_prompt = new_prompt, new_negative
                    candidates.remove(style)
                    found.append(style.name)
                    break
            else:
                break
        return list(reversed(found)), prompt, negative_prompt

    # -- editing --------------------------------------------------------------------------

    def save_style(self, name: str, prompt: str, negative_prompt: str) -> PromptStyle:
        """Add or change a style and save its file (a new style goes to the first styles file)."""
        name = name.strip()
        if not name:
            raise InvalidRequest("name", "a style needs a name")
        with self._lock:
            existing = self._styles.get(name)
            style = PromptStyle(name, prompt or "", negative_prompt or "",
                                existing.path if existing is not None else self.default_path)
            self._styles[name] = style
            self._save_locked()
        return style

    def delete_style(self, name: str) -> None:
        """Remove a style and save its file; an unknown name changes nothing."""
        with self._lock:
            if self._styles.pop(name, None) is not None:
                self._save_locked()

    def _save_locked(self) -> None:
        if self.default_path is None:
            raise InvalidRequest("styles_file", "no styles file is configured")
        paths = {style.path for style in self._styles.values() if style.path is not None} | {self.default_path}
        for path in paths:
            write_styles_csv(path, [s for s in self._styles.values() if s.path == path])


def read_styles_csv(path: Path) -> list[PromptStyle]:
    """The styles of one A1111 styles.csv; a file that cannot be read is logged and gives none."""
    styles: list[PromptStyle] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            for row in csv.DictReader(file, skipinitialspace=True):
                name = row.get("name")
                if not name or name.startswith("#"):
                    continue
                prompt = row.get("prompt", row.get("text"))  # "text": the column's name before A1111 1.0
                styles.append(PromptStyle(name, prompt or "", row.get("negative_prompt") or "", path))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        log.warning("could not read styles from %s: %s", path, e)
    return styles


def write_styles_csv(path: Path, styles: Iterable[PromptStyle]) -> None:
    """Write `styles` to `path` as A1111 does (UTF-8 with BOM), keeping the old file as <path>.bak."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.copy(path, f"{path}.bak")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".styles-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8-sig", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for style in styles:
            writer.writerow({"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt})
    os.replace(tmp, path)
