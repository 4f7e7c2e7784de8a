"""Tests for backend/prompts/parser.py.

Vectors come from docs a1111.md §6.1-6.4 and 6.7 (A1111 v1.10.1 doctests and runs). The ones
marked "lark 1.1.2" were obtained by running A1111's schedule function with lark 1.1.2 under
twelve hash seeds, all giving the same result.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from backend.errors import InvalidRequest
from backend.prompts.parser import (
    ExtraNetworkParams,
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
    parse_extra_networks,
    parse_extra_networks_for_prompts,
    parse_prompt_attention,
    split_and,
    strip_comments,
)

# --------------------------------------------------------------------------------------------
# parse_prompt_attention
# --------------------------------------------------------------------------------------------

ATTENTION_VECTORS = [
    # A1111 doctests
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ["a ", 1.0],
            ["house", 1.5730000000000004],
            [" ", 1.1],
            ["on", 1.0],
            [" a ", 1.1],
            ["hill", 0.55],
            [", sun, ", 1.1],
            ["sky", 1.4641000000000006],
            [".", 1.1],
        ],
    ),
    # extra vectors run against v1.10.1
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("(a:1.5) [b]", [["a", 1.5], [" ", 1.0], ["b", 0.9090909090909091]]),
    ("((a))", [["a", 1.2100000000000002]]),
    ("[[a]]", [["a", 0.8264462809917354]]),
    ("a, (b, c:1.3), d", [["a, ", 1.0], ["b, c", 1.3], [", d", 1.0]]),
    ("(a:-1)", [["a", -1.0]]),
    ("(a [b] c)", [["a ", 1.1], ["b", 1.0], [" c", 1.1]]),
    ("BREAKfast BREAK x", [["BREAKfast", 1.0], ["BREAK", -1], ["x", 1.0]]),
]


@pytest.mark.parametrize(("text", "expected"), ATTENTION_VECTORS)
def test_attention_vectors(text, expected):
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [["", 1.0]]),
        # whitespace is allowed around an explicit weight
        ("(a: 1.5 )", [["a", 1.5]]),
        # unmatched closers and colons are plain text
        ("a) b] c:d", [["a) b] c:d", 1.0]]),
        ("a:1.2) b", [["a:1.2) b", 1.0]]),
        # the escapes \( \) \[ \] \\ give the character; a backslash escaping nothing is dropped
        ("a\\\\b", [["a\\b", 1.0]]),
        ("a\\b", [["ab", 1.0]]),
        ("a\\", [["a", 1.0]]),
        # a lone BREAK leaves empty segments around the marker
        ("BREAK", [["", 1.0], ["BREAK", -1], ["", 1.0]]),
        # inside brackets the marker's -1 is scaled too, exactly as A1111 does
        ("(a BREAK b)", [["a", 1.1], ["BREAK", -1.1], ["b", 1.1]]),
        # BREAK is case-sensitive and a whole word
        ("a break b BREAKING", [["a break b BREAKING", 1.0]]),
        # unclosed brackets apply to the rest; ":2" without ")" is text
        ("[a (b", [["a ", 0.9090909090909091], ["b", 1.0]]),
        ("((a:2) [c", [["a", 2.2], [" ", 1.1], ["c", 1.0]]),
        ("[(a:2", [["a:2", 1.0]]),
    ],
)
def test_attention_edge_cases(text, expected):
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize("text", ["(a:1.2.3)", "(a:.)"])
def test_attention_malformed_weight_is_invalid_request(text):
    with pytest.raises(InvalidRequest) as info:
        parse_prompt_attention(text)
    assert info.value.field == "prompt"


# --------------------------------------------------------------------------------------------
# get_learned_conditioning_prompt_schedules
# --------------------------------------------------------------------------------------------


def alternating(steps, texts):
    return [[step, texts[(step - 1) % len(texts)]] for step in range(1, steps + 1)]


SCHEDULE_VECTORS = [
    # A1111 doctests, steps=10
    ("test", (10,), [[10, "test"]]),
    ("a [b:3]", (10,), [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", (10,), [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", (10,), [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", (10,), [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", (10,), [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", (10,), [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", (10,), [[10, "a [unbalanced"]]),
    ("a [b:.5] c", (10,), [[5, "a  c"], [10, "a b c"]]),
    # the doctest is marked "not handling this right now"; lark 1.1.2 returns the literal
    ("a [{b|d{:.5] c", (10,), [[10, "a [{b|d{:.5] c"]]),
    ("((a][:b:c [d:3]", (10,), [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", (10,), alternating(10, ["a", "(b:1.1)"])),
    ("[fe|]male", (10,), alternating(10, ["female", "male"])),
    ("[fe|||]male", (10,), alternating(10, ["female", "male", "male", "male"])),
    ("a [b:.5] c", (10, 10), [[10, "a b c"]]),
    ("a [b:1.5] c", (10, 10), [[5, "a  c"], [10, "a b c"]]),
    # extra vectors, steps=20
    ("a [cat:dog:0.5]", (20,), [[10, "a cat"], [20, "a dog"]]),
    ("a [cat:dog:10]", (20,), [[10, "a cat"], [20, "a dog"]]),
    ("[cat:dog:0.25] photo", (20,), [[5, "cat photo"], [20, "dog photo"]]),
    ("a [b::5] c", (20,), [[5, "a b c"], [20, "a  c"]]),
    ("a [cat:dog:0]", (20,), [[20, "a dog"]]),
    ("a [cat:dog:1.0]", (20,), [[20, "a cat"]]),
    ("[a|b|c] x", (20,), alternating(20, ["a x", "b x", "c x"])),
    ("a [b:c:0.5]", (10, 20, True), [[5, "a b"], [10, "a c"]]),
    ("a [b:c:15]", (10, 20), [[5, "a b"], [20, "a c"]]),
    ("a [b:c:1.5]", (10, 20), [[10, "a b"], [20, "a c"]]),
]


@pytest.mark.parametrize(("prompt", "args", "expected"), SCHEDULE_VECTORS)
def test_schedule_vectors(prompt, args, expected):
    assert get_learned_conditioning_prompt_schedules([prompt], *args) == [expected]


LARK_VECTORS = [
    # no derivation: a stray "|", a trailing backslash, a backslash before a newline
    ("a | [b:3]", (10,), [[10, "a | [b:3]"]]),
    ("a [b:3] \\", (10,), [[10, "a [b:3] \\"]]),
    ("a [b:3] \\\nc", (10,), [[10, "a [b:3] \\\nc"]]),
    # escapes stay in the text and hide the bracket they escape
    ("\\[a:3]", (10,), [[10, "\\[a:3]"]]),
    ("a\\:b [c:2]", (10,), [[2, "a\\:b "], [10, "a\\:b c"]]),
    ("[a\\]:2]", (10,), [[2, ""], [10, "a\\]"]]),
    ("[a\\|b:2]", (10,), [[2, ""], [10, "a\\|b"]]),
    # what is not a construct is literal, while constructs after it still work
    ("[a:b:c:3]", (10,), [[10, "[a:b:c:3]"]]),
    ("[a:b:3:4]", (10,), [[10, "[a:b:3:4]"]]),
    ("[a:3x]", (10,), [[10, "[a:3x]"]]),
    ("(a:b:c) [d:2]", (10,), [[2, "(a:b:c) "], [10, "(a:b:c) d"]]),
    ("x [[a:3] y", (10,), [[3, "x [ y"], [10, "x [a y"]]),
    ("[a:[b|c]", (4,), alternating(4, ["[a:b", "[a:c"])),
    ("[]", (10,), [[10, "[]"]]),
    ("[:]", (10,), [[10, "[:]"]]),
    ("", (10,), [[10, ""]]),
    # numbers: sign, exponent, trailing dot, whitespace and newlines around them
    ("[a: +3 ]", (10,), [[3, ""], [10, "a"]]),
    ("[a:1e1]", (10,), [[10, ""]]),
    ("[a:1E0]", (10,), [[1, ""], [10, "a"]]),
    ("[a:3.]", (10,), [[10, ""]]),
    ("[a:b:-2]", (10,), [[10, "b"]]),
    ("[a:b: 2 ]", (10,), [[2, "a"], [10, "b"]]),
    ("[a:b:\n2]", (10,), [[2, "a"], [10, "b"]]),
    ("[a:b:2\n]", (10,), [[2, "a"], [10, "b"]]),
    ("[::1]", (10,), [[1, ""], [10, ""]]),
    ("[a:\u0663]", (10,), [[10, "[a:\u0663]"]]),
    # nesting, emphasis around and next to constructs
    ("[a:[b:3]:5]", (10,), [[3, "a"], [5, "a"], [10, "b"]]),
    ("[a:b:5](c:1.2)", (10,), [[5, "a(c:1.2)"], [10, "b(c:1.2)"]]),
    ("[a:b:5][c]", (10,), [[5, "a[c]"], [10, "b[c]"]]),
    ("(x)[a:b:5]", (10,), [[5, "(x)a"], [10, "(x)b"]]),
    ("([a:3]) (b:[c:3])", (10,), [[3, "() (b:)"], [10, "(a) (b:c)"]]),
    ("[a:b:2] [c:d:2]", (10,), [[2, "a c"], [10, "b d"]]),
    ("[a:b:5] and [c:d:0.5]", (10,), [[5, "a and c"], [10, "b and d"]]),
    # alternation: empty items, inside and around schedules
    ("[|a]", (3,), [[1, ""], [2, "a"], [3, ""]]),
    ("[a||b]", (4,), [[1, "a"], [2, ""], [3, "b"], [4, "a"]]),
    ("[a [b|c]:3]", (4,), [[1, ""], [2, ""], [3, ""], [4, "a c"]]),
    ("[[a|b]:[c|d]:2]", (4,), [[1, "a"], [2, "b"], [3, "c"], [4, "d"]]),
    ("[a|[b:c:2]]", (4,), [[1, "a"], [2, "b"], [3, "a"], [4, "c"]]),
    # hires, new timeline (base 10, hires 20): int counts from the end of the first pass
    ("[a:b:5]", (10, 20), [[20, "b"]]),
    ("[a:b:12]", (10, 20), [[2, "a"], [20, "b"]]),
    ("[a:b:25]", (10, 20), [[15, "a"], [20, "b"]]),
    ("[a:b:0.5]", (10, 20), [[20, "b"]]),
    ("[a:b:1.25]", (10, 20), [[5, "a"], [20, "b"]]),
    # old timeline: fraction below 1, else a step; the hires pass reuses the base steps
    ("[a:b:3]", (10, 20, True), [[3, "a"], [10, "b"]]),
    ("[a:b:0.5]", (10, None, True), [[5, "a"], [10, "b"]]),
    ("[a:b:2]", (10, None, True), [[2, "a"], [10, "b"]]),
]


@pytest.mark.parametrize(("prompt", "args", "expected"), LARK_VECTORS)
def test_schedule_matches_lark(prompt, args, expected):
    assert get_learned_conditioning_prompt_schedules([prompt], *args) == [expected]


def test_schedule_ambiguous_input_takes_the_construct():
    # lark's pick here depends on the hash seed; ours is fixed and keeps the prompt editing.
    assert get_learned_conditioning_prompt_schedules(["x[a:b:2]:"], 10) == [[[2, "xa:"], [10, "xb:"]]]


def test_schedule_keyword_and_batch_order():
    prompts = ["a [b:c:2]", "plain", "a [b:c:2]"]
    result = get_learned_conditioning_prompt_schedules(prompts, base_steps=4, hires_steps=None)
    assert result == [[[2, "a b"], [4, "a c"]], [[4, "plain"]], [[2, "a b"], [4, "a c"]]]
    # duplicates are equal but independent lists
    result[0][0][1] = "changed"
    assert result[2][0][1] == "a b"


def test_schedule_unparseable_uses_hires_steps():
    assert get_learned_conditioning_prompt_schedules(["a | b"], 10, 30) == [[[30, "a | b"]]]


def test_schedule_infinite_step_is_invalid_request():
    with pytest.raises(InvalidRequest):
        get_learned_conditioning_prompt_schedules(["[a:b:1e999]"], 10)


def test_schedule_deep_nesting_is_invalid_request():
    with pytest.raises(InvalidRequest):
        get_learned_conditioning_prompt_schedules(["[" * 5000 + "a:2" + "]" * 5000], 10)


# --------------------------------------------------------------------------------------------
# AND
# --------------------------------------------------------------------------------------------


def test_multicond_vector():
    indexes, flat = get_multicond_prompt_list(["a cat AND a dog:0.5", "x AND y :-1", "mountain:1.2 AND sky"])
    assert indexes == [[(0, 1.0), (1, 0.5)], [(2, 1.0), (3, -1.0)], [(4, 1.2), (5, 1.0)]]
    assert flat == ["a cat", " a dog", "x", " y", "mountain", " sky"]


def test_multicond_deduplicates_across_prompts():
    indexes, flat = get_multicond_prompt_list(["a AND b", "b AND a:2", "a"])
    # trailing spaces go, leading ones stay, so "a " and " a" are different sub-prompts
    assert flat == ["a", " b", "b", " a"]
    assert indexes == [[(0, 1.0), (1, 1.0)], [(2, 1.0), (3, 2.0)], [(0, 1.0)]]
    assert get_multicond_prompt_list(["x", "x"]) == ([[(0, 1.0)], [(0, 1.0)]], ["x"])


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a AND b", [("a", 1.0), (" b", 1.0)]),
        ("ANDROID and ANDY", [("ANDROID and ANDY", 1.0)]),
        ("a:1. AND b: +2", [("a", 1.0), (" b", 2.0)]),
        ("a:.5 AND b:-0.25 ", [("a", 0.5), (" b", -0.25)]),
        ("a:b", [("a:b", 1.0)]),
        ("(a:1.2)", [("(a:1.2)", 1.0)]),
        ("a: 2 3", [("a: 2 3", 1.0)]),
        ("line1\nline2:3", [("line1\nline2", 3.0)]),
        ("AND", [("", 1.0), ("", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_split_and(prompt, expected):
    assert split_and(prompt) == expected


# --------------------------------------------------------------------------------------------
# Extra-network tags
# --------------------------------------------------------------------------------------------


def test_extra_networks_are_removed_and_grouped():
    text, networks = parse_extra_networks("1girl, <lora:detail:0.8> <hypernet:agm:1.1>, <lora:style> x")
    assert text == "1girl,  ,  x"
    assert list(networks) == ["lora", "hypernet"]
    assert [p.items for p in networks["lora"]] == [("detail", "0.8"), ("style",)]
    assert networks["hypernet"][0].positional == ("agm", "1.1")


def test_extra_network_named_and_positional_arguments():
    _, networks = parse_extra_networks("<lora:name:0.5:te=0.2:a=b=c:=x>")
    params = networks["lora"][0]
    assert params.items == ("name", "0.5", "te=0.2", "a=b=c", "=x")
    assert params.positional == ("name", "0.5", "a=b=c")
    assert dict(params.named) == {"te": "0.2", "": "x"}


@pytest.mark.parametrize("prompt", ["<lora>", "<lora:>", "<lo-ra:x>", "a < b > c", "<:x>"])
def test_text_that_is_not_a_tag_is_kept(prompt):
    assert parse_extra_networks(prompt) == (prompt, {})


def test_extra_network_params_equality_and_immutability():
    a = ExtraNetworkParams.from_items(["x", "k=v"])
    b = ExtraNetworkParams.from_items(["x", "k=v"])
    assert a == b and hash(a) == hash(b)
    assert a != ExtraNetworkParams.from_items(["x"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.items = ()
    with pytest.raises(TypeError):
        a.named["k"] = "w"


def test_only_first_prompt_decides_networks():
    prompts, networks = parse_extra_networks_for_prompts(["a <lora:one:1>", "b <lora:two:1> <hypernet:h>"])
    assert prompts == ["a ", "b  "]
    assert list(networks) == ["lora"]
    assert networks["lora"][0].items == ("one", "1")
    assert parse_extra_networks_for_prompts(["plain", "<lora:x:1>"]) == (["plain", ""], {})
    assert parse_extra_networks_for_prompts([]) == ([], {})


# --------------------------------------------------------------------------------------------
# Comments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a # note\nb", "a \nb"),
        ("# header\nb", "\nb"),
        ("a\n# note\nb", "a\nb"),
        ("a\n# note", "a\n"),
        ("a #end", "a \n"),
        ("#only", "\n"),
        ("#a\n#b\nc", "\n\nc"),
        ("no comment", "no comment"),
        # a whole-line comment and the newlines on both sides of it become one newline
        ("a (b:1.2) # why\n# whole line\nc", "a (b:1.2) \nc"),
        ("a\n#x\n#y\nz", "a\n\nz"),
    ],
)
def test_strip_comments(prompt, expected):
    assert strip_comments(prompt) == expected


# --------------------------------------------------------------------------------------------
# Layering
# --------------------------------------------------------------------------------------------


def test_parser_does_not_import_torch():
    code = "import sys, backend.prompts.parser; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
