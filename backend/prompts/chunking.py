"""A1111's 75-token prompt chunking over token ids (no torch).

Mirrors `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line` in A1111's sd_hijack_clip.py:
each chunk holds up to `chunk_length` prompt tokens between a start and an end token, padded with
the end token; `BREAK` closes the current chunk; a chunk that fills up just after a comma moves the
words after that comma into the next chunk so a phrase is not cut in half. A textual-inversion
embedding found in the text takes one placeholder token per vector and never straddles two chunks.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["EmbeddingFix", "FindEmbedding", "PromptChunk", "TextualEmbedding", "build_chunks"]

# The id written where an embedding's vectors go (A1111 writes 0 too); the encoder replaces those rows.
EMBEDDING_PLACEHOLDER = 0


class TextualEmbedding(Protocol):
    """What chunking needs to know of an embedding: how many token positions it fills."""

    @property
    def vectors(self) -> int: ...


# (token ids of one prompt segment, position) -> (the embedding named there, how many ids its name
# spans), or None when no embedding name starts at that position.
FindEmbedding = Callable[[Sequence[int], int], tuple[TextualEmbedding, int] | None]


@dataclass(frozen=True)
class EmbeddingFix:
    """An embedding's vectors go to `tokens[offset:offset + embedding.vectors]` of its chunk (A1111's PromptChunkFix)."""

    offset: int
    embedding: TextualEmbedding


@dataclass
class PromptChunk:
    """Token ids of one encoder pass, the emphasis multiplier of each token, and where embeddings go."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[EmbeddingFix] = field(default_factory=list)

    def split_off(self, at: int) -> "PromptChunk":
        """Remove everything from `at` on and return it as a new chunk (embeddings move with their tokens)."""
        moved = PromptChunk(self.tokens[at:], self.multipliers[at:],
                            [EmbeddingFix(f.offset - at, f.embedding) for f in self.fixes if f.offset >= at])
        del self.tokens[at:], self.multipliers[at:]
        self.fixes = [f for f in self.fixes if f.offset < at]
        return moved


def build_chunks(
    parsed: list[list],
    tokenize: Callable[[list[str]], list[list[int]]],
    *,
    id_start: int,
    id_end: int,
    comma_token: int,
    chunk_length: int = 75,
    comma_padding_backtrack: int = 20,
    find_embedding: FindEmbedding | None = None,
) -> tuple[list[PromptChunk], int]:
    """Turn `parse_prompt_attention` output into chunks of `chunk_length + 2` ids.

    `tokenize` maps texts to ids without special tokens. Returns the chunks and A1111's token
    count: `chunk_length` for every chunk but the last, plus the real tokens of the last one
    (an embedding counts as many tokens as it has vectors). A `comma_padding_backtrack` of 0
    turns the comma rule off. `find_embedding` finds embedding names in each segment's ids; an
    embedding takes its segment's weight for all its vectors and starts a new chunk when it does
    not fit in the current one. Embeddings must have at most `chunk_length` vectors.
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
        current.fixes = [EmbeddingFix(f.offset + 1, f.embedding) for f in current.fixes]  # after the start token
        chunks.append(current)
        current = PromptChunk()
        last_comma = -1

    for tokens, (text, weight) in zip(tokenized, parsed):
        if text == "BREAK" and weight == -1:
            close_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma_token:
                last_comma = len(current.tokens)
            elif (
                comma_padding_backtrack != 0
                and len(current.tokens) == chunk_length
                and last_comma != -1
                and len(current.tokens) - last_comma <= comma_padding_backtrack
            ):
                # Full chunk and a comma close behind: the words after it start the next chunk.
                moved = current.split_off(last_comma + 1)
                close_chunk()
                current = moved
            if len(current.tokens) == chunk_length:
                close_chunk()
            found = find_embedding(tokens, position) if find_embedding is not None else None
            if found is None:
                current.tokens.append(token)
                current.multipliers.append(weight)
                position += 1
                continue
            embedding, name_length = found
            if len(current.tokens) + embedding.vectors > chunk_length:
                close_chunk()
            current.fixes.append(EmbeddingFix(len(current.tokens), embedding))
            current.tokens += [EMBEDDING_PLACEHOLDER] * embedding.vectors
            current.multipliers += [weight] * embedding.vectors
            position += name_length

    if current.tokens or not chunks:
        close_chunk(is_last=True)
    return chunks, token_count
