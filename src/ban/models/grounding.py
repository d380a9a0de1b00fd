"""BAN for phrase grounding on Flickr30k Entities (as the reference code builds it): token states gathered at each
entity's position, one bilinear attention map over boxes × entities, no classifier."""

from __future__ import annotations

from torch import Tensor

from ban.models.config import BANConfig
from ban.models.outputs import GroundingOutput
from ban.models.text import TokenEncoderModel
from ban.nn import BilinearAttentionMap
from ban.nn.bilinear import box_mask_from_features
from ban.nn.shapes import expect_shape

MASKED_LOGIT = -99.0  # the reference marks padded boxes and empty entity slots with −99, not −inf


def default_entity_mask(entity_positions: Tensor) -> Tensor:
    """entity_positions [B, E] (0 = empty slot, except slot 0 which is always kept) → mask [B, E] bool."""
    mask = entity_positions != 0
    mask[:, 0] = True
    return mask


class BanForGrounding(TokenEncoderModel):
    """Inputs: features [B, N, Dv], boxes [B, N, ≥4] or None (unused by the model; kept for a uniform interface),
    tokens [B, L] int64 padded with ``config.pad_index``, entity_positions [B, E] int64, E ≥ 1 (the token index
    in [0, L) of each phrase's last word; not checked here, as that would wait for the device:
    :class:`~ban.data.flickr30k.GroundingDataset` checks its data once at load), box_mask [B, N] bool,
    entity_mask [B, E] bool (True = real entity)."""

    def __init__(self, config: BANConfig) -> None:
        if config.task != "grounding":
            raise ValueError("BanForGrounding needs task='grounding'")
        super().__init__(config)
        hidden = config.hidden_dim
        self.attention = BilinearAttentionMap(
            config.feature_dim, hidden, hidden, config.num_glimpses, config.rank_factor, config.dropout,
            config.attention_dropout,
        )

    def forward(
        self,
        features: Tensor,
        boxes: Tensor | None,
        tokens: Tensor,
        entity_positions: Tensor,
        box_mask: Tensor | None = None,
        entity_mask: Tensor | None = None,
        real_rows: Tensor | None = None,
    ) -> GroundingOutput:
        """→ GroundingOutput(logits [B, G, N, E]). ``real_rows`` [R]: the flat indices of every real box (as
        :class:`ban.models.BanForVQA` takes them); by default they are found from the box mask."""
        self.check_inputs(features, boxes, tokens, box_mask)
        expect_shape("entity_positions", entity_positions, (features.shape[0], None), "int64")
        if entity_positions.shape[1] == 0:
            raise ValueError("entity_positions: no entity slot (E = 0); a caption needs at least one")
        if entity_mask is not None:
            expect_shape("entity_mask", entity_mask, tuple(entity_positions.shape), "bool")
        if box_mask is None:
            box_mask = box_mask_from_features(features)
        if entity_mask is None:
            entity_mask = default_entity_mask(entity_positions)
        states = self.encode_tokens(tokens)  # [B, L, H]
        index = entity_positions.unsqueeze(-1).expand(-1, -1, states.shape[-1])
        entity_states = states.gather(1, index)  # [B, E, H]
        logits = self.attention.logits(features, entity_states, box_mask, entity_mask, mask_value=MASKED_LOGIT,
                                       real_rows=real_rows)
        return GroundingOutput(logits)
