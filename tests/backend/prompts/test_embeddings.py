"""Textual-inversion embeddings (backend/prompts/embeddings.py and their use in chunking and conditioning).

Embedding files of every format are written to a temporary folder. Expected conditionings are computed
independently: with a copy of the text encoder whose token-embedding rows for some words were
overwritten by the embedding's vectors, so "a red house" on the copy must equal "a myemb" on the model.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.config import Options, Settings
from backend.models.loader import LoadedModel, load_checkpoint
from backend.processing import StableDiffusionProcessingTxt2Img
from backend.processing.core import encoder_specs
from backend.prompts.chunking import PromptChunk, build_chunks
from backend.prompts.conditioning import (
    EncodeSettings,
    EncoderSpec,
    ScheduleSettings,
    TextConditioner,
    learned_conditioning,
)
from backend.prompts.embeddings import EmbeddingDatabase
from backend.prompts.parser import parse_prompt_attention
from tests.backend.models.tiny_checkpoints import build_tiny_model, write_checkpoint
from tests.backend.prompts.embedding_files import (
    bump_mtime,
    random_vectors,
    save_a1111_pt,
    save_diffusers_bin,
    save_emb_params,
    save_sdxl,
)

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------
# Models and independent reference encodings
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def family_models(tmp_path_factory: pytest.TempPathFactory, builtin_model: LoadedModel) -> dict[str, LoadedModel]:
    """The built-in SD1 model and tiny SD2 / SDXL checkpoints, loaded through the normal loader."""
    root = tmp_path_factory.mktemp("ti-models")
    models = {"sd1": builtin_model}
    for name in ("sd2", "sdxl"):
        path = write_checkpoint(root / f"tiny-{name}.safetensors", build_tiny_model(name, seed=3).state_dict())
        models[name] = load_checkpoint(path, device=CPU, dtype=torch.float32, cache_dir=root / "cache")
    return models


def text_models(model: LoadedModel) -> list[torch.nn.Module]:
    return [m for m in (model.text_encoder, model.text_encoder_2) if m is not None]


def word_rows(encoder: torch.nn.Module, tokenizer, words: list[str]) -> torch.Tensor:
    """The token-embedding rows of single-token words: [len(words), width]."""
    ids = [tokenizer([w], add_special_tokens=False)["input_ids"][0] for w in words]
    assert all(len(i) == 1 for i in ids), ids
    return encoder.get_input_embeddings().weight[[i[0] for i in ids]].detach().clone()


def with_rows_replaced(model: LoadedModel, words: list[str], parts: list[torch.Tensor]) -> list[EncoderSpec]:
    """Encoder specs like the model's, on copies of its text encoders whose rows for `words` are `parts`
    (one [len(words), width] tensor per encoder): the reference for an embedding put in their place."""
    specs = encoder_specs(model, Options())
    out = []
    for spec, vectors in zip(specs, parts):
        clone = copy.deepcopy(spec.text_model)
        ids = [spec.tokenizer([w], add_special_tokens=False)["input_ids"][0][0] for w in words]
        with torch.no_grad():
            clone.get_input_embeddings().weight[ids] = vectors
        out.append(EncoderSpec(clone, spec.tokenizer, spec.hidden_layer, spec.final_norm, spec.clip_skip,
                               spec.pad_id, spec.pooled))
    return out


def conditioner_for(model: LoadedModel, db: EmbeddingDatabase | None, specs: list[EncoderSpec] | None = None,
                    ) -> TextConditioner:
    return TextConditioner(specs or encoder_specs(model, Options()), CPU, zero_empty_negative=model.is_sdxl,
                           embeddings=db)


def clip_run(model: LoadedModel, ids: list[int]) -> torch.Tensor:
    """The SD1 encoder's last hidden state for one row of ids: what A1111 feeds the UNet."""
    return model.text_encoder(input_ids=torch.tensor([ids]), output_hidden_states=True).last_hidden_state[0]


def ids_of(model: LoadedModel, text: str) -> list[int]:
    return model.tokenizer([text], add_special_tokens=False)["input_ids"][0]


# ---------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------

