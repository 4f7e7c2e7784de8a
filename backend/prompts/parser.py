"""A1111 prompt syntax turned into plain data (no torch).

Covers, with A1111 v1.10.1's exact results:
- attention/emphasis `(x)`, `[x]`, `(x:w)`, escapes and `BREAK` (`parse_prompt_attention`);
- prompt editing `[from:to:when]` and alternation `[a|b]` (`get_learned_conditioning_prompt_schedules`);
- composable diffusion `AND` with `:weight` (`split_and`, `get_multicond_prompt_list`);
- extra-network tags `<name:arg:...>` (`parse_extra_networks`, `parse_extra_networks_for_prompts`);
- `#` comments (`strip_comments`).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from backend.errors import InvalidRequest

__all__ = [
    "ExtraNetworkParams",
    "get_learned_conditioning_prompt_schedules",
    "get_multicond_prompt_list",
    "parse_extra_networks",
    "parse_extra_networks_for_prompts",
    "parse_prompt_attention",
    "split_and",
    "strip_comments",
]

# --------------------------------------------------------------------------------------------
# Attention / emphasis
# --------------------------------------------------------------------------------------------

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# One lexical unit of the attention syntax. Order matters: a backslash takes the escapable
# character after it (or stands alone), and ":<number>)" wins over a plain ":".
_ATTENTION_UNIT = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\]?)
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+|:)
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[list]:
    """Split `text` into `[[segment, weight], ...]` exactly as A1111's parse_prompt_attention.

    `(x)` multiplies by 1.1, `[x]` by 1/1.1, `(x:w)` by w; unclosed brackets still apply to the
    rest of the text; unmatched closers are text; `BREAK` becomes `["BREAK", -1]`; adjacent runs
    of equal weight are merged; an empty text gives `[["", 1.0]]`.
    A malformed explicit weight such as `(x:1.2.3)` raises InvalidRequest (A1111 fails there too).
    """
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, multiplier: float) -> None:
        for segment in res[start:]:
            segment[1] *= multiplier

    for unit in _ATTENTION_UNIT.finditer(text):
        token = unit.group(0)
        if unit.group("escape") is not None:
            # A1111 keeps the escaped character and drops a backslash that escapes nothing.
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif unit.group("weight") is not None and round_open:
            scale_from(round_open.pop(), _parse_weight(unit.group("weight")))
        elif token == ")" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    # Brackets left open apply to everything after them, round ones first, as in A1111.
    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)

    if not res:
        return [["", 1.0]]

    merged = [res[0]]
    for segment in res[1:]:
        if segment[1] == merged[-1][1]:
            merged[-1][0] += segment[0]
        else:
            merged.append(segment)
    return merged


def _parse_weight(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest("prompt", f"invalid attention weight {text!r}") from None


# --------------------------------------------------------------------------------------------
# Prompt editing and alternation
# --------------------------------------------------------------------------------------------
#
# A1111 parses with a lark Earley grammar; this is an equivalent recursive-descent parser.
# Inside a bracketed construct every "[" or "(" must open a nested construct and the first
# bare "]", ")", ":" or "|" decides what the construct is, so nested parsing is deterministic.
# At the top level a "[" or "(" that cannot open a construct is literal text, and so are bare
# "]", ")" and ":". Outer constructs win over literal readings (A1111's doctest
# "a[b:[c:d:2]:1]e"). A "|" outside an alternation, or a backslash at the end of the text or
# before a newline, has no derivation at all: then the whole prompt is used literally.
# Differential fuzzing against lark 1.1.2 agrees everywhere lark is deterministic. For a few
# inputs such as "[a:b:2]:" (a construct right before a trailing bare bracket or colon) lark's
# pick between the two readings depends on PYTHONHASHSEED; there we always take the construct.

# lark's SIGNED_NUMBER: ASCII digits only, optional fraction and exponent.
_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
_WHEN = re.compile(rf"\s*({_NUMBER})\s*\]")


@dataclass(frozen=True)
class _Scheduled:
    before: tuple | None
    after: tuple
    when: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple, ...]


class _Backtrack(Exception):
    """The construct starting here does not parse; at the top level its bracket is literal."""


class _Unparseable(Exception):
    """No reading of the whole prompt exists; A1111 then uses the prompt literally."""


class _ScheduleParser:
    def __init__(self, text: str) -> None:
        self.text = text

    def parse(self) -> tuple:
        text, items, pos = self.text, [], 0
        while pos < len(text):
            char = text[pos]
            if char in "[(":
                try:
                    node, pos = self._construct(pos)
                except _Backtrack:
                    items.append(char)
                    pos += 1
                    continue
                items.extend(node)
            elif char in "]):":
                items.append(char)
                pos += 1
            elif char == "|":
                raise _Unparseable
            else:
                plain, pos = self._plain(pos)
                items.append(plain)
        return tuple(items)

    def _plain(self, pos: int) -> tuple[str, int]:
        """Text up to the next delimiter; a backslash keeps itself and the character after it."""
        text, start = self.text, pos
        while pos < len(text) and text[pos] not in "[]():|":
            if text[pos] == "\\":
                if pos + 1 >= len(text) or text[pos + 1] == "\n":
                    raise _Unparseable
                pos += 1
            pos += 1
        return text[start:pos], pos

    def _sequence(self, pos: int) -> tuple[tuple, int]:
        """Nested content: stops at the first bare ']', ')', ':' or '|'."""
        text, items = self.text, []
        while pos < len(text) and text[pos] not in "]):|":
            if text[pos] in "[(":
                node, pos = self._construct(pos)
                items.extend(node)
            else:
                plain, pos = self._plain(pos)
                items.append(plain)
        return tuple(items), pos

    def _char(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    def _construct(self, pos: int) -> tuple[tuple, int]:
        if self.text[pos] == "(":
            return self._round(pos)
        return self._square(pos)

    def _round(self, pos: int) -> tuple[tuple, int]:
        """`(x)` or `(x:y)`: emphasis is kept verbatim in the scheduled text."""
        inner, pos = self._sequence(pos + 1)
        if self._char(pos) == ")":
            return ("(", *inner, ")"), pos + 1
        if self._char(pos) == ":":
            second, pos = self._sequence(pos + 1)
            if self._char(pos) == ")":
                return ("(", *inner, ":", *second, ")"), pos + 1
        raise _Backtrack

    def _square(self, pos: int) -> tuple[tuple, int]:
        """`[x]`, `[a|b|...]`, `[to:when]` or `[from:to:when]`."""
        first, pos = self._sequence(pos + 1)
        char = self._char(pos)
        if char == "]":
            return ("[", *first, "]"), pos + 1
        if char == "|":
            options = [first]
            while self._char(pos) == "|":
                option, pos = self._sequence(pos + 1)
                options.append(option)
            if self._char(pos) == "]":
                return (_Alternate(tuple(options)),), pos + 1
        elif char == ":":
            when = _WHEN.match(self.text, pos + 1)
            if when:
                return (_Scheduled(None, first, when.group(1)),), when.end()
            second, pos = self._sequence(pos + 1)
            when = _WHEN.match(self.text, pos + 1) if self._char(pos) == ":" else None
            if when:
                return (_Scheduled(first, second, when.group(1)),), when.end()
        raise _Backtrack


def _parse_schedule_tree(prompt: str) -> tuple | None:
    """The prompt's construct tree, or None when A1111 would use it literally."""
    try:
        return _ScheduleParser(prompt).parse()
    except _Unparseable:
        return None
    except RecursionError:
        raise InvalidRequest("prompt", "brackets are nested too deeply") from None


