"""common.WholeArguments: whether a streamed tool call's fragments add up to one JSON value.

The oracle is the definition the translators relied on before the scan: the joined fragments
parse as JSON and the last non-blank fragment ends in `}` or `]`. The scan must answer exactly as
that parse, after every fragment, and parse at most once per call whatever the fragments are.
"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.translate import common
from service.translate.common import WholeArguments


def oracle(fragments: list[str]) -> bool:
    tail = next((f for f in reversed(fragments) if f.strip()), "")
    if not tail.rstrip().endswith(("}", "]")):
        return False
    try:
        orjson.loads("".join(fragments))
    except orjson.JSONDecodeError:
        return False
    return True


# strings with what a scanner can get wrong: quotes, backslashes, brackets, escapes, non-ASCII
tricky_text = st.text(alphabet='ab"\\{}[]:, \n\t\u00e9\u2028\U0001f600/u0', max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), tricky_text)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(tricky_text, inner, max_size=4)
    ),
    max_leaves=12,
)
space = st.text(alphabet=" \t\n\r", max_size=2)
# what may follow or replace a value: nothing, whitespace, other whitespace, garbage
tails = st.sampled_from(["", " ", "\n", "\u00a0", "}", "]", ",", "x", "{}", '"'])


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted(c % (len(text) + 1) for c in cuts)  # a repeated cut: an empty fragment
    pieces, last = [], 0
    for p in [*points, len(text)]:
        pieces.append(text[last:p])
        last = p
    return pieces


def check(fragments: list[str]) -> None:
    whole = WholeArguments()
    for n in range(len(fragments) + 1):
        assert whole(fragments[:n]) == oracle(fragments[:n]), fragments[:n]


@settings(max_examples=600, deadline=None)
@given(
    value=values,
    lead=space,
    tail=tails,
    ensure_ascii=st.booleans(),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_answers_as_the_parse_after_every_fragment(
    value: object, lead: str, tail: str, ensure_ascii: bool, cuts: list[int]
) -> None:
    text = lead + json.dumps(value, ensure_ascii=ensure_ascii) + tail
    check(split(text, cuts))


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet='{}[]"\\:,a1 \n', max_size=24), cuts=st.lists(st.integers(0, 30)))
def test_answers_as_the_parse_on_arbitrary_text(text: str, cuts: list[int]) -> None:
    check(split(text, cuts))


@pytest.mark.parametrize(
    "fragments",
    [
        ['{"a": "x\\', '"}', "}"],  # an escaped quote split from its backslash
        ['{"a": "x\\\\', '"}'],  # an escaped backslash, then the string's end
        ['{"a": "\\', "u00e9", '"}'],  # a unicode escape split
        ["  ", "\n{", "}", "  "],  # whitespace around, in fragments of its own
        ["[1, 2", "]", "]"],  # a bracket too many after the close
        ["{}", "{}"],  # two values
        ['"{}"'],  # a string that looks like an object
        ["{\\}"],  # a backslash outside a string
        ["{]"],  # brackets that do not match
        ['{"a": "x\\', "", '"}', '"}'],  # an empty fragment between a backslash and its char
    ],
)
def test_edge_cases(fragments: list[str]) -> None:
    check(fragments)


def test_parses_once_however_many_fragments_end_in_a_bracket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old test parsed the whole text at each fragment ending in `}`: quadratic for a long
    call whose fragments keep closing a nested object while another call waits."""
    parses = []
    real = common._parses
    monkeypatch.setattr(common, "_parses", lambda text: parses.append(text) or real(text))
    whole = WholeArguments()
    fragments = ['{"edits": [']
    for i in range(2_000):
        fragments.append(("," if i else "") + f'{{"line": {i}, "text": "}}"}}')
        assert not whole(fragments)
    fragments.append("]}")
    assert whole(fragments)
    assert whole(fragments)  # asked again: the answer is kept
    assert len(parses) == 1
