"""Generation: processing objects in, `Processed` out (A1111's modules/processing.py).

`objects` holds the request/result dataclasses, `core` the shared machinery
(model and conditioning resolution, one sampling pass, decode, infotext, saving),
`txt2img` and `img2img` the two recipes, `pipeline` the process_images loop.
"""
from backend.processing.core import ProcessingContext, ScriptHooks, UnetCall, decode_latents, tensor_to_image
from backend.processing.objects import (
    Processed,
    StableDiffusionProcessing,
    StableDiffusionProcessingImg2Img,
    StableDiffusionProcessingTxt2Img,
)
from backend.processing.pipeline import process_images

__all__ = [
    "Processed",
    "ProcessingContext",
    "ScriptHooks",
    "UnetCall",
    "StableDiffusionProcessing",
    "StableDiffusionProcessingImg2Img",
    "StableDiffusionProcessingTxt2Img",
    "decode_latents",
    "process_images",
    "tensor_to_image",
]
