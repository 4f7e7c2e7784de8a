"""The A1111-compatible HTTP API (/sdapi/v1) and our async job API, on FastAPI.

`app.create_app(ctx)` builds the application; `routers/` holds one APIRouter per
area; `models.py` the request/response models with A1111's field names;
`errors.py` is the only place where exceptions become HTTP status codes.
"""