def _walk(nodes: tuple) -> Iterator[object]:
    for node in nodes:
        yield node
        if isinstance(node, _Scheduled):
            yield from _walk(node.before or ())
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            for option in node.options:
                yield from _walk(option)


def _render(nodes: tuple, step: int, end_step: Callable[[str], int]) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Scheduled):
            chosen = (node.before or ()) if step <= end_step(node.when) else node.after
            parts.append(_render(chosen, step, end_step))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, end_step))
    return "".join(parts)


def get_learned_conditioning_prompt_schedules(
    prompts: list[str],
    base_steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[list]]:
    """For each prompt, `[[end_at_step, text], ...]`: the text to use while step <= end_at_step.

    New timeline (default): an integer `when` is a step, one containing "." a fraction of steps.
    With `hires_steps`, the schedule covers the hires pass: integer `when` counts from the end of
    the first pass and a fraction is `(when - 1) * hires_steps`. Old timeline: `when < 1` is a
    fraction, otherwise a step, and the hires pass reuses the base steps. Values are capped at
    the step count; boundaries below 1 are dropped. An alternation `[a|b]` switches every step.
    """
    if hires_steps is None or use_old_scheduling:
        steps, int_offset, float_offset = base_steps, 0, 0.0
    else:
        steps, int_offset, float_offset = hires_steps, base_steps, 1.0

    def end_step(when: str) -> int:
        value = float(when)
        if use_old_scheduling:
            value = value * steps if value < 1 else value
        elif "." in when:
            value = (value - float_offset) * steps
        else:
            value = value - int_offset
        try:
            return min(steps, int(value))
        except OverflowError:
            raise InvalidRequest("prompt", f"prompt editing step {when!r} is out of range") from None

    def schedule(prompt: str) -> list[list]:
        tree = _parse_schedule_tree(prompt)
        if tree is None:
            return [[steps, prompt]]
        boundaries = {steps}
        for node in _walk(tree):
            if isinstance(node, _Scheduled) and end_step(node.when) >= 1:
                boundaries.add(end_step(node.when))
            elif isinstance(node, _Alternate):
                boundaries.update(range(1, steps + 1))
        return [[step, _render(tree, step, end_step)] for step in sorted(boundaries)]

    cache: dict[str, list[list]] = {}
    result = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = schedule(prompt)
        result.append([list(entry) for entry in cache[prompt]])
    return result


