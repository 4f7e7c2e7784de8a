"""The CLIP BPE tokenizer, built offline from the vocabulary shipped inside the open-clip-torch package.

Every supported family uses OpenAI CLIP's byte-level BPE (SD1 and SDXL's first encoder directly; SD2 and
SDXL's second encoder through OpenCLIP, which uses the same vocabulary). open-clip-torch ships that
vocabulary as `open_clip/bpe_simple_vocab_16e6.txt.gz`; the token table follows from it:
the 256 byte-unicode characters, the same with the end-of-word marker `</w>`, the 48894 merges joined,
then `<|startoftext|>` and `<|endoftext|>` (49408 entries, ids identical to OpenAI CLIP).

The tokenizer is built in memory (about 0.1 s), so nothing is downloaded or written.
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from backend.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# Lines 1..48894 of the file are the merges CLIP uses: 49408 tokens - 2 * 256 byte tokens - 2 specials.
MERGE_COUNT = 48894
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77


def bpe_vocabulary_path() -> Path:
    """Where the open-clip-torch package keeps the CLIP BPE vocabulary."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ModelLoadError("open-clip-torch is not installed; it provides the CLIP tokenizer vocabulary")
    path = Path(spec.origin).parent / BPE_FILENAME
    if not path.is_file():
        raise ModelLoadError(f"CLIP vocabulary missing from open-clip-torch: {path}")
    return path


def byte_unicode_alphabet() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: one printable character per byte value, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are mapped, in byte
    order, to code points from 256 upwards so that no token contains whitespace or control characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    kept = set(printable)
    others = [b for b in range(256) if b not in kept]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def read_clip_bpe(path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP vocabulary (token -> id) and merge list from the gzipped BPE file."""
    source = path or bpe_vocabulary_path()
    lines = gzip.decompress(source.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:MERGE_COUNT + 1]]
    if len(merges) != MERGE_COUNT or any(len(pair) != 2 for pair in merges):
        raise ModelLoadError(f"unexpected CLIP BPE file layout: {source}")
    alphabet = byte_unicode_alphabet()
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(pair) for pair in merges), BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def build_clip_tokenizer(pad_token: str = EOS_TOKEN, *, bpe_path: Path | None = None) -> CLIPTokenizer:
    """A transformers CLIPTokenizer with OpenAI CLIP's ids, padding with `pad_token`.

    SD1 and SDXL's first encoder pad with `<|endoftext|>`; SD2 and SDXL's second encoder pad with "!"
    (id 0), as OpenCLIP does. `model_max_length` is 77, which the diffusers pipelines require.
    """
    from transformers import CLIPTokenizer

    vocab, merges = read_clip_bpe(bpe_path)
    if pad_token not in vocab:
        raise ModelLoadError(f"pad token {pad_token!r} is not in the CLIP vocabulary")
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=MODEL_MAX_LENGTH)
