"""Tests for backend/prompts/chunking.py (A1111 sd_hijack_clip tokenize_line, docs a1111.md §6.5)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from backend.prompts.chunking import PromptChunk, build_chunks
from backend.prompts.parser import parse_prompt_attention

START, END, COMMA = 49406, 49407, 267


def fake_id(word: str) -> int:
    """Each number is its own id, ',' is the comma token (like CLIP's ',</w>'), any other word 999."""
    if word == ",":
        return COMMA
    return int(word) if word.isdigit() else 999


def fake_tokenize(texts: list[str]) -> list[list[int]]:
    return [[fake_id(word) for word in text.replace(",", " , ").split()] for text in texts]


def words(count: int, first: int = 1000) -> str:
    return " ".join(str(first + i) for i in range(count))


def ids(count: int, first: int = 1000) -> list[int]:
    return list(range(first, first + count))


def chunk_prompt(prompt: str, **kwargs) -> tuple[list[PromptChunk], int]:
    return build_chunks(
        parse_prompt_attention(prompt), fake_tokenize, id_start=START, id_end=END, comma_token=COMMA, **kwargs
    )


def body(chunk: PromptChunk) -> list[int]:
    """The chunk's tokens without start, end and padding."""
    assert chunk.tokens[0] == START and chunk.tokens[-1] == END
    inner = chunk.tokens[1:-1]
    while inner and inner[-1] == END:
        inner.pop()
    return inner


def test_empty_prompt_gives_one_padded_chunk():
    chunks, count = chunk_prompt("")
    assert count == 0
    assert len(chunks) == 1
    assert chunks[0].tokens == [START] + [END] * 76
    assert chunks[0].multipliers == [1.0] * 77


def test_short_prompt_is_framed_and_padded_with_end():
    chunks, count = chunk_prompt("1000 1001 1002")
    assert count == 3
    assert chunks[0].tokens == [START, 1000, 1001, 1002] + [END] * 73
    assert len(chunks[0].multipliers) == 77


def test_multipliers_follow_the_segment_weights():
    chunks, _ = chunk_prompt("1000 (1001) [1002] (1003:1.5)")
    assert chunks[0].multipliers[:6] == [1.0, 1.0, 1.1, 1 / 1.1, 1.5, 1.0]
    assert chunks[0].multipliers[6:] == [1.0] * 71


def test_exactly_75_tokens_fit_one_chunk():
    chunks, count = chunk_prompt(words(75))
    assert count == 75
    assert [body(c) for c in chunks] == [ids(75)]


def test_76th_token_opens_a_second_chunk():
    chunks, count = chunk_prompt(words(76))
    assert count == 76
    assert [body(c) for c in chunks] == [ids(75), [1075]]


def test_long_prompt_spans_three_chunks_in_order():
    chunks, count = chunk_prompt(words(160))
    # every chunk but the last counts as 75, the last one by its real tokens
    assert count == 160
    assert [len(c.tokens) for c in chunks] == [77, 77, 77]
    assert [body(c) for c in chunks] == [ids(75), ids(75, 1075), ids(10, 1150)]


def test_break_closes_the_chunk():
    chunks, count = chunk_prompt("1000 BREAK 1001")
    assert [body(c) for c in chunks] == [[1000], [1001]]
    assert count == 76


def test_break_at_the_start_gives_an_empty_first_chunk():
    chunks, count = chunk_prompt("BREAK 1000")
    assert [body(c) for c in chunks] == [[], [1000]]
    assert chunks[0].tokens == [START] + [END] * 76
    assert count == 76


def test_break_at_the_end_adds_no_empty_chunk():
    chunks, count = chunk_prompt("1000 BREAK")
    assert [body(c) for c in chunks] == [[1000]]
    # the closed chunk counts as a full 75, as in A1111
    assert count == 75


def test_break_inside_brackets_is_plain_text():
    # A1111 scales the marker's -1 to -1.1, so it no longer counts as a BREAK
    chunks, count = chunk_prompt("(1000 BREAK 1001)")
    assert [body(c) for c in chunks] == [[1000, 999, 1001]]
    assert count == 3


def test_tokenize_gets_every_segment_once_including_break():
    seen = []

    def recording(texts):
        seen.append(list(texts))
        return fake_tokenize(texts)

    build_chunks(parse_prompt_attention("1000 (1001) BREAK 1002"), recording, id_start=START, id_end=END, comma_token=COMMA)
    assert seen == [["1000 ", "1001", "", "BREAK", "1002"]]


def test_comma_backtrack_moves_words_after_the_comma():
    # 70 words, a comma at index 70, then 10 words: the chunk fills with 4 of them
    chunks, count = chunk_prompt(words(70) + " , " + words(10, 2000))
    assert [body(c) for c in chunks] == [ids(70) + [COMMA], ids(10, 2000)]
    assert count == 85


def test_comma_backtrack_carries_multipliers():
    chunks, _ = chunk_prompt(words(70) + " , (" + words(4, 2000) + ") 3000")
    assert body(chunks[1]) == ids(4, 2000) + [3000]
    assert chunks[1].multipliers[1:7] == [1.1, 1.1, 1.1, 1.1, 1.0, 1.0]
    assert chunks[0].multipliers[72:] == [1.0] * 5


@pytest.mark.parametrize(("comma_index", "moves"), [(55, True), (54, False)])
def test_comma_backtrack_limit_is_inclusive(comma_index, moves):
    chunks, _ = chunk_prompt(words(comma_index) + " , " + words(30, 2000))
    after_comma = 75 - comma_index - 1
    if moves:
        assert body(chunks[0]) == ids(comma_index) + [COMMA]
        assert body(chunks[1])[:after_comma] == ids(after_comma, 2000)
    else:
        assert body(chunks[0]) == ids(comma_index) + [COMMA] + ids(after_comma, 2000)


def test_comma_backtrack_can_be_disabled():
    chunks, _ = chunk_prompt(words(70) + " , " + words(10, 2000), comma_padding_backtrack=0)
    assert body(chunks[0]) == ids(70) + [COMMA] + ids(4, 2000)


def test_comma_backtrack_custom_limit():
    prompt = words(70) + " , " + words(10, 2000)
    assert len(body(chunk_prompt(prompt, comma_padding_backtrack=4)[0][0])) == 75
    assert len(body(chunk_prompt(prompt, comma_padding_backtrack=5)[0][0])) == 71


def test_comma_right_after_a_full_chunk_starts_the_next_one():
    chunks, count = chunk_prompt(words(75) + " , 2000")
    assert [body(c) for c in chunks] == [ids(75), [COMMA, 2000]]
    assert count == 77


def test_comma_as_last_token_of_a_full_chunk_moves_nothing():
    chunks, _ = chunk_prompt(words(74) + " , " + words(3, 2000))
    assert [body(c) for c in chunks] == [ids(74) + [COMMA], ids(3, 2000)]


def test_comma_memory_resets_with_each_chunk():
    # the comma sits in chunk 1; chunk 2 fills with no comma of its own and is cut at 75
    chunks, _ = chunk_prompt(words(10) + " , " + words(150, 2000))
    assert [len(body(c)) for c in chunks] == [75, 75, 11]


def test_custom_chunk_length():
    chunks, count = chunk_prompt(words(12), chunk_length=5)
    assert [c.tokens for c in chunks] == [
        [START, *ids(5), END],
        [START, *ids(5, 1005), END],
        [START, 1010, 1011, END, END, END, END],
    ]
    assert count == 12


def test_chunking_does_not_import_torch():
    code = "import sys, backend.prompts.chunking; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# The real CLIP vocabulary (shipped inside open-clip-torch)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_tokenize():
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    return lambda texts: [tokenizer.encode(text) for text in texts]


def test_clip_comma_token(clip_tokenize):
    assert clip_tokenize([","]) == [[COMMA]]


def test_clip_ids_match_openai(clip_tokenize):
    assert clip_tokenize(["a photograph of an astronaut riding a horse"]) == [[320, 8853, 539, 550, 18376, 6765, 320, 4558]]


def test_clip_chunking_of_a_real_prompt(clip_tokenize):
    parsed = parse_prompt_attention("a photograph of an (astronaut:1.2) riding a horse")
    chunks, count = build_chunks(parsed, clip_tokenize, id_start=START, id_end=END, comma_token=COMMA)
    assert count == 8
    assert chunks[0].tokens == [START, 320, 8853, 539, 550, 18376, 6765, 320, 4558] + [END] * 68
    assert chunks[0].multipliers[:10] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.2, 1.0, 1.0, 1.0, 1.0]


def test_clip_comma_backtrack_on_a_long_prompt(clip_tokenize):
    # "red apple," is three tokens: 72 of them, then four words; the chunk fills at "blue"
    # and the three words after the last comma move to the next chunk
    prompt = "red apple, " * 24 + "green pear blue sky"
    chunks, count = build_chunks(parse_prompt_attention(prompt), clip_tokenize, id_start=START, id_end=END, comma_token=COMMA)
    assert body(chunks[0]) == clip_tokenize(["red apple, " * 24])[0]
    assert body(chunks[1]) == clip_tokenize(["green pear blue sky"])[0]
    assert len(body(chunks[1])) == 4
    assert count == 79