def test_every_format_is_read_recursively_with_a1111_fields(tmp_path: Path) -> None:
    pt = save_a1111_pt(tmp_path / "style.pt", random_vectors(3, 32, 1), step=1200)
    save_diffusers_bin(tmp_path / "concepts" / "cat-toy.bin", random_vectors(1, 32, 2)[0])
    save_emb_params(tmp_path / "neg" / "deep" / "EasyNeg.safetensors", random_vectors(8, 32, 3))
    save_sdxl(tmp_path / "xl-style.safetensors", random_vectors(2, 32, 4), random_vectors(2, 48, 5))
    (tmp_path / "notes.txt").write_text("not an embedding")
    (tmp_path / "empty.pt").write_bytes(b"")
    save_file({"a": torch.zeros(2, 4), "b": torch.zeros(2, 4)}, str(tmp_path / "two-tensors.safetensors"))
    (tmp_path / "garbage.bin").write_bytes(b"\x00not a pickle")

    db = EmbeddingDatabase([tmp_path])
    loaded, skipped = db.listing()  # no model known yet: everything readable is "loaded" (A1111's -1 shape)
    assert skipped == {}
    assert set(loaded) == {"style", "cat-toy", "EasyNeg", "xl-style"}
    assert loaded["style"].api_json() == {"step": 1200, "sd_checkpoint": "0123456789",
                                          "sd_checkpoint_name": "base-model", "shape": 32, "vectors": 3}
    assert loaded["cat-toy"].api_json() == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                            "shape": 32, "vectors": 1}
    assert loaded["EasyNeg"].vectors == 8
    assert loaded["xl-style"].api_json()["shape"] == 32 + 48  # A1111 adds clip_l and clip_g widths
    assert loaded["style"].shorthash == hashlib.sha256(pt.read_bytes()).hexdigest()[:12]
    assert EmbeddingDatabase([tmp_path], hashing=False).listing()[0]["style"].shorthash is None


def test_folder_is_in_the_data_dir_unless_the_flag_names_one(tmp_path: Path) -> None:
    assert Settings.from_args(["--data-dir", str(tmp_path)], env={}).embeddings_dir == tmp_path / "embeddings"
    other = tmp_path / "elsewhere"
    flags = ["--data-dir", str(tmp_path), "--embeddings-dir", str(other)]
    assert Settings.from_args(flags, env={}).embeddings_dir == other


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"string_to_param": {"*": Evil()}}, tmp_path / "evil.pt")
    assert EmbeddingDatabase([tmp_path]).listing() == ({}, {})


def test_folder_is_rescanned_only_when_it_changed(tmp_path: Path) -> None:
    db = EmbeddingDatabase([tmp_path])
    assert db.refresh_if_changed() and not db.refresh_if_changed()
    path = save_emb_params(tmp_path / "late.safetensors", random_vectors(1, 32, 1))
    assert db.refresh_if_changed()
    first = db.listing()[0]["late"]
    save_emb_params(path, random_vectors(1, 32, 2))
    bump_mtime(path)
    assert db.refresh_if_changed()
    second = db.listing()[0]["late"]
    assert second.version != first.version and not torch.equal(second.parts[0], first.parts[0])
    path.unlink()
    assert db.refresh_if_changed() and db.listing() == ({}, {})


# ---------------------------------------------------------------------------
# Chunking (pure): where embeddings go
# ---------------------------------------------------------------------------

START, END, COMMA = 49406, 49407, 267
EMB_ID = 7  # the (single) token id of the embedding's name in these tests


def tokenize_numbers(texts: list[str]) -> list[list[int]]:
    """Numbers are their own ids, ',' the comma, 'emb' the embedding's name."""
    table = {",": COMMA, "emb": EMB_ID}
    return [[table.get(w) or int(w) for w in t.replace(",", " , ").split()] for t in texts]


def chunk(prompt: str, vectors: int, **kwargs) -> tuple[list[PromptChunk], int]:
    emb = SimpleNamespace(vectors=vectors)

    def find(tokens, position):
        return (emb, 1) if tokens[position] == EMB_ID else None

    return build_chunks(parse_prompt_attention(prompt), tokenize_numbers, id_start=START, id_end=END,
                        comma_token=COMMA, find_embedding=find, **kwargs)


def numbers(count: int) -> str:
    return " ".join(str(1000 + i) for i in range(count))


