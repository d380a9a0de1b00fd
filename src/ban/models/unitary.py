"""The unitary-attention baseline for VQA: attention over boxes from one question vector, the
attended glimpses fused with the question by low-rank bilinear pooling, then the classifier."""

from __future__ import annotations

from torch import Tensor

from ban.models.config import BANConfig
from ban.models.outputs import VQAOutput
from ban.models.text import TokenEncoderModel, masked_last_state
from ban.nn import Classifier, LowRankBilinearPooling, UnitaryAttention
from ban.nn.bilinear import box_mask_from_features


class UnitaryAttentionVQA(TokenEncoderModel):
    """Same inputs as ``BanForVQA``; ``out.attention`` is [B, G, N, 1]."""

    tokens_name = "questions"

    def __init__(self, config: BANConfig) -> None:
        if config.task != "vqa" or config.attention != "unitary":
            raise ValueError("UnitaryAttentionVQA needs task='vqa' and attention='unitary'")
        super().__init__(config)
        hidden = config.hidden_dim
        self.attention = UnitaryAttention(config.feature_dim, hidden, hidden, config.num_glimpses, config.dropout)
        self.fusion = LowRankBilinearPooling(
            hidden, config.num_glimpses * config.feature_dim, config.rank_factor * hidden, hidden, config.dropout
        )
        self.classifier = Classifier(hidden, 2 * hidden, config.num_answers, config.classifier_dropout)

    def forward(
        self, features: Tensor, boxes: Tensor | None, questions: Tensor, box_mask: Tensor | None = None
    ) -> VQAOutput:
        """→ VQAOutput(logits [B, A], attention [B, G, N, 1], attention_logits = log attention)."""
        self.check_inputs(features, boxes, questions, box_mask)
        if box_mask is None:
            box_mask = box_mask_from_features(features)
        question = masked_last_state(self.encode_tokens(questions), self.token_mask(questions))  # [B, H]
        attention = self.attention(features, question, box_mask)  # [B, G, N]
        attended = UnitaryAttention.attend(features, attention)  # [B, G·Dv]
        logits = self.classifier(self.fusion(question, attended))
        attention = attention.unsqueeze(-1)
        return VQAOutput(logits, attention, attention.log())
