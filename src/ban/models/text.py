"""Word embeddings and the GRU question encoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class WordEmbedding(nn.Module):
    """One (num_tokens + 1) × dim table, or two concatenated (option c); the last row is padding (zero)."""

    def __init__(self, num_tokens: int, dim: int = 300, two_tables: bool = False) -> None:
        super().__init__()
        self.table = nn.Embedding(num_tokens + 1, dim, padding_idx=num_tokens)
        self.second_table = nn.Embedding(num_tokens + 1, dim, padding_idx=num_tokens) if two_tables else None

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, L] int64 → [B, L, dim] (or [B, L, 2·dim] with two tables)."""
        embedded = self.table(tokens)
        if self.second_table is not None:
            embedded = torch.cat((embedded, self.second_table(tokens)), dim=2)
        return embedded

    @torch.no_grad()
    def load_vectors(self, table: Tensor, second_table: Tensor | None = None) -> None:
        """Initialise the tables from pre-trained vectors, e.g. GloVe: table [num_tokens, dim]; the second
        table (option c) from ``second_table`` or, when not given, from ``table``. Padding stays zero."""
        num_tokens = self.table.num_embeddings - 1
        tables = [(self.table, table)]
        if self.second_table is not None:
            tables.append((self.second_table, table if second_table is None else second_table))
        for embedding, vectors in tables:
            if tuple(vectors.shape) != (num_tokens, embedding.embedding_dim):
                raise ValueError(
                    f"word vectors of shape {tuple(vectors.shape)} do not fit a table of "
                    f"{num_tokens} tokens × {embedding.embedding_dim}"
                )
            embedding.weight[:num_tokens] = vectors.to(embedding.weight)


class QuestionEncoder(nn.Module):
    """One-layer unidirectional GRU from a zero state; returns every token's state."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(in_features, hidden, num_layers=1, batch_first=True)

    def forward(self, embedded: Tensor) -> Tensor:
        """embedded [B, L, D] → token states [B, L, H]."""
        states, _ = self.rnn(embedded)
        return states
