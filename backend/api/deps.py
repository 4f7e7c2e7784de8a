"""Route dependencies: how a route reaches the application's services."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from backend.context import AppContext


def get_context(request: Request) -> AppContext:
    """The AppContext the app was built with (style rule 8: no globals)."""
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_context)]
