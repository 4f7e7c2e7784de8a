"""A1111's 75-token prompt chunking over token ids (no torch).

Mirrors `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line` in A1111's sd_hijack_clip.py:
each chunk holds up to `chunk_length` prompt tokens between a start and an end token, padded with
the end token; `BREAK` closes the current chunk; a chunk that fills up just after a comma moves the
words after that comma into the next chunk so a phrase is not cut in half.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PromptChunk", "build_chunks"]


@dataclass
class PromptChunk:
    """Token ids of one encoder pass and the emphasis multiplier of each token."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


def build_chunks(
    parsed: list[list],
    tokenize: Callable[[list[str]], list[list[int]]],
    *,
    id_start: int,
    id_end: int,
    comma_token: int,
    chunk_length: int = 75,
    comma_padding_backtrack: int = 20,
) -> tuple[list[PromptChunk], int]:
    """Turn `parse_prompt_attention` output into chunks of `chunk_length + 2` ids.

    `tokenize` maps texts to ids without special tokens. Returns the chunks and A1111's token
    count: `chunk_length` for every chunk but the last, plus the real tokens of the last one.
    A `comma_padding_backtrack` of 0 turns the comma rule off.
    """
    tokenized = tokenize([text for text, _ in parsed])
    chunks: list[PromptChunk] = []
    current = PromptChunk()
    token_count = 0
    last_comma = -1

    def close_chunk(is_last: bool = False) -> None:
        nonlocal current, token_count, last_comma
        # Padding of the last chunk does not count, so the UI counter shows real tokens.
        token_count += len(current.tokens) if is_last else chunk_length
        padding = chunk_length - len(current.tokens)
        current.tokens = [id_start] + current.tokens + [id_end] * padding + [id_end]
        current.multipliers = [1.0] + current.multipliers + [1.0] * padding + [1.0]
        chunks.append(current)
        current = PromptChunk()
        last_comma = -1

    for tokens, (text, weight) in zip(tokenized, parsed):
        if text == "BREAK" and weight == -1:
            close_chunk()
            continue
        for token in tokens:
            if token == comma_token:
                last_comma = len(current.tokens)
            elif (
                comma_padding_backtrack != 0
                and len(current.tokens) == chunk_length
                and last_comma != -1
                and len(current.tokens) - last_comma <= comma_padding_backtrack
            ):
                # Full chunk and a comma close behind: the words after it start the next chunk.
                split = last_comma + 1
                moved_tokens, moved_multipliers = current.tokens[split:], current.multipliers[split:]
                del current.tokens[split:], current.multipliers[split:]
                close_chunk()
                current.tokens, current.multipliers = moved_tokens, moved_multipliers
            if len(current.tokens) == chunk_length:
                close_chunk()
            current.tokens.append(token)
            current.multipliers.append(weight)

    if current.tokens or not chunks:
        close_chunk(is_last=True)
    return chunks, token_count
