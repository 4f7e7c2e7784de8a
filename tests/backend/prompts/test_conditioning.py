"""Conditioning on the built-in model's text encoder, checked against direct CLIP computations."""
from __future__ import annotations

import pytest
import torch

from backend.errors import InvalidRequest
from backend.prompts.conditioning import (
    EncodeSettings,
    EncoderSpec,
    ScheduleSettings,
    TextConditioner,
    cond_batch_at,
    learned_conditioning,
    multicond_batch_at,
    multicond_learned_conditioning,
)


@pytest.fixture(scope="module")
def conditioner(builtin_model) -> TextConditioner:
    return TextConditioner([EncoderSpec(builtin_model.text_encoder, builtin_model.tokenizer)], torch.device("cpu"))


def _ids(model, text: str) -> list[int]:
    tok = model.tokenizer
    ids = tok([text], add_special_tokens=False)["input_ids"][0]
    return [tok.bos_token_id] + ids + [tok.eos_token_id] * (76 - len(ids))


def _clip(model, ids: list[int], layer: int = -1) -> torch.Tensor:
    out = model.text_encoder(input_ids=torch.tensor([ids]), output_hidden_states=True)
    if layer == -1:
        return out.last_hidden_state[0]
    inner = getattr(model.text_encoder, "text_model", model.text_encoder)
    return inner.final_layer_norm(out.hidden_states[layer])[0]


@torch.no_grad()
def test_plain_prompt_is_one_77_token_chunk(builtin_model, conditioner) -> None:
    cond = conditioner.encode(["a red house"], EncodeSettings())
    assert cond.crossattn.shape == (1, 77, builtin_model.text_encoder.config.hidden_size)
    torch.testing.assert_close(cond.crossattn[0], _clip(builtin_model, _ids(builtin_model, "a red house")))


@torch.no_grad()
def test_long_prompt_and_break_concatenate_chunks(conditioner) -> None:
    long = ", ".join(["tree"] * 60)  # 119 tokens -> two chunks
    assert conditioner.encode([long], EncodeSettings()).crossattn.shape[1] == 154
    assert conditioner.encode(["a BREAK b"], EncodeSettings()).crossattn.shape[1] == 154
    assert conditioner.encode([""], EncodeSettings()).crossattn.shape[1] == 77


@torch.no_grad()
def test_original_emphasis_multiplies_then_restores_the_mean(builtin_model, conditioner) -> None:
    z = _clip(builtin_model, _ids(builtin_model, "a red house"))
    mult = torch.ones(77)
    mult[2] = 1.5  # "red"
    weighted = z * mult[:, None]
    expected = weighted * (z.mean() / weighted.mean())
    got = conditioner.encode(["a (red:1.5) house"], EncodeSettings()).crossattn[0]
    torch.testing.assert_close(got, expected)
    no_norm = conditioner.encode(["a (red:1.5) house"], EncodeSettings(emphasis="No norm")).crossattn[0]
    torch.testing.assert_close(no_norm, weighted)
    ignore = conditioner.encode(["a (red:1.5) house"], EncodeSettings(emphasis="Ignore")).crossattn[0]
    torch.testing.assert_close(ignore, z)


@torch.no_grad()
def test_clip_skip_uses_an_earlier_layer_with_the_final_norm(builtin_model, conditioner) -> None:
    got = conditioner.encode(["a red house"], EncodeSettings(clip_skip=2)).crossattn[0]
    torch.testing.assert_close(got, _clip(builtin_model, _ids(builtin_model, "a red house"), layer=-2))


def test_bad_settings_name_the_option() -> None:
    with pytest.raises(InvalidRequest) as e:
        EncodeSettings(emphasis="Loud")
    assert e.value.field == "emphasis"
    with pytest.raises(InvalidRequest):
        EncodeSettings(clip_skip=0)


@torch.no_grad()
def test_prompt_editing_schedule_switches_after_the_step(conditioner) -> None:
    enc = EncodeSettings()
    conds = learned_conditioning(conditioner, ["a [cat:dog:2]"], enc, ScheduleSettings(steps=4))
    cat = conditioner.encode(["a cat", "a dog"], enc).crossattn  # encoded together, as A1111 does
    assert [c.end_at_step for c in conds[0]] == [2, 4]
    for step, want in [(0, 0), (2, 0), (3, 1)]:
        torch.testing.assert_close(cond_batch_at(conds, step).crossattn[0], cat[want])


@torch.no_grad()
def test_and_gives_weighted_rows(conditioner) -> None:
    enc = EncodeSettings()
    c = multicond_learned_conditioning(conditioner, ["a cat AND a dog:0.5", "x"], enc, ScheduleSettings(steps=4))
    conds_list, batch = multicond_batch_at(c, 0)
    assert conds_list == [[(0, 1.0), (1, 0.5)], [(2, 1.0)]]
    assert batch.crossattn.shape[0] == 3


@torch.no_grad()
def test_rows_of_different_length_pad_with_the_last_vector(conditioner) -> None:
    enc = EncodeSettings()
    c = multicond_learned_conditioning(conditioner, ["a", "b BREAK c"], enc, ScheduleSettings(steps=4))
    _, batch = multicond_batch_at(c, 0)
    assert batch.crossattn.shape[1] == 154
    torch.testing.assert_close(batch.crossattn[0, 77:], batch.crossattn[0, 76:77].expand(77, -1))


@torch.no_grad()
def test_empty_negative_is_zero_when_asked(builtin_model) -> None:
    cond = TextConditioner([EncoderSpec(builtin_model.text_encoder, builtin_model.tokenizer)], torch.device("cpu"),
                           zero_empty_negative=True)
    assert cond.encode([""], EncodeSettings(), is_negative=True).crossattn.abs().sum() == 0
    assert cond.encode([""], EncodeSettings()).crossattn.abs().sum() > 0
