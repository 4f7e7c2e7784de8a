"""Extensions: folders with `scripts/*.py`, optional `preload.py`, `style.css`, `javascript/` (a1111.md 8.2).

Built-in extensions ship in `extensions/builtin/`; user extensions are the other folders of
`<data dir>/extensions/`. Built-in ones load first, then the rest by name. Nothing is ever
installed: an extension's `install.py` is not run (we have no network at run time), and its
absence of dependencies shows as a load error naming the extension.
"""
from __future__ import annotations

import argparse
import configparser
import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from backend.callbacks import CallbackRegistry
from backend.scripts.base import Script

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUILTIN_DIR = PROJECT_ROOT / "extensions" / "builtin"
BUILTIN_FOLDER = "builtin"
DISABLE_CHOICES = ("none", "extra", "all")


@dataclass
class Extension:
    """One extension folder and what loading it gave."""

    name: str
    path: Path
    is_builtin: bool
    enabled: bool = True
    version: str = ""
    script_classes: list[type[Script]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def script_files(self) -> list[Path]:
        folder = self.path / "scripts"
        return sorted(folder.glob("*.py")) if folder.is_dir() else []

    @property
    def css_file(self) -> Path | None:
        css = self.path / "style.css"
        return css if css.is_file() else None

    @property
    def javascript_files(self) -> list[Path]:
        folder = self.path / "javascript"
        return sorted([*folder.glob("*.js"), *folder.glob("*.mjs")]) if folder.is_dir() else []

    def metadata(self) -> configparser.ConfigParser:
        config = configparser.ConfigParser()
        ini = self.path / "metadata.ini"
        if ini.is_file():
            try:
                config.read(ini, encoding="utf-8")
            except configparser.Error as e:
                self.errors.append(f"metadata.ini: {e}")
        return config


def discover(user_dir: Path | None, *, disabled: Iterable[str] = (), disable_all: str = "none",
             builtin_dir: Path = BUILTIN_DIR) -> list[Extension]:
    """Every extension folder, built-in first, then user ones by name; `enabled` from the settings.

    disable_all: "none", "extra" (user extensions off) or "all" (every extension off), as A1111's
    option and its --disable-extra-extensions / --disable-all-extensions flags.
    """
    if disable_all not in DISABLE_CHOICES:
        raise ValueError(f"disable_all must be one of {DISABLE_CHOICES}, got {disable_all!r}")
    off = {name.lower() for name in disabled}
    found: list[Extension] = []
    for root, is_builtin in ((builtin_dir, True), (user_dir, False)):
        if root is None or not root.is_dir():
            continue
        for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
            if not is_builtin and root.resolve() == builtin_dir.parent.resolve() and path.name == BUILTIN_FOLDER:
                continue  # the user folder is the built-in folder's parent in a checkout
            name = path.name.lower()
            enabled = name not in off and not (disable_all == "all" or (disable_all == "extra" and not is_builtin))
            version = Extension(name, path, is_builtin).metadata().get("Extension", "Version", fallback="")
            found.append(Extension(name, path, is_builtin, enabled, version))
    return found


@dataclass
class ScriptClass:
    """A Script subclass found in an extension file."""

    cls: type[Script]
    file: Path
    extension: Extension

    def create(self, callbacks: CallbackRegistry) -> Script:
        """An instance; its __init__ may register callbacks, tagged with the extension."""
        with callbacks.loading(self.extension.name):
            script = self.cls()
        script.filename, script.extension = str(self.file), self.extension.name
        return script


def load_scripts(extensions: Iterable[Extension], callbacks: CallbackRegistry) -> list[ScriptClass]:
    """Import each enabled extension's script files and collect every Script subclass in them.

    A file that fails to import (syntax error, missing dependency) is logged with its extension's
    name and skipped; the other extensions and files still load. Callbacks the files register go
    into `callbacks`, tagged with the extension's name.
    """
    found: list[ScriptClass] = []
    for ext in extensions:
        if not ext.enabled:
            continue
        with _on_sys_path(ext.path), callbacks.loading(ext.name):
            for file in ext.script_files:
                try:
                    module = _import_file(ext, file)
                    for cls in _script_classes(module):
                        ext.script_classes.append(cls)
                        found.append(ScriptClass(cls, file, ext))
                except Exception as e:  # one broken extension must not stop the server
                    log.exception("error loading script %s of extension %s", file.name, ext.name)
                    ext.errors.append(f"{file.name}: {type(e).__name__}: {e}")
    return found


def run_preloads(extensions: Iterable[Extension], parser: argparse.ArgumentParser) -> None:
    """Call each enabled extension's `preload(parser)` so it can add command-line flags."""
    for ext in extensions:
        preload = ext.path / "preload.py"
        if not ext.enabled or not preload.is_file():
            continue
        try:
            with _on_sys_path(ext.path):
                module = _import_file(ext, preload)
            if hasattr(module, "preload"):
                module.preload(parser)
        except Exception as e:
            log.exception("error in preload.py of extension %s", ext.name)
            ext.errors.append(f"preload.py: {type(e).__name__}: {e}")


def _import_file(ext: Extension, file: Path) -> ModuleType:
    module_name = f"webui_extensions.{ext.name.replace('-', '_').replace('.', '_')}.{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _script_classes(module: ModuleType) -> list[type[Script]]:
    """Script subclasses defined in this module (not ones it imported), in definition order."""
    classes = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and issubclass(obj, Script) and obj is not Script
               and obj.__module__ == module.__name__ and not inspect.isabstract(obj)]
    return sorted(classes, key=lambda c: inspect.getsourcelines(c)[1])


@contextmanager
def _on_sys_path(path: Path) -> Iterator[None]:
    """The extension's folder is importable while its files load (A1111), so it can split its code."""
    entry = str(path)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)
