"""One APIRouter per area; `app.create_app` includes them all under /sdapi/v1."""
