"""PNG info (read the infotext back from an image), and the extras routes we do not have yet."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from backend.api.deps import Ctx
from backend.api.errors import NotAvailable
from backend.api.models import PNGInfoRequest, PNGInfoResponse, decode_image
from backend.postprocess.images import read_info_from_image
from backend.postprocess.infotext import parse_infotext

router = APIRouter(tags=["extras"])

_NOT_YET = {404: {"description": "Not available yet in this version"}}


@router.post("/png-info", response_model=PNGInfoResponse)
def png_info(req: PNGInfoRequest, ctx: Ctx) -> PNGInfoResponse:
    """The infotext of an image (PNG `parameters` chunk, or EXIF UserComment), raw and parsed."""
    if not req.image.strip():
        return PNGInfoResponse(info="")
    image = decode_image(req.image, "image")
    geninfo, items = read_info_from_image(image)
    geninfo = geninfo or ""
    params = parse_infotext(geninfo, skip_fields=ctx.options["infotext_skip_pasting"] or ())
    return PNGInfoResponse(info=geninfo, items=_json_items(items), parameters=params)


def _json_items(items: dict[str, Any]) -> dict[str, Any]:
    # Binary items (ICC profiles, raw EXIF) have no JSON form; A1111 clients only read text ones.
    out: dict[str, Any] = {}
    for key, value in items.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[str(key)] = value
        elif isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
            out[str(key)] = list(value)
    return out


@router.post("/extra-single-image", responses=_NOT_YET)
def extra_single_image() -> None:
    """A1111's Extras (upscaling, face restoration) for one image: not available yet."""
    raise NotAvailable("POST /sdapi/v1/extra-single-image", "Extras (upscaling/face restoration)")


@router.post("/extra-batch-images", responses=_NOT_YET)
def extra_batch_images() -> None:
    """A1111's Extras for a list of images: not available yet."""
    raise NotAvailable("POST /sdapi/v1/extra-batch-images", "Extras (upscaling/face restoration)")


@router.post("/interrogate", responses=_NOT_YET)
def interrogate() -> None:
    """A1111's CLIP/DeepBooru captioning: not available yet."""
    raise NotAvailable("POST /sdapi/v1/interrogate", "interrogate (CLIP/DeepBooru captions)")
