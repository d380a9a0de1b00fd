"""The word dictionary: token ↔ index, encoding of questions to fixed-length index lists.

Index conventions follow the reference code, so official checkpoints line up row for row:
token index = position in ``tokens``; the padding index is ``len(tokens)`` (one past the last token, the extra
zero row of the embedding table); a word not in the dictionary maps to ``len(tokens) - 1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ban.data.atomic import write_json
from ban.data.distinct import check_listed_once
from ban.data.jsonfile import read_json
from ban.data.tokenizer import tokenize
from ban.errors import DataError

QUESTION_LENGTH = 14


class Dictionary:
    """An ordered vocabulary of question tokens.

    >>> d = Dictionary.build(["What is it?", "Is it red?"])
    >>> d.tokens
    ['what', 'is', 'it', 'red']
    >>> d.encode("is it blue", length=5)
    [1, 2, 3, 4, 4]
    """

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self.tokens: list[str] = []
        self._index: dict[str, int] = {}
        for token in tokens:
            self.add(token)

    @classmethod
    def build(cls, texts: Iterable[str]) -> Dictionary:
        """Dictionary of every token of ``texts``, in order of first appearance (as the reference)."""
        dictionary = cls()
        for text in texts:
            for token in tokenize(text):
                dictionary.add(token)
        return dictionary

    def add(self, token: str) -> int:
        """Add ``token`` if new; return its index."""
        index = self._index.get(token)
        if index is None:
            index = len(self.tokens)
            self._index[token] = index
            self.tokens.append(token)
        return index

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    @property
    def padding_index(self) -> int:
        """Index used for padding: the number of tokens (the embedding table has ``len(self) + 1`` rows)."""
        return len(self.tokens)

    @property
    def unknown_index(self) -> int:
        """Index of out-of-vocabulary words: ``len(self) - 1``, as in the reference code."""
        return len(self.tokens) - 1

    def index_of(self, token: str) -> int:
        """Index of ``token``; unknown tokens give :attr:`unknown_index`."""
        return self._index.get(token, self.unknown_index)

    def encode(self, text: str, length: int = QUESTION_LENGTH) -> list[int]:
        """Tokenise ``text`` and map it to exactly ``length`` indices: truncated, or padded at the END with
        :attr:`padding_index`."""
        indices = [self.index_of(token) for token in tokenize(text)[:length]]
        return indices + [self.padding_index] * (length - len(indices))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``{"tokens": [...]}`` atomically (temp file in the same directory, then rename)."""
        write_json(path, {"tokens": self.tokens})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Dictionary:
        """Read a dictionary written by :meth:`save`: a non-empty list of distinct strings (an empty one would
        leave unknown words no index: :attr:`unknown_index` is its last token)."""
        data = read_json(path)
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError("expected a list of strings", path=path, field="tokens")
        if not tokens:
            raise DataError("empty: a dictionary needs at least one token (its last one stands for unknown words)",
                            path=path, field="tokens")
        check_listed_once(tokens, "token", "each index names one word", path, field="tokens")
        return cls(tokens)