def test_embedding_takes_one_position_per_vector_with_its_segment_weight() -> None:
    chunks, count = chunk("1000 (emb:1.5) 1001", vectors=3)
    assert count == 5  # the token counter counts the vectors
    assert chunks[0].tokens[:6] == [START, 1000, 0, 0, 0, 1001]
    assert chunks[0].multipliers[:6] == [1.0, 1.0, 1.5, 1.5, 1.5, 1.0]
    assert [(f.offset, f.embedding.vectors) for f in chunks[0].fixes] == [(2, 3)]


@pytest.mark.parametrize("before, chunk_of_embedding", [(72, 0), (73, 1)])
def test_embedding_that_does_not_fit_starts_a_new_chunk(before: int, chunk_of_embedding: int) -> None:
    chunks, count = chunk(f"{numbers(before)} emb", vectors=3, comma_padding_backtrack=0)
    assert len(chunks) == chunk_of_embedding + 1
    fix = chunks[chunk_of_embedding].fixes[0]
    assert fix.offset == (1 if chunk_of_embedding else before + 1)
    assert chunks[chunk_of_embedding].tokens[fix.offset:fix.offset + 3] == [0, 0, 0]
    if chunk_of_embedding:
        assert chunks[0].tokens[1:before + 1] == list(range(1000, 1000 + before))
        assert chunks[0].tokens[before + 1:] == [END] * (77 - before - 1)  # padded, not split
        assert count == 75 + 3
    else:
        assert count == before + 3


def test_comma_wrap_moves_an_embedding_with_its_words() -> None:
    # 70 numbers, a comma, the embedding (2 vectors), 2 numbers: the chunk is full at 75, the comma
    # is 4 tokens back, so everything after it (embedding included) moves to the next chunk.
    chunks, _ = chunk(f"{numbers(70)}, emb 2000 2001 2002", vectors=2)
    assert chunks[0].fixes == []
    assert chunks[1].tokens[1:6] == [0, 0, 2000, 2001, 2002]
    assert [f.offset for f in chunks[1].fixes] == [1]


# ---------------------------------------------------------------------------
# Conditioning
# ---------------------------------------------------------------------------

@torch.no_grad()
def test_vectors_are_injected_where_the_name_is(builtin_model: LoadedModel, tmp_path: Path) -> None:
    vectors = random_vectors(2, 32, 7)
    save_emb_params(tmp_path / "myemb.safetensors", vectors)
    cond = conditioner_for(builtin_model, EmbeddingDatabase([tmp_path])).encode(["a myemb cat"], EncodeSettings())

    # Independent reference: the transformer run on token embeddings with the two vectors written in.
    tok = builtin_model.tokenizer
    ids = [tok.bos_token_id] + ids_of(builtin_model, "a") + [0, 0] + ids_of(builtin_model, "cat")
    ids += [tok.eos_token_id] * (77 - len(ids))
    encoder = copy.deepcopy(builtin_model.text_encoder)
    free_ids = [40000, 40001]  # rows no prompt here uses
    encoder.get_input_embeddings().weight[free_ids] = vectors
    ref_ids = ids[:2] + free_ids + ids[4:]
    expected = encoder(input_ids=torch.tensor([ref_ids])).last_hidden_state[0]
    torch.testing.assert_close(cond.crossattn[0], expected)
    plain = clip_run(builtin_model, [tok.bos_token_id] + ids_of(builtin_model, "a myemb cat")
                     + [tok.eos_token_id] * (77 - 1 - len(ids_of(builtin_model, "a myemb cat"))))
    assert not torch.allclose(cond.crossattn[0], plain)  # the name is not read as words


@torch.no_grad()
def test_emphasis_weight_applies_to_every_vector(builtin_model: LoadedModel, tmp_path: Path) -> None:
    save_emb_params(tmp_path / "myemb.safetensors", random_vectors(2, 32, 8))
    conditioner = conditioner_for(builtin_model, EmbeddingDatabase([tmp_path]))
    z = conditioner.encode(["a myemb cat"], EncodeSettings(emphasis="Ignore")).crossattn[0]
    multipliers = torch.ones(77)
    multipliers[2:4] = 1.2  # [BOS, a, v1, v2, cat, ...]
    weighted = z * multipliers[:, None]
    got = conditioner.encode(["a (myemb:1.2) cat"], EncodeSettings()).crossattn[0]
    torch.testing.assert_close(got, weighted * (z.mean() / weighted.mean()))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@torch.no_grad()
