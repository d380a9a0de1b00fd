"""GloVe word vectors → initial word-embedding tables.

- :func:`read_glove` streams a GloVe text file (``word v1 … vD`` per line, e.g. ``glove.6B.300d.txt``) and
  keeps only the rows of the words asked for (words missing from GloVe get zeros, as in the reference);
  :func:`report_coverage` says how many of them it found.
- :func:`cooccurrence_embedding` builds the initialisation of option ``c``'s second table: each word's row is
  the average of the GloVe rows of the words it co-occurs with in the same question, weighted by co-occurrence
  count, normalised per row so the weights sum to 1 (a row-normalised co-occurrence matrix).

That is the matrix the reference's code computed in effect. Its tf-idf step meant to divide each entry by the
other word's number of occurrences, but divides by list position instead (``vals[col] /= df[col]``): only the
first entries of its pair list, as many as there are words (≈ 20k: the pairs of its first few hundred training
questions), are divided — each by ``df[col]`` once per pair having ``col`` as second word, which leaves them ≈ 0 —
and every other entry keeps weight 1, so the row normalisation that follows turns plain counts into the mixing
weights.
"""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Iterable, Sequence
from io import BufferedReader
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ban.data.npyfile import read_npy
from ban.data.textfile import refuse_compressed
from ban.errors import DataError

_PAIR_CHUNK = 2_000_000  # co-occurrence codes gathered before they are merged into the running counts


def check_glove_file(path: str | os.PathLike[str]) -> None:
    """:class:`DataError` unless ``path`` is a regular file (checked before anything else is read)."""
    if not Path(path).is_file():
        raise DataError("GloVe file not found (or not a file)", path=path, field="glove")


def read_glove(
    path: str | os.PathLike[str], words: Sequence[str], *, progress: bool = True
) -> tuple[np.ndarray, int]:
    """GloVe vectors of ``words``: ``([len(words), D] float32, number of words found)``.

    The file is read line by line (memory: one line plus the result); a UTF-8 byte-order mark and a first line of
    two integers (word2vec's header) are skipped, and so is whitespace at the end of a line (fastText's ``.vec``
    files end lines with a space). The first line gives the width D; on every line the vector is the last D
    space-separated fields and the word is all before them, so a word holding spaces (``glove.840B.300d``'s
    ``. . .``) is read whole. A word listed twice in the file takes its last vector, as the reference's dict did. Raises
    :class:`DataError` (file, line, field) for a line with fewer than D values, or, on the lines of the words
    asked for (the only ones parsed), more than D numbers (the "word" would be the word asked for followed by
    numbers) or a value that is not a number or not finite in float32 (``nan``, ``inf``, ``1e999``), for a
    file that holds none of ``words`` (a file for another language or vocabulary: every row would be zero), and
    for a gzip-compressed file or a zip archive (``glove.6B.zip``) given as is.
    """
    path = Path(path)
    wanted = {word: index for index, word in enumerate(words)}
    vectors: np.ndarray | None = None
    found = np.zeros(len(words), dtype=bool)
    with open(path, "rb") as file, tqdm(total=path.stat().st_size, desc="reading GloVe", unit="B",
                                         unit_scale=True, disable=not progress) as bar:
        bar.update(_skip_start(file, path))
        for line_number, line in enumerate(file, start=1):
            bar.update(len(line))
            parts = line.rstrip().split(b" ")  # trailing spaces too: fastText's .vec files end lines with one
            if line_number == 1 and len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                continue  # word2vec's "count width" header (a GloVe file converted by gensim)
            if vectors is None:
                if len(parts) < 2:
                    raise DataError("expected 'word v1 … vD'", path=path, record=f"line {line_number}")
                vectors = np.zeros((len(words), len(parts) - 1), dtype=np.float32)
            if len(parts) < vectors.shape[1] + 1:
                raise DataError(f"{len(parts) - 1} values, expected {vectors.shape[1]}", path=path,
                                record=f"line {line_number}", field="vector")
            word_fields = parts[:-vectors.shape[1]]  # a word may hold spaces
            if len(word_fields) > 1 and _decoded(word_fields[0]) in wanted and all(map(_is_number, word_fields[1:])):
                raise DataError(f"{len(parts) - 1} values, expected {vectors.shape[1]}", path=path,
                                record=f"line {line_number}", field="vector")  # not a word with spaces
            parts = [b" ".join(word_fields), *parts[-vectors.shape[1]:]]
            index = wanted.get(_decoded(parts[0]))
            if index is None:
                continue
            vectors[index] = _parse_vector(parts, path, line_number)
            found[index] = True
    if vectors is None:
        raise DataError("empty GloVe file", path=path)
    if not found.any():
        raise DataError(f"none of the {len(words)} words looked up is in it (a file for another vocabulary?): "
                        "every word vector would be zero", path=path, field="glove")
    return vectors, int(found.sum())


def _skip_start(file: BufferedReader, path: Path) -> int:
    """Refuse a compressed ``file`` (:class:`DataError`); skip a UTF-8 byte-order mark at its start (as Windows
    editors write one) → the number of bytes skipped."""
    start = file.peek(4)  # a buffered file just opened reads a whole buffer: all of its first 4 bytes
    refuse_compressed(start, path, "GloVe .txt files")
    return len(file.read(len(codecs.BOM_UTF8))) if start.startswith(codecs.BOM_UTF8) else 0


def report_coverage(path: str | os.PathLike[str], found: int, words: int) -> dict[str, int]:
    """Print on stderr how many of the ``words`` looked up the GloVe file ``path`` holds (``found``, as
    :func:`read_glove` counts them); return them as a prepared dataset's manifest records them,
    ``{"found": found, "words": words}``."""
    print(f"ban: GloVe ({path}) has vectors for {found} of the {words} words looked up "
          f"({100 * found / words:.1f} %); the others' rows are zero", file=sys.stderr)
    return {"found": found, "words": words}


