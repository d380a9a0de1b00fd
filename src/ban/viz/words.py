"""Labels of the words in the pictures, as the model read them.

A word the dictionary does not know is read as the dictionary's last token (its unknown index, as in the
reference code); its label shows both, ``zebraish→rings``, so the picture does not claim the model read a word it
never saw.
"""

from __future__ import annotations

from collections.abc import Sequence

from ban.data.dictionary import Dictionary


def read_as(word: str, read: str) -> str:
    """``word``, or ``word→read`` when the model read it as the dictionary token ``read``."""
    return word if word == read else f"{word}→{read}"


def read_labels(words: Sequence[str], indices: Sequence[int], dictionary: Dictionary) -> list[str]:
    """One label per word: each of ``words`` (the tokenised text) with the token its index ``indices[i]`` in
    ``dictionary`` stands for, by :func:`read_as`."""
    return [read_as(word, dictionary.tokens[index]) for word, index in zip(words, indices, strict=True)]