def test_embedding_equal_to_word_rows_gives_those_words(family_models: dict[str, LoadedModel], family: str,
                                                        tmp_path: Path) -> None:
    model = family_models[family]
    words = ["red", "house"]
    parts = [word_rows(m, tok, words) for m, tok in zip(text_models(model), (model.tokenizer, model.tokenizer_2))]
    def save(vectors: list[torch.Tensor]) -> Path:
        if family == "sdxl":  # clip_l goes to encoder 1, clip_g to encoder 2
            return save_sdxl(tmp_path / "duo.safetensors", *vectors)
        return save_a1111_pt(tmp_path / "duo.pt", vectors[0])

    save(parts)
    conditioner = conditioner_for(model, EmbeddingDatabase([tmp_path]))
    got = conditioner.encode(["a duo on a hill", "(duo:1.3) BREAK duo"], EncodeSettings())
    expected = conditioner.encode(["a red house on a hill", "(red house:1.3) BREAK red house"], EncodeSettings())
    torch.testing.assert_close(got.crossattn, expected.crossattn)
    if family == "sdxl":
        torch.testing.assert_close(got.pooled, expected.pooled)

    # And against copies of the encoders whose "red"/"house" rows hold other vectors.
    other = [random_vectors(2, p.shape[1], 9 + i) for i, p in enumerate(parts)]
    bump_mtime(save(other))
    reference = conditioner_for(model, None, with_rows_replaced(model, words, other))
    got = conditioner_for(model, EmbeddingDatabase([tmp_path])).encode(["a duo"], EncodeSettings())
    torch.testing.assert_close(got.crossattn, reference.encode(["a red house"], EncodeSettings()).crossattn)


@torch.no_grad()
def test_embedding_after_73_tokens_opens_the_second_chunk(builtin_model: LoadedModel, tmp_path: Path) -> None:
    vectors = random_vectors(3, 32, 11)
    save_emb_params(tmp_path / "tri.safetensors", vectors)
    conditioner = conditioner_for(builtin_model, EmbeddingDatabase([tmp_path]))
    filler = " ".join(["cat"] * 73)  # 73 tokens: the 3 vectors do not fit (73 + 3 > 75)
    cond = conditioner.encode([f"{filler} tri"], EncodeSettings(comma_padding_backtrack=0)).crossattn[0]
    assert cond.shape[0] == 154
    tok = builtin_model.tokenizer
    first = [tok.bos_token_id] + ids_of(builtin_model, filler) + [tok.eos_token_id] * 3
    torch.testing.assert_close(cond[:77], clip_run(builtin_model, first))
    encoder = copy.deepcopy(builtin_model.text_encoder)
    encoder.get_input_embeddings().weight[[40000, 40001, 40002]] = vectors
    second = [tok.bos_token_id, 40000, 40001, 40002] + [tok.eos_token_id] * 73
    torch.testing.assert_close(cond[77:], encoder(input_ids=torch.tensor([second])).last_hidden_state[0])


@torch.no_grad()
def test_wrong_width_is_skipped_listed_and_read_as_words(builtin_model: LoadedModel, tmp_path: Path) -> None:
    save_emb_params(tmp_path / "good.safetensors", random_vectors(1, 32, 12))
    save_emb_params(tmp_path / "sd15-style.safetensors", random_vectors(2, 768, 13))
    save_sdxl(tmp_path / "xl.safetensors", random_vectors(1, 768, 14), random_vectors(1, 1280, 15))
    save_emb_params(tmp_path / "huge.safetensors", random_vectors(76, 32, 16))  # cannot fit in one chunk
    db = EmbeddingDatabase([tmp_path])
    conditioner = conditioner_for(builtin_model, db)
    assert set(conditioner.embeddings.embeddings) == {"good"}
    loaded, skipped = db.listing()
    assert set(loaded) == {"good"} and set(skipped) == {"sd15-style", "xl", "huge"}
    got = conditioner.encode(["a sd15-style cat"], EncodeSettings()).crossattn
    torch.testing.assert_close(got, conditioner_for(builtin_model, None).encode(["a sd15-style cat"],
                                                                              EncodeSettings()).crossattn)


