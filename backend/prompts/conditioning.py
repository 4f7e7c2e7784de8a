"""Prompts -> text-encoder conditioning, the way A1111 builds it.

Each prompt is parsed (emphasis, BREAK), cut into 75-token chunks, each chunk is
encoded separately as 77 tokens and the chunks are concatenated along the token
axis. Emphasis multiplies the encoder output per token after the transformer.
Prompt editing and alternation give a per-step schedule of conditionings; AND
gives weighted sub-prompts for composable CFG. Textual-inversion embeddings named in a
prompt put their vectors into the encoder's token embeddings at their positions.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from backend.errors import InvalidRequest
from backend.prompts import parser
from backend.prompts.chunking import FindEmbedding, PromptChunk, build_chunks
from backend.prompts.embeddings import Embedding, EmbeddingDatabase, EmbeddingSet

EMPHASIS_MODES: tuple[str, ...] = ("Original", "No norm", "Ignore", "None")


@dataclass(frozen=True)
class EncoderSpec:
    """How to read conditioning out of one CLIP text model.

    hidden_layer: which entry of hidden_states to use (-1 last, -2 penultimate).
    final_norm: apply the final layer norm to it (ldm's CLIP "last" and SD2's OpenCLIP do).
    clip_skip: whether the Clip skip setting moves hidden_layer (SD1: always;
        SDXL's CLIP-L: only with sdxl_clip_l_skip; SD2 and SDXL's OpenCLIP: never, as A1111).
    pad_id: id written after the first end token (OpenCLIP pads with 0); None keeps the end token.
    pooled: this encoder also yields the projected pooled output (SDXL's OpenCLIP bigG).
    """

    text_model: torch.nn.Module
    tokenizer: Any
    hidden_layer: int = -1
    final_norm: bool = True
    clip_skip: bool = True
    pad_id: int | None = None
    pooled: bool = False


@dataclass(frozen=True)
class EncodeSettings:
    """The per-request settings that change conditioning."""

    clip_skip: int = 1
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20

    def __post_init__(self) -> None:
        if self.emphasis not in EMPHASIS_MODES:
            raise InvalidRequest("emphasis", f"must be one of {', '.join(EMPHASIS_MODES)}, got {self.emphasis!r}")
        if self.clip_skip < 1:
            raise InvalidRequest("CLIP_stop_at_last_layers", f"must be >= 1, got {self.clip_skip}")


@dataclass
class Cond:
    """Conditioning of a batch of texts: cross-attention tokens, and SDXL's pooled vector."""

    crossattn: Tensor  # [B, 77*k, C]
    pooled: Tensor | None = None  # [B, P]

    def __getitem__(self, i: int) -> "Cond":
        return Cond(self.crossattn[i], None if self.pooled is None else self.pooled[i])


@dataclass(frozen=True)
class ScheduledCond:
    """One entry of a prompt's schedule: used while the step counter is <= end_at_step."""

    end_at_step: int
    cond: Cond  # unbatched: crossattn [77*k, C], pooled [P]


@dataclass(frozen=True)
class ComposableCond:
    schedules: list[ScheduledCond]
    weight: float


class TextConditioner:
    """Encodes texts with one or two CLIP models (SDXL concatenates them on channels).

    `embeddings`: the textual-inversion embeddings folder; the ones that fit these encoders are
    taken from it once (rescanned first if it changed) and used for every text this conditioner
    encodes. `used_embeddings` collects those that prompts named, for the "TI hashes" infotext.
    """

    def __init__(self, encoders: Sequence[EncoderSpec], device: torch.device, zero_empty_negative: bool = False,
                 embeddings: EmbeddingDatabase | None = None) -> None:
        if not encoders:
            raise ValueError("at least one text encoder is needed")
        self.encoders = list(encoders)
        self.device = device
        # SDXL (sgm) conditions an all-empty negative prompt on zeros instead of encoding "".
        self.zero_empty_negative = zero_empty_negative
        self.embeddings = (EmbeddingSet() if embeddings is None
                           else embeddings.for_encoders([spec.text_model for spec in self.encoders]))
        self.used_embeddings: dict[str, Embedding] = {}
        self._matchers: dict[int, FindEmbedding | None] = {}

    def embedding_hashes(self) -> str | None:
        """A1111's "TI hashes" value for the embeddings used so far: "name: 12hex, ..." (None if none is hashed)."""
        hashes = [f"{name.replace(':', '').replace(',', '')}: {e.shorthash}"
                  for name, e in self.used_embeddings.items() if e.shorthash]
        return ", ".join(hashes) or None

    # -- public ------------------------------------------------------------

    def encode(self, texts: list[str], settings: EncodeSettings, *, is_negative: bool = False) -> Cond:
        """Encode a batch of texts as A1111 does for one call of get_learned_conditioning."""
        crossattn, pooled = [], None
        for index in range(len(self.encoders)):
            z, p = self._encode_with(index, texts, settings)
            crossattn.append(z)
            if p is not None:
                pooled = p
        cond = Cond(torch.cat(crossattn, dim=-1) if len(crossattn) > 1 else crossattn[0], pooled)
        if self.zero_empty_negative and is_negative and all(t == "" for t in texts):
            cond = Cond(torch.zeros_like(cond.crossattn), None if cond.pooled is None else torch.zeros_like(cond.pooled))
        return cond

    # -- internals ---------------------------------------------------------

    def _chunks(self, index: int, text: str, settings: EncodeSettings) -> tuple[list[PromptChunk], int]:
        tok = self.encoders[index].tokenizer
        if settings.emphasis == "None":
            parsed: list[list] = [[text, 1.0]]
        else:
            parsed = parser.parse_prompt_attention(text)

        def tokenize(texts: list[str]) -> list[list[int]]:
            return tok(texts, truncation=False, add_special_tokens=False)["input_ids"]

        if index not in self._matchers:
            self._matchers[index] = self.embeddings.matcher(tokenize)
        chunks, count = build_chunks(
            parsed, tokenize, id_start=tok.bos_token_id, id_end=tok.eos_token_id,
            comma_token=tok.get_vocab()[",</w>"], comma_padding_backtrack=settings.comma_padding_backtrack,
            find_embedding=self._matchers[index],
        )
        for chunk in chunks:
            for _, embedding in _fixes(chunk):
                self.used_embeddings.setdefault(embedding.name, embedding)
        return chunks, count

    def _encode_with(self, index: int, texts: list[str], settings: EncodeSettings) -> tuple[Tensor, Tensor | None]:
        batch_chunks = [self._chunks(index, t, settings)[0] for t in texts]
        chunk_count = max(len(c) for c in batch_chunks)
        tok = self.encoders[index].tokenizer
        empty = PromptChunk([tok.bos_token_id] + [tok.eos_token_id] * 76, [1.0] * 77)
        zs: list[Tensor] = []
        pooled: Tensor | None = None
        for i in range(chunk_count):
            # Shorter prompts are padded with empty chunks so the batch lines up (A1111).
            chunk = [c[i] if i < len(c) else empty for c in batch_chunks]
            z, p = self._encode_chunk(index, chunk, settings)
            zs.append(z)
            if i == 0:
                pooled = p  # SDXL's pooled vector comes from the first chunk only
        return torch.cat(zs, dim=1), pooled

    def _encode_chunk(self, index: int, chunk: list[PromptChunk], settings: EncodeSettings) -> tuple[Tensor, Tensor | None]:
        spec = self.encoders[index]
        tok = spec.tokenizer
        rows = [list(c.tokens) for c in chunk]
        if spec.pad_id is not None and spec.pad_id != tok.eos_token_id:
            for row in rows:
                end = row.index(tok.eos_token_id)
                row[end + 1:] = [spec.pad_id] * (len(row) - end - 1)
        ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        model = spec.text_model
        # Encoder `index` takes part `index` of each embedding (SDXL files: clip_l, then clip_g).
        vectors = [(row, offset, embedding.parts[index])
                   for row, c in enumerate(chunk) for offset, embedding in _fixes(c)]
        with _token_embeddings_replaced(model, ids, vectors):
            out = model(input_ids=ids, output_hidden_states=True)
        layer = spec.hidden_layer
        if spec.clip_skip and settings.clip_skip > 1:
            layer = -settings.clip_skip
        if layer == -1 and spec.final_norm:
            z = out.last_hidden_state
        else:
            z = out.hidden_states[layer]
            if spec.final_norm:
                z = _final_layer_norm(model)(z)
        z = z.float()
        pooled = out.text_embeds.float() if spec.pooled else None
        multipliers = torch.tensor([list(c.multipliers) for c in chunk], dtype=torch.float32, device=z.device)
        return _apply_emphasis(z, multipliers, settings.emphasis), pooled


def _fixes(chunk: PromptChunk) -> list[tuple[int, Embedding]]:
    """(offset, embedding) of a chunk's embeddings; chunking only sees them as TextualEmbedding, but the
    conditioner's matcher only ever finds `Embedding`s."""
    return [(fix.offset, cast(Embedding, fix.embedding)) for fix in chunk.fixes]


@contextmanager
def _token_embeddings_replaced(model: torch.nn.Module, ids: Tensor,
                               vectors: list[tuple[int, int, Tensor]]) -> Iterator[None]:
    """While the block runs, the token embeddings the model computes for `ids` have the given rows
    replaced: `(row, position, [n, width] vectors)` (A1111's EmbeddingsWithFixes).

    transformers' CLIP text model does not take `inputs_embeds`, so the substitution is a forward hook
    on the model's own token-embedding layer, removed on exit; the transformer then sees the vectors
    exactly where the placeholder ids are, and the pooled output still finds the end token in `ids`.
    """
    if not vectors:
        yield
        return

    def replace(module: torch.nn.Module, inputs: tuple[Any, ...], output: Tensor) -> Tensor | None:
        # Only the call for these ids (the model views them, so the storage is the same).
        if not inputs or inputs[0].data_ptr() != ids.data_ptr():
            return None
        output = output.clone()
        for row, position, vec in vectors:
            output[row, position:position + vec.shape[0]] = vec.to(device=output.device, dtype=output.dtype)
        return output

    handle = model.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def _final_layer_norm(model: torch.nn.Module) -> torch.nn.Module:
    # transformers >= 5.6 keeps the CLIP transformer under .text_model or at top level.
    inner = getattr(model, "text_model", model)
    return inner.final_layer_norm


def _apply_emphasis(z: Tensor, multipliers: Tensor, mode: str) -> Tensor:
    """A1111's emphasis modes, applied per chunk after the transformer."""
    if mode in ("None", "Ignore"):
        return z
    weighted = z * multipliers.unsqueeze(-1)
    if mode == "No norm":
        return weighted
    # "Original": multiply, then restore the mean over the whole chunk batch.
    return weighted * (z.mean() / weighted.mean())


# ---------------------------------------------------------------------------
# Schedules (prompt editing / alternation) and AND
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ScheduleSettings:
    steps: int
    hires_steps: int | None = None
    use_old_scheduling: bool = False


class ConditioningCache:
    """Per-request memo: the same prompt text is encoded once (A1111 caches per prompt too)."""

    def __init__(self) -> None:
        self._store: dict[tuple, list[ScheduledCond]] = {}

    def get(self, key: tuple) -> list[ScheduledCond] | None:
        return self._store.get(key)

    def put(self, key: tuple, value: list[ScheduledCond]) -> None:
        self._store[key] = value


def learned_conditioning(conditioner: TextConditioner, prompts: list[str], enc: EncodeSettings,
                         sched: ScheduleSettings, *, is_negative: bool = False,
                         cache: ConditioningCache | None = None) -> list[list[ScheduledCond]]:
    """Per prompt, its schedule of conditionings (A1111's get_learned_conditioning).

    The texts of one prompt's schedule are encoded together as one batch, so the
    "Original" emphasis mean is taken over them, exactly as A1111 does.
    """
    cache = cache or ConditioningCache()
    schedules = parser.get_learned_conditioning_prompt_schedules(
        prompts, sched.steps, sched.hires_steps, sched.use_old_scheduling)
    result: list[list[ScheduledCond]] = []
    for prompt, schedule in zip(prompts, schedules):
        # The embeddings' versions are part of the key, so a changed embedding file is never served stale.
        key = (prompt, is_negative, conditioner.embeddings.key)
        cached = cache.get(key)
        if cached is None:
            texts = [text for _, text in schedule]
            cond = conditioner.encode(texts, enc, is_negative=is_negative)
            cached = [ScheduledCond(end, cond[i]) for i, (end, _) in enumerate(schedule)]
            cache.put(key, cached)
        result.append(cached)
    return result


def multicond_learned_conditioning(conditioner: TextConditioner, prompts: list[str], enc: EncodeSettings,
                                   sched: ScheduleSettings,
                                   cache: ConditioningCache | None = None) -> list[list[ComposableCond]]:
    """AND-split positive prompts: per prompt, its weighted sub-prompt schedules."""
    indexes, flat = parser.get_multicond_prompt_list(prompts)
    learned = learned_conditioning(conditioner, flat, enc, sched, cache=cache)
    return [[ComposableCond(learned[i], weight) for i, weight in entry] for entry in indexes]


def _pick(schedule: list[ScheduledCond], step: int) -> Cond:
    for entry in schedule:
        if step <= entry.end_at_step:
            return entry.cond
    return schedule[-1].cond


def cond_batch_at(conds: list[list[ScheduledCond]], step: int) -> Cond:
    """Uncond batch for a step (A1111's reconstruct_cond_batch): all prompts must share a length."""
    picked = [_pick(s, step) for s in conds]
    lengths = {c.crossattn.shape[0] for c in picked}
    if len(lengths) > 1:
        picked = _pad_to_longest(picked)
    return _stack(picked)


def multicond_batch_at(conds: list[list[ComposableCond]], step: int) -> tuple[list[list[tuple[int, float]]], Cond]:
    """Positive batch for a step (A1111's reconstruct_multicond_batch).

    Returns, per image, (row index, weight) pairs into the stacked tensor; shorter
    conds are padded by repeating their last token vector, as A1111 does.
    """
    picked: list[Cond] = []
    conds_list: list[list[tuple[int, float]]] = []
    for composable in conds:
        entry = []
        for sub in composable:
            entry.append((len(picked), sub.weight))
            picked.append(_pick(sub.schedules, step))
        conds_list.append(entry)
    return conds_list, _stack(_pad_to_longest(picked))


def _pad_to_longest(conds: list[Cond]) -> list[Cond]:
    longest = max(c.crossattn.shape[0] for c in conds)
    out = []
    for c in conds:
        missing = longest - c.crossattn.shape[0]
        if missing:
            c = Cond(torch.cat([c.crossattn, c.crossattn[-1:].repeat(missing, 1)]), c.pooled)
        out.append(c)
    return out


def _stack(conds: list[Cond]) -> Cond:
    pooled = None
    if conds[0].pooled is not None:
        pooled = torch.stack([c.pooled for c in conds])  # type: ignore[misc]
    return Cond(torch.stack([c.crossattn for c in conds]), pooled)