# --------------------------------------------------------------------------------------------
# AND (composable diffusion)
# --------------------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
# A sub-prompt's optional trailing ":weight"; the text keeps its leading whitespace.
_SUBPROMPT_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt on the word `AND` into `(text, weight)` pairs; weight defaults to 1.0."""
    parts = []
    for subprompt in _AND.split(prompt):
        match = _SUBPROMPT_WEIGHT.search(subprompt)
        text, weight = match.group(1), match.group(2)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


def get_multicond_prompt_list(prompts: list[str]) -> tuple[list[list[tuple[int, float]]], list[str]]:
    """AND-split every prompt: per prompt `[(index, weight), ...]` into one deduplicated text list."""
    flat: list[str] = []
    index_of: dict[str, int] = {}
    indexes = []
    for prompt in prompts:
        row = []
        for text, weight in split_and(prompt):
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            row.append((index_of[text], weight))
        indexes.append(row)
    return indexes, flat


# --------------------------------------------------------------------------------------------
# Extra-network tags
# --------------------------------------------------------------------------------------------

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkParams:
    """The arguments of one `<name:a:b:k=v>` tag. Equality looks at `items` only, as in A1111."""

    items: tuple[str, ...]
    positional: tuple[str, ...] = field(compare=False)
    named: Mapping[str, str] = field(compare=False)

    @classmethod
    def from_items(cls, items: Sequence[str]) -> ExtraNetworkParams:
        """Build from the ':'-separated arguments; exactly one '=' makes an argument named."""
        positional, named = [], {}
        for item in items:
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        return cls(tuple(items), tuple(positional), MappingProxyType(named))


def parse_extra_networks(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    """Remove `<name:args>` tags from the prompt; return the text and the tags grouped by name."""
    found: dict[str, list[ExtraNetworkParams]] = {}

    def take(match: re.Match) -> str:
        found.setdefault(match.group(1), []).append(ExtraNetworkParams.from_items(match.group(2).split(":")))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), found


def parse_extra_networks_for_prompts(
    prompts: list[str],
) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """Strip tags from every prompt; as in A1111, only the first prompt's tags are returned."""
    stripped, first = [], None
    for prompt in prompts:
        text, networks = parse_extra_networks(prompt)
        stripped.append(text)
        if first is None:
            first = networks
    return stripped, first if first is not None else {}


# --------------------------------------------------------------------------------------------
# Comments
# --------------------------------------------------------------------------------------------

_WHOLE_LINE_COMMENT = re.compile(r"(?:\A|\n)#[^\n]*(?:\n|\Z)")
_TRAILING_COMMENT = re.compile(r"#[^\n]*(?:\n|\Z)")


def strip_comments(prompt: str) -> str:
    """Remove `#` comments as A1111's "Comments" script does.

    A comment line is replaced, with the newlines around it, by one newline; then any other
    `#...` up to and including the end of its line becomes a newline.
    """
    prompt = _WHOLE_LINE_COMMENT.sub("\n", prompt)
    return _TRAILING_COMMENT.sub("\n", prompt)
