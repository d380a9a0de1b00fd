"""Tokeniser and dictionary: the reference's rules, checked on hand-worked examples."""

from __future__ import annotations

import json

import pytest

from ban.data.dictionary import Dictionary
from ban.data.tokenizer import tokenize
from ban.errors import DataError


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("What color is the cat?", ["what", "color", "is", "the", "cat"]),
        ("What's on the man's plate?", ["what", "'s", "on", "the", "man", "'s", "plate"]),
        ("Red, white, or blue?", ["red", "white", "or", "blue"]),
        ("Is it 10,000?", ["is", "it", "10000"]),
        ("Don't   stop\tnow", ["don't", "stop", "now"]),  # only 's is split off; any whitespace separates
        ("WHAT'S", ["what", "'s"]),  # lower-cased before the 's rule
        ("Is this a U.S. flag!", ["is", "this", "a", "u.s.", "flag!"]),  # other punctuation stays
        ("", []),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_build_orders_by_first_appearance() -> None:
    dictionary = Dictionary.build(["Is the dog big?", "The dog's tail, is it long?"])
    assert dictionary.tokens == ["is", "the", "dog", "big", "'s", "tail", "it", "long"]
    assert len(dictionary) == 8
    assert dictionary.index_of("dog") == 2


def test_encode_pads_at_the_end_and_maps_unknown_to_last_token() -> None:
    dictionary = Dictionary(["is", "the", "dog", "big"])
    assert dictionary.padding_index == 4
    assert dictionary.unknown_index == 3
    assert dictionary.encode("Is the cat big?", length=6) == [0, 1, 3, 3, 4, 4]  # "cat" unknown → 3


def test_encode_truncates_to_length() -> None:
    dictionary = Dictionary.build(["a b c d e f g h i j k l m n o p"])
    encoded = dictionary.encode("a b c d e f g h i j k l m n o p")
    assert encoded == list(range(14))  # default length 14, the tail is cut


def test_save_load_round_trip(tmp_path) -> None:
    dictionary = Dictionary.build(["what is it", "ünïcode wörds?"])
    path = tmp_path / "dictionary.json"
    dictionary.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == {"tokens": dictionary.tokens}
    assert Dictionary.load(path).tokens == dictionary.tokens
    assert [p.name for p in tmp_path.iterdir()] == ["dictionary.json"]  # no temporary left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [("{\"tokens\": [\"a\",", "not valid JSON: line 1"), ("{\"tokens\": [1]}", "list of strings"),
     ("{\"tokens\": [\"a\", \"b\", \"a\"]}",
      r"record entry 2: field 'tokens': token 'a' is listed twice \(also entry 0\)")],
)
def test_load_rejects_bad_files(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "dictionary.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as error:
        Dictionary.load(path)
    assert str(path) in str(error.value)
