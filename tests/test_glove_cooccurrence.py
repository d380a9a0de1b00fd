"""Option c's second word table against the reference's preparation (tfidf_from_questions), bug included."""

from __future__ import annotations

import itertools

import numpy as np

from ban.data.glove import cooccurrence_embedding


def reference_mixing(texts: list[list[int]], num_rows: int, vocabulary: int) -> np.ndarray:
    """The mixing matrix [num_rows, vocabulary] as the reference builds it: a list of ordered pairs per text
    (itertools.combinations; (a, b) if a < num_rows, then (b, a) if b < num_rows), unit values, then its tf-idf
    loop — which divides the value at list position ``col`` (not at the pair's own position) by df[col] — then
    normalisation per row, then the duplicates summed."""
    rows, cols, occurrences = [], [], np.zeros(vocabulary)
    for tokens in texts:
        for token in tokens:
            occurrences[token] += 1
        for first, second in itertools.combinations(tokens, 2):
            if first < num_rows:
                rows.append(first)
                cols.append(second)
            if second < num_rows:
                rows.append(second)
                cols.append(first)
    values = [1.0] * len(cols)
    for col in cols:
        values[col] /= occurrences[col]
    totals = np.zeros(num_rows)
    np.add.at(totals, rows, values)
    mixing = np.zeros((num_rows, vocabulary))
    np.add.at(mixing, (rows, cols), np.array(values) / totals[rows])
    return mixing


def test_the_table_is_the_one_the_reference_computes_in_effect() -> None:
    """Questions over a Zipf-distributed vocabulary (5 words outside the dictionary): ban's row-normalised counts
    are within 0.002 of the reference's matrix, whose index bug touches only its first entries; count / df — the
    weight the reference's comment names — would be far off."""
    rng = np.random.default_rng(3)
    vocabulary, num_rows = 40, 35
    frequency = 1.0 / np.arange(1, vocabulary + 1) ** 1.1
    texts = [list(rng.choice(vocabulary, size=rng.integers(4, 15), p=frequency / frequency.sum()))
             for _ in range(3000)]
    reference = reference_mixing(texts, num_rows, vocabulary)
    ours = cooccurrence_embedding(texts, num_rows, np.eye(vocabulary))  # identity vectors: the mixing itself
    assert np.abs(ours - reference).max() < 0.002

    counts = reference_mixing([], num_rows, vocabulary)
    occurrences = np.bincount(np.concatenate(texts), minlength=vocabulary)
    for tokens in texts:
        for first, second in itertools.combinations(tokens, 2):
            for row, col in ((first, second), (second, first)):
                if row < num_rows:
                    counts[row, col] += 1
    by_idf = counts / occurrences
    by_idf /= by_idf.sum(axis=1, keepdims=True)
    assert np.abs(by_idf - reference).max() > 0.1
