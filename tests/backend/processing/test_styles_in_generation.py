"""p.styles in generation: every prompt is styled (hires prompts too) and the infotext holds the styled prompt."""
from __future__ import annotations

from backend.processing import StableDiffusionProcessingTxt2Img


def test_styles_apply_to_every_prompt_and_the_infotext(app_ctx) -> None:
    app_ctx.styles.save_style("Photo", "photo of {prompt}, 35mm", "blurry")
    app_ctx.styles.save_style("HQ", "best quality", "lowres")
    p = StableDiffusionProcessingTxt2Img(prompt="a fox", negative_prompt="ugly", styles=["Photo", "Unknown", "HQ"],
                                         steps=2, width=64, height=64, batch_size=2, seed=3,
                                         enable_hr=True, hr_scale=1.0, hr_second_pass_steps=1, hr_prompt="a wolf",
                                         do_not_save_samples=True, do_not_save_grid=True)
    processed = app_ctx.generate(p)
    assert processed.all_prompts == ["photo of a fox, 35mm, best quality"] * 2
    assert processed.all_negative_prompts == ["ugly, blurry, lowres"] * 2
    text = processed.infotexts[0]
    assert text.startswith("photo of a fox, 35mm, best quality\nNegative prompt: ugly, blurry, lowres\n")
    assert 'Hires prompt: "photo of a wolf, 35mm, best quality"' in text
    assert p.prompt == "a fox"  # the request itself is left as it was
    assert (app_ctx.settings.data_dir / "params.txt").read_text().startswith("photo of a fox")
