"""Typed errors raised by the backend.

The API maps each class to one HTTP status in one place; the UI and CLI show the
same message. Nothing here imports anything else from the project.
"""
from __future__ import annotations


class WebUIError(Exception):
    """Base class for every error the backend raises on purpose."""


class InvalidRequest(WebUIError):
    """A request field has a bad value; `field` names it (A1111/HTTP field name)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ModelNotFound(WebUIError):
    """No model, sampler, upscaler or other named item matches the given name."""

    def __init__(self, kind: str, name: str, known: list[str] | None = None) -> None:
        hint = f"; known: {', '.join(known[:20])}" if known else ""
        super().__init__(f"{kind} not found: {name!r}{hint}")
        self.kind = kind
        self.name = name


class AccessDenied(WebUIError):
    """The request names something it may not reach (a file outside the served folders, say)."""


class ModelLoadError(WebUIError):
    """A model file exists but cannot be loaded (unknown family, unsafe pickle, corrupt file)."""


class Interrupted(WebUIError):
    """The user interrupted the current job."""


class Skipped(WebUIError):
    """The user skipped the current image or batch."""


class ExtensionError(WebUIError):
    """An extension's hook failed and the job could not continue."""

    def __init__(self, extension: str, reason: str) -> None:
        super().__init__(f"extension {extension!r} failed: {reason}")
        self.extension = extension
