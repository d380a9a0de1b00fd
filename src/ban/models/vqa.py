"""BAN for visual question answering, as the reference code builds it: bilinear attention, residual learning of
attention over G glimpses, optional counting, and the answer classifier."""

from __future__ import annotations

from torch import Tensor, nn

from ban.models.config import BANConfig
from ban.models.outputs import VQAOutput
from ban.models.text import TokenEncoderModel
from ban.nn import BilinearAttentionMap, BilinearAttentionPooling, Classifier, CountingModule, FCStack
from ban.nn.bilinear import PackedBoxes, box_mask_from_features, real_box_rows
from ban.nn.fc import stacked_projection


class BanForVQA(TokenEncoderModel):
    """Bilinear Attention Network for VQA.

    Inputs: features [B, N, Dv] (padded boxes are all-zero rows unless ``box_mask`` is given),
    boxes [B, N, ≥4] normalised x1, y1, x2, y2 (…; None is accepted without counting), questions [B, L ≥ 1] int64
    padded at the end with ``config.pad_index``, box_mask [B, N] bool (True = real box). Every sample needs a real
    box: one without has no attention distribution and gets NaN outputs, as in the reference (data preparation
    refuses images without boxes), and NaN gradients in every shared weight even when left out of the loss: drop
    it from the batch. With ``config.mask_question_padding``, so does a question of padding only.
    NaN or inf in a sample's padded boxes (with an explicit ``box_mask``) change nothing, on either execution
    (``config.fused``), unless ``real_rows`` lists padded slots (their zero attention times NaN is NaN).
    """

    tokens_name = "questions"

    def __init__(self, config: BANConfig) -> None:
        if config.task != "vqa" or config.attention != "bilinear":
            raise ValueError("BanForVQA needs task='vqa' and attention='bilinear'")
        super().__init__(config)
        hidden, glimpses = config.hidden_dim, config.num_glimpses
        self.attention = BilinearAttentionMap(
            config.feature_dim, hidden, hidden, glimpses, config.rank_factor, config.dropout,
            config.attention_dropout,
        )
        self.pooling = nn.ModuleList(
            BilinearAttentionPooling(config.feature_dim, hidden, hidden, config.dropout) for _ in range(glimpses)
        )
        self.residual_proj = nn.ModuleList(
            FCStack([hidden, hidden], None, config.dropout) for _ in range(glimpses)
        )
        if config.use_counting:
            self.counter = CountingModule(config.num_count_objects)
            self.count_proj = nn.ModuleList(
                FCStack([config.num_count_objects + 1, hidden], "relu", 0.0) for _ in range(glimpses)
            )
        self.classifier = Classifier(hidden, 2 * hidden, config.num_answers, config.classifier_dropout)

    def forward(
        self, features: Tensor, boxes: Tensor | None, questions: Tensor, box_mask: Tensor | None = None,
        real_rows: Tensor | None = None,
    ) -> VQAOutput:
        """→ VQAOutput(logits [B, A], attention [B, G, N, L], attention_logits [B, G, N, L]).

        ``real_rows`` [R]: the flat indices of every real box, as :class:`ban.nn.bilinear.PackedBoxes` takes
        them (made on the host by :func:`ban.engine.graphs.packed_rows`, so the pass reads nothing back from the
        device); by default they are found from the box mask.
        """
        self.check_inputs(features, boxes, questions, box_mask)
        given_mask = box_mask  # its padded rows may hold anything; those of a mask found from the features are zeros
        if box_mask is None:
            box_mask = box_mask_from_features(features)
        token_mask = self.token_mask(questions)
        if real_rows is None:
            real_rows = real_box_rows(box_mask)
        real_boxes = PackedBoxes(features, real_rows)  # found and gathered once for every box projection
        states = self.encode_tokens(questions)  # [B, L, H]
        attention, logits = self.attention(features, states, box_mask, token_mask, real_boxes)
        if self.config.fused:
            states = self._glimpses_fused(features, boxes, given_mask, states, attention, logits)
        else:
            states = self._glimpses_plain(features, boxes, states, attention, logits, real_boxes)
        if token_mask is not None:
            states = states * token_mask.unsqueeze(-1).to(states.dtype)
        return VQAOutput(self.classifier(states.sum(dim=1)), attention, logits)

    def _glimpses_plain(self, features: Tensor, boxes: Tensor | None, states: Tensor, attention: Tensor,
                        logits: Tensor, real_boxes: PackedBoxes) -> Tensor:
        """Residual learning of attention, glimpse by glimpse → updated token states [B, L, H]."""
        counts = self._counts(boxes, logits) if self.config.use_counting else None
        for glimpse in range(self.config.num_glimpses):
            joint = self.pooling[glimpse](features, states, attention[:, glimpse], real_boxes)  # [B, H]
            states = self._add_glimpse(states, glimpse, joint, counts)
        return states

    def _glimpses_fused(self, features: Tensor, boxes: Tensor | None, given_mask: Tensor | None, states: Tensor,
                        attention: Tensor, logits: Tensor) -> Tensor:
        """The same function with the box projections of all glimpses computed up front in one product (of every
        box: the padded ones of a ``given_mask`` are zeroed first, so that their zero attention ignores whatever
        they held)."""
        if given_mask is not None:
            features = features.masked_fill(~given_mask.unsqueeze(-1), 0)
        boxes_hidden = stacked_projection([pooling.v_proj for pooling in self.pooling], features)  # [G, B, N, H]
        counts = self._counts(boxes, logits) if self.config.use_counting else None
        for glimpse in range(self.config.num_glimpses):
            joint = self.pooling[glimpse].pool(boxes_hidden[glimpse], states, attention[:, glimpse])  # [B, H]
            states = self._add_glimpse(states, glimpse, joint, counts)
        return states

    def _add_glimpse(self, states: Tensor, glimpse: int, joint: Tensor, counts: Tensor | None) -> Tensor:
        """Residual learning of one glimpse: states [B, L, H] + its projection of joint [B, H] (+ that of its
        count, counts [B, G, n + 1]) added to every token → [B, L, H]."""
        states = states + self.residual_proj[glimpse](joint).unsqueeze(1)
        if counts is not None:
            states = states + self.count_proj[glimpse](counts[:, glimpse]).unsqueeze(1)
        return states

    def _counts(self, boxes: Tensor, logits: Tensor) -> Tensor:
        """Every glimpse's count in one call of the counting module (each needs only its glimpse's attention
        logits, known before the glimpse loop): boxes [B, N, ≥4], logits [B, G, N, L] → [B, G, n + 1]."""
        batch, glimpses, num_boxes, _ = logits.shape
        box_scores = logits.max(dim=3).values.reshape(batch * glimpses, num_boxes)  # [B·G, N]
        all_boxes = boxes[:, None, :, :4].expand(-1, glimpses, -1, -1).reshape(batch * glimpses, num_boxes, 4)
        return self.counter(all_boxes, box_scores).reshape(batch, glimpses, self.counter.num_objects + 1)
