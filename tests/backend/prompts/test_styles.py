"""Prompt styles: A1111's apply/extract rules and its styles.csv files."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.errors import InvalidRequest
from backend.prompts.styles import (
    StyleDatabase,
    apply_styles_to_prompt,
    extract_style_text_from_prompt,
    merge_prompts,
    read_styles_csv,
    style_files,
)


def _write(path: Path, text: str, *, bom: bool = False) -> Path:
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("style", "prompt", "expected"), [
    ("masterpiece", "a cat", "a cat, masterpiece"),
    ("masterpiece", "", "masterpiece"),
    ("", "a cat", "a cat"),
    ("  masterpiece ", " a cat  ", "a cat, masterpiece"),  # both parts are stripped before joining
    ("best, {prompt}, detailed", "a cat", "best, a cat, detailed"),
    ("{prompt} {prompt}", "x", "x x"),
    ("art by {prompt}", "", "art by "),  # with the placeholder, nothing is stripped or skipped
])
def test_merge_prompts(style: str, prompt: str, expected: str) -> None:
    assert merge_prompts(style, prompt) == expected


def test_styles_apply_in_order() -> None:
    assert apply_styles_to_prompt("a cat", ["oil painting", "best, {prompt}"]) == "best, a cat, oil painting"


@pytest.mark.parametrize(("style", "prompt", "expected"), [
    ("masterpiece", "1girl, art by greg, masterpiece", (True, "1girl, art by greg")),
    ("masterpiece, {prompt}", "masterpiece, 1girl, art by greg", (True, "1girl, art by greg")),
    ("masterpiece, {prompt}", "exquisite, 1girl, art by greg", (False, "exquisite, 1girl, art by greg")),
    ("", "a cat", (True, "a cat")),
    ("masterpiece", "masterpiece", (True, "")),
])
def test_extract_style_text(style: str, prompt: str, expected: tuple[bool, str]) -> None:
    assert extract_style_text_from_prompt(style, prompt) == expected


def test_csv_is_read_as_a1111_writes_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "styles.csv", 'name,prompt,negative_prompt\n'
                  '"Photo","photo of {prompt}, 35mm","cartoon, drawing"\n'
                  '# comment,ignored,\n'
                  'Plain, oil painting,\n', bom=True)
    styles = {s.name: s for s in read_styles_csv(path)}
    assert list(styles) == ["Photo", "Plain"]
    assert styles["Photo"].prompt == "photo of {prompt}, 35mm"
    assert styles["Photo"].negative_prompt == "cartoon, drawing"
    assert styles["Plain"].prompt == "oil painting" and styles["Plain"].negative_prompt == ""
    # Files from before A1111 1.0 call the prompt column "text".
    legacy = _write(tmp_path / "old.csv", "name,text\nOld,sepia\n")
    assert read_styles_csv(legacy)[0].prompt == "sepia"


def test_database_applies_and_ignores_unknown_names(tmp_path: Path) -> None:
    _write(tmp_path / "styles.csv", "name,prompt,negative_prompt\nPhoto,photo of {prompt},blurry\nHQ,best quality,\n")
    db = StyleDatabase([tmp_path / "styles.csv"])
    assert db.names() == ["Photo", "HQ"]
    assert db.apply_styles_to_prompt("a dog", ["Photo", "nope", "HQ"]) == "photo of a dog, best quality"
    assert db.apply_negative_styles_to_prompt("ugly", ["Photo", "nope", "HQ"]) == "ugly, blurry"


def test_extract_styles_from_prompt_undoes_apply(tmp_path: Path) -> None:
    _write(tmp_path / "styles.csv", "name,prompt,negative_prompt\nPhoto,photo of {prompt},blurry\n"
           "HQ,best quality,lowres\nEmpty,,\n")
    db = StyleDatabase([tmp_path / "styles.csv"])
    prompt = db.apply_styles_to_prompt("a dog", ["HQ", "Photo"])
    negative = db.apply_negative_styles_to_prompt("ugly", ["HQ", "Photo"])
    assert (prompt, negative) == ("photo of a dog, best quality", "ugly, lowres, blurry")
    assert db.extract_styles_from_prompt(prompt, negative) == (["HQ", "Photo"], "a dog", "ugly")
    # A style counts only when both its prompt and negative prompt are there.
    assert db.extract_styles_from_prompt("a dog, best quality", "ugly") == ([], "a dog, best quality", "ugly")


def test_save_round_trip_keeps_files_and_backs_up(tmp_path: Path) -> None:
    first = _write(tmp_path / "styles.csv", "name,prompt,negative_prompt\nA,alpha,\n")
    extra = tmp_path / "more"
    extra.mkdir()
    _write(extra / "b.csv", "name,prompt,negative_prompt\nB,beta,\n")
    db = StyleDatabase(style_files([str(first), str(extra / "*.csv")], tmp_path))
    assert db.names() == ["A", "B"]
    db.save_style("B", "beta, {prompt}", 'says "hi", twice')  # stays in its own file
    db.save_style("C", "gamma", "")  # a new style goes to the first file
    db.delete_style("A")
    assert [s.name for s in read_styles_csv(first)] == ["C"]
    (b,) = read_styles_csv(extra / "b.csv")
    assert (b.prompt, b.negative_prompt) == ("beta, {prompt}", 'says "hi", twice')
    assert (tmp_path / "styles.csv.bak").is_file()
    assert first.read_bytes().startswith(b"\xef\xbb\xbf")  # UTF-8 with BOM, as A1111 writes it
    again = StyleDatabase(style_files([str(first), str(extra / "*.csv")], tmp_path))
    assert again.styles == db.styles
    with pytest.raises(InvalidRequest, match="name"):
        db.save_style("  ", "x", "")


def test_default_file_and_pattern_first(tmp_path: Path) -> None:
    assert style_files(None, tmp_path) == [tmp_path / "styles.csv"]
    db = StyleDatabase(style_files(None, tmp_path))
    assert db.names() == []  # a missing file is simply empty until a style is saved
    db.save_style("New", "x", "y")
    assert (tmp_path / "styles.csv").is_file()
    # A pattern first: new styles go to its first match, or styles.csv beside it when none matches.
    pattern = StyleDatabase([tmp_path / "sub" / "*.csv"])
    assert pattern.default_path == tmp_path / "sub" / "styles.csv"
