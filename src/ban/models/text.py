"""Word embeddings, the GRU question encoder, and the base class of every model that reads tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ban import kernels
from ban.models.config import BANConfig
from ban.nn import capture
from ban.nn.gru import gru_sequence
from ban.nn.shapes import expect_dtype_fits, expect_shape


class WordEmbedding(nn.Module):
    """One (num_tokens + 1) × dim table, or two concatenated (option c); the last row is padding (zero)."""

    def __init__(self, num_tokens: int, dim: int = 300, two_tables: bool = False) -> None:
        super().__init__()
        self.table = nn.Embedding(num_tokens + 1, dim, padding_idx=num_tokens)
        self.second_table = nn.Embedding(num_tokens + 1, dim, padding_idx=num_tokens) if two_tables else None

    def forward(self, tokens: Tensor, tokens_name: str = "tokens") -> Tensor:
        """tokens [B, L] int64 → [B, L, dim] (or [B, L, 2·dim] with two tables); an id outside the tables is an
        error naming ``tokens_name`` (the caller's argument)."""
        tables = [self.table] if self.second_table is None else [self.table, self.second_table]
        if capture.active():
            embedded = [capture.embedding(tokens, table.weight, table.padding_idx) for table in tables]
        else:
            try:
                embedded = [table(tokens) for table in tables]
            except IndexError:  # on the CPU (a GPU asserts on the device instead): name the id and the table
                self._check_ids(tokens, tokens_name)
                raise
        return embedded[0] if len(embedded) == 1 else torch.cat(embedded, dim=2)

    def _check_ids(self, tokens: Tensor, tokens_name: str) -> None:
        """Raise ValueError naming ``tokens_name`` and the first id of tokens [B, L] that has no row in the
        tables."""
        padding = self.table.padding_idx
        outside = ((tokens < 0) | (tokens > padding)).nonzero()
        if len(outside):
            where = outside[0].tolist()
            raise ValueError(f"{tokens_name}: id {int(tokens[tuple(where)])} at {where} is outside this model's "
                             f"vocabulary (ids 0…{padding - 1}, padding {padding}): were they encoded with another "
                             "dictionary?")

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
    """One-layer unidirectional GRU from a zero state; returns every token's state. Training on the CPU inside
    :func:`ban.kernels.enabled` (batched weight gradients), and inside :func:`ban.nn.capture.capture_safe`, the
    recurrence runs as :func:`ban.nn.gru.gru_sequence`."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(in_features, hidden, num_layers=1, batch_first=True)

    def forward(self, embedded: Tensor) -> Tensor:
        """embedded [B, L, D] → token states [B, L, H]."""
        on_kernels = kernels.active() is not None and embedded.device.type == "cpu" and torch.is_grad_enabled()
        if on_kernels or capture.active():
            return gru_sequence(self.rnn, embedded)
        states, _ = self.rnn(embedded)
        return states


class TokenEncoderModel(nn.Module):
    """What every model here shares: the word tables and the GRU over the question (or caption) tokens."""

    tokens_name = "tokens"  # the forward argument that holds the tokens, as errors name it

    def __init__(self, config: BANConfig) -> None:
        super().__init__()
        self.config = config
        self.word_embedding = WordEmbedding(config.num_tokens, config.word_dim, config.two_word_tables)
        self.question_encoder = QuestionEncoder(config.word_features, config.hidden_dim)

    def check_inputs(self, features: Tensor, boxes: Tensor | None, tokens: Tensor, box_mask: Tensor | None) -> None:
        """Raise ValueError naming the argument unless features [B, N ≥ 1, feature_dim] float of the weights' dtype
        (any but float64 under autocast), boxes [B, N, ≥4] float (or None in a model without counting), tokens
        [B, L ≥ 1] int64 or int32 (the argument :attr:`tokens_name` names) and box_mask (if given) [B, N] bool."""
        expect_shape("features", features, (None, None, self.config.feature_dim), "float")
        expect_dtype_fits("features", features, self.word_embedding.table.weight.dtype)
        batch, num_boxes = features.shape[:2]
        if num_boxes == 0:
            raise ValueError("features: no box slot (N = 0); every sample needs a real box")
        if boxes is None:
            if self.config.use_counting:
                raise ValueError("boxes: the counting module needs them (use_counting=True); None is for models "
                                 "without it")
        else:
            expect_shape("boxes", boxes, (batch, num_boxes, None), "float")
            if boxes.shape[2] < 4:
                raise ValueError(f"boxes: expected at least 4 coordinates per box (x1, y1, x2, y2), got "
                                 f"{boxes.shape[2]}")
        expect_shape(self.tokens_name, tokens, (batch, None), "index")
        if tokens.shape[1] == 0:
            raise ValueError(f"{self.tokens_name}: no token slot (L = 0); every sample needs a token")
        if box_mask is not None:
            expect_shape("box_mask", box_mask, (batch, num_boxes), "bool")

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """tokens [B, L] int64 → token states [B, L, H]."""
        return self.question_encoder(self.word_embedding(tokens, self.tokens_name))

    def token_mask(self, tokens: Tensor) -> Tensor | None:
        """[B, L] bool (True = real token) when ``config.mask_question_padding``, else None (the reference)."""
        return tokens != self.config.pad_index if self.config.mask_question_padding else None

    def load_word_embeddings(self, table: Tensor, second_table: Tensor | None = None) -> None:
        """Initialise the word tables, e.g. from GloVe: table [num_tokens, word_dim] (see WordEmbedding)."""
        self.word_embedding.load_vectors(table, second_table)


def masked_last_state(states: Tensor, token_mask: Tensor | None) -> Tensor:
    """The state after the last real token: states [B, L, H], token_mask [B, L] or None → [B, H]."""
    if token_mask is None:
        return states[:, -1]
    last = (token_mask.long().sum(dim=1) - 1).clamp(min=0)
    return states[torch.arange(states.shape[0], device=states.device), last]
