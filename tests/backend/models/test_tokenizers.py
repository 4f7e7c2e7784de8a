"""The offline CLIP tokenizer: ids identical to OpenAI CLIP / OpenCLIP, padding per family."""
from __future__ import annotations

import pytest

from backend.errors import ModelLoadError
from backend.models.families import family_by_name
from backend.models.tokenizers import (
    MERGE_COUNT,
    VOCAB_SIZE,
    build_clip_tokenizer,
    byte_unicode_alphabet,
    read_clip_bpe,
)

ASTRONAUT = [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


def test_vocabulary_layout() -> None:
    vocab, merges = read_clip_bpe()
    alphabet = byte_unicode_alphabet()
    assert len(set(alphabet)) == 256 and not any(c.isspace() for c in alphabet)
    assert len(vocab) == VOCAB_SIZE and len(merges) == MERGE_COUNT
    assert vocab["!"] == 0 and vocab["a</w>"] == 320
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE))


def test_astronaut_prompt_ids(tokenizer) -> None:
    assert tokenizer("a photograph of an astronaut riding a horse").input_ids == ASTRONAUT
    assert tokenizer.model_max_length == 77


@pytest.mark.parametrize("text", [
    "a photograph of an astronaut riding a horse",
    "Hello, WORLD!!  it's 1girl, (masterpiece:1.2), [cat|dog] émoji 😀",
    "BREAK\ttabs\nnewlines <lora:foo:0.5> 12345 a_b-c",
])
def test_ids_match_open_clip_reference_tokenizer(tokenizer, text: str) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    assert tokenizer(text, add_special_tokens=False).input_ids == reference.encode(text)


@pytest.mark.parametrize(("family", "index", "pad_id"), [
    ("sd1", 0, 49407), ("sd2", 0, 0), ("sdxl", 0, 49407), ("sdxl", 1, 0),
])
def test_padding_per_family(family: str, index: int, pad_id: int) -> None:
    spec = family_by_name(family).text_encoders[index]
    tokenizer = build_clip_tokenizer(spec.pad_token)
    ids = tokenizer("a photo", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[:4] == [49406, 320, 1125, 49407]
    assert set(ids[4:]) == {pad_id}


def test_unknown_pad_token_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="pad token"):
        build_clip_tokenizer("not-a-token")