@torch.no_grad()
def test_longest_name_wins_and_used_embeddings_give_ti_hashes(builtin_model: LoadedModel, tmp_path: Path) -> None:
    short = save_emb_params(tmp_path / "bad.safetensors", random_vectors(1, 32, 17))
    long = save_emb_params(tmp_path / "bad_hands.safetensors", random_vectors(1, 32, 18))
    conditioner = conditioner_for(builtin_model, EmbeddingDatabase([tmp_path]))
    a = conditioner.encode(["bad_hands"], EncodeSettings()).crossattn
    assert list(conditioner.used_embeddings) == ["bad_hands"]
    conditioner.encode(["bad, cat"], EncodeSettings())
    sha = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in (short, long)}
    assert conditioner.embedding_hashes() == f"bad_hands: {sha['bad_hands']}, bad: {sha['bad']}"
    b = conditioner_for(builtin_model, EmbeddingDatabase([tmp_path])).encode(["bad hands"], EncodeSettings()).crossattn
    assert not torch.allclose(a, b)  # "bad hands" is the short embedding and the word "hands"


@torch.no_grad()
def test_changed_file_changes_the_cache_key_and_the_conditioning(builtin_model: LoadedModel, tmp_path: Path) -> None:
    path = save_emb_params(tmp_path / "myemb.safetensors", random_vectors(1, 32, 19))
    db = EmbeddingDatabase([tmp_path])
    sched = ScheduleSettings(steps=10)
    first = conditioner_for(builtin_model, db)
    before = learned_conditioning(first, ["a myemb"], EncodeSettings(), sched)[0][0].cond.crossattn
    save_emb_params(path, random_vectors(1, 32, 20))
    bump_mtime(path)
    second = conditioner_for(builtin_model, db)  # the next generation's conditioner rescans
    assert second.embeddings.key != first.embeddings.key
    after = learned_conditioning(second, ["a myemb"], EncodeSettings(), sched)[0][0].cond.crossattn
    assert not torch.allclose(before, after)


def test_token_counter_counts_the_vectors(tmp_path: Path) -> None:
    from ui.common import TokenCounter

    save_emb_params(tmp_path / "EasyNegative.safetensors", random_vectors(8, 32, 21))
    db = EmbeddingDatabase([tmp_path])
    db.refresh()
    counter = TokenCounter(SimpleNamespace(options=Options(), embeddings=db))  # type: ignore[arg-type]
    assert counter.count("worst quality, EasyNegative", 20) == 3 + 8
    assert counter.count("worst quality, easy negative", 20) == 5


# ---------------------------------------------------------------------------
# Generation: negative prompt, rescan before each job, infotext
# ---------------------------------------------------------------------------

def _generate(ctx, **kwargs):
    p = StableDiffusionProcessingTxt2Img(prompt="a cozy cabin", negative_prompt="blurry negemb", steps=3, width=64,
                                         height=64, seed=5, sampler_name="Euler", cfg_scale=7,
                                         do_not_save_samples=True, do_not_save_grid=True, **kwargs)
    return ctx.generate(p)


def test_negative_embedding_changes_the_image_and_is_in_the_infotext(app_ctx) -> None:
    ctx = app_ctx
    without = _generate(ctx)
    assert "TI hashes" not in without.infotexts[0]
    path = save_emb_params(ctx.settings.embeddings_dir / "negemb.safetensors", random_vectors(4, 32, 22) * 3)
    with_emb = _generate(ctx)  # the folder changed: the job sees the new file
    diff = np.abs(np.asarray(without.images[0], dtype=int) - np.asarray(with_emb.images[0], dtype=int)).max()
    assert diff > 0
    shorthash = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    info = with_emb.infotexts[0]
    assert f'TI hashes: "negemb: {shorthash}", Version' in info
    assert json.loads(with_emb.js())["infotexts"][0] == info
    off = _generate(ctx, override_settings={"textual_inversion_add_hashes_to_infotext": False})
    assert "TI hashes" not in off.infotexts[0]
    assert np.array_equal(np.asarray(off.images[0]), np.asarray(with_emb.images[0]))
