"""The ControlNet extension's implementation (A1111's Mikubill/sd-webui-controlnet contract on diffusers).

`units` parses and validates ControlNet units (A1111-ControlNet's field names), `images` resizes
control maps, `preprocessors` holds the annotators, `models` finds and loads ControlNet weights,
`hook` adds the residuals inside every UNet call, `api` serves the /controlnet/* routes and `ui`
builds the Gradio accordion. `scripts/controlnet.py` wires them to the script system.
"""
