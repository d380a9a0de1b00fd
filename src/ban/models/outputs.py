"""Model outputs as dataclasses with named fields, registered with ``torch.export`` (a model exports whole)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.export
from torch import Tensor


@dataclass
class VQAOutput:
    """``logits`` [B, num_answers] (no sigmoid); ``attention`` [B, G, N, L], softmax over each glimpse's N·L
    grid (the unitary baseline gives [B, G, N, 1]); ``attention_logits`` the same before the softmax (−inf at
    masked places; the unitary baseline gives log ``attention``: its logits shifted by a constant per glimpse)."""

    logits: Tensor
    attention: Tensor
    attention_logits: Tensor


@dataclass
class GroundingOutput:
    """``logits`` [B, G, N, E]: a score per glimpse, box and entity; −99 at padded boxes and empty entity
    slots (as the reference)."""

    logits: Tensor


for output in (VQAOutput, GroundingOutput):
    torch.export.register_dataclass(output, serialized_type_name=f"ban.models.{output.__name__}")