def _decoded(word: bytes) -> str:
    return word.decode("utf-8", errors="replace")


def _is_number(field: bytes) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _parse_vector(parts: list[bytes], path: Path, line_number: int) -> np.ndarray:
    """The values of a line split into ``[word, v1, …, vD]``: ``[D]`` float32, every one finite."""
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below by name
            vector = np.array(parts[1:], dtype=np.float32)
    except ValueError:
        raise DataError("not a list of numbers", path=path, record=f"line {line_number}", field="vector") from None
    finite = np.isfinite(vector)
    if not finite.all():
        position = int(np.argmin(finite))
        word, text = (part.decode("utf-8", errors="replace") for part in (parts[0], parts[position + 1]))
        raise DataError(f"{word!r}: value {position + 1} of {len(vector)} is {text!r}, not a finite float32 number",
                        path=path, record=f"line {line_number}", field="vector")
    return vector


def cooccurrence_embedding(
    token_lists: Iterable[Sequence[int]], num_rows: int, vectors: np.ndarray
) -> np.ndarray:
    """Initial second word table of option ``c``: ``[num_rows, D]`` float32.

    ``token_lists``: each text as indices into ``vectors`` (``[V, D]``, V ≥ ``num_rows``; indices ≥ ``num_rows``
    are extra words that may be mixed in but get no row of their own). For every text and every two positions
    a < b holding tokens s, t: the pair (s, t) is counted if s < ``num_rows`` and (t, s) if t < ``num_rows``.
    With C[s, t] those counts, row s of the result is Σ_t w[s, t] · vectors[t] with
    w[s, t] = C[s, t] / Σ_t' C[s, t']; rows without any pair are zero.
    """
    vocabulary = len(vectors)
    counter = _PairCounter(num_rows, vocabulary)
    buckets: dict[int, list[Sequence[int]]] = {}
    for tokens in token_lists:
        bucket = buckets.setdefault(len(tokens), [])
        bucket.append(tokens)
        if len(bucket) * len(tokens) ** 2 >= _PAIR_CHUNK:
            counter.add(np.array(bucket, dtype=np.int64))
            bucket.clear()
    for length, bucket in buckets.items():
        if bucket and length:
            counter.add(np.array(bucket, dtype=np.int64))
    codes, counts = counter.result()
    rows, cols = np.divmod(codes, vocabulary)
    weights = counts.astype(np.float64)
    totals = np.bincount(rows, weights=weights, minlength=num_rows)
    nonzero = totals > 0
    weights /= np.where(nonzero, totals, 1.0)[rows]
    # the codes are sorted and unique, so (rows, cols) already are coalesced COO indices of a [num_rows, V] matrix
    indices = torch.from_numpy(np.stack([rows, cols]))
    mixing = torch.sparse_coo_tensor(indices, torch.from_numpy(weights), size=(num_rows, vocabulary),
                                     is_coalesced=True, check_invariants=True)
    return (mixing @ torch.from_numpy(np.asarray(vectors, dtype=np.float64))).numpy().astype(np.float32)


class _PairCounter:
    """Counts ordered token pairs (row token < ``num_rows``), texts of equal length at a time (vectorised),
    merging into sorted unique pair codes ``row * vocabulary + col``."""

    def __init__(self, num_rows: int, vocabulary: int) -> None:
        self.num_rows, self.vocabulary = num_rows, vocabulary
        self.codes = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_size = 0

    def add(self, texts: np.ndarray) -> None:
        """Count the texts ``[n, L]`` (token indices, all of length L ≥ 1)."""
        first, second = np.triu_indices(texts.shape[1], k=1)
        s, t = texts[:, first].ravel(), texts[:, second].ravel()
        rows, cols = np.concatenate([s, t]), np.concatenate([t, s])
        keep = rows < self.num_rows
        self.pending.append(np.unique(rows[keep] * self.vocabulary + cols[keep], return_counts=True))
        self.pending_size += len(self.pending[-1][0])
        if self.pending_size >= max(len(self.codes), _PAIR_CHUNK):  # geometric merging: O(n log n) overall
            self._merge()

    def _merge(self) -> None:
        if not self.pending:
            return
        merged, inverse = np.unique(np.concatenate([self.codes] + [c for c, _ in self.pending]),
                                    return_inverse=True)
        weights = np.concatenate([self.counts] + [n for _, n in self.pending])
        self.codes = merged
        self.counts = np.bincount(inverse, weights=weights, minlength=len(merged)).astype(np.int64)
        self.pending, self.pending_size = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pair codes, pair counts)``."""
        self._merge()
        return self.codes, self.counts


def load_word_vectors(path: Path, tokens: list[str]) -> np.ndarray | None:
    """A prepared dataset's word-vector table (``glove.npy``, ``glove_cooccurrence.npy``) in ``path`` as float32
    ``[len(tokens), D]``, None if there is no such file; a :class:`DataError` naming it when it is not a readable
    ``.npy`` of finite floats with one row per token."""
    if not path.is_file():
        return None
    table = read_npy(path, mmap=True, advice=": prepare the dataset again")
    if table.ndim != 2 or table.dtype.kind != "f":
        raise DataError(f"{table.dtype} array of shape {list(table.shape)}, expected floats [tokens, D]", path=path)
    if len(table) != len(tokens):
        raise DataError(f"{len(table)} rows, but dictionary.json has {len(tokens)} tokens: prepare the dataset "
                        "again", path=path)
    table = np.array(table, dtype=np.float32)
    finite = np.isfinite(table).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise DataError("NaN or infinite values", path=path, record=f"row {row} (token {tokens[row]!r})")
    return table
