"""The configuration that fully describes a BAN model; a run dir's config.json rebuilds it exactly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ban.config_types import check_known, check_types
from ban.errors import ConfigError

TASKS = ("vqa", "grounding")
ATTENTIONS = ("bilinear", "unitary")


@dataclass
class BANConfig:
    """Sizes and options of a BAN model (defaults: the paper's best VQA model).

    ``num_tokens`` is the dictionary size without padding; the padding index is ``num_tokens``.
    ``two_word_tables`` is the reference's option ``c`` (a second ``word_dim``-wide table, concatenated).
    ``attention="unitary"`` builds the paper's unitary-attention baseline instead of BAN (VQA only).
    ``use_counting`` and ``fused`` apply to BAN for VQA only: set them False for unitary attention and grounding;
    ``mask_question_padding`` applies to VQA only (BAN and unitary attention): set it False for grounding.
    Fields a model has no part for are not read: ``num_answers`` and ``classifier_dropout`` by grounding (no
    classifier), ``num_count_objects`` without counting, ``attention_dropout`` by unitary attention.
    ``mask_question_padding`` keeps padded tokens out of attention and the classifier's sum; the reference
    does not mask them, so official checkpoints need it off.
    ``fused`` chooses how BAN for VQA is executed, not what it computes: the box projections of all glimpses
    in one batched product (each with its own dropout mask); ``fused=False`` (the default) projects the boxes
    glimpse by glimpse. Both count every glimpse in one call of the counting module (the counts need only the
    attention logits). On a 2-core CPU the plain loop measured faster (benchmarks/RESULTS.md); the fused form is
    meant to cut kernel launches on GPUs and awaits its GPU measurement.
    """

    task: str = "vqa"
    num_tokens: int = 19901
    num_answers: int = 3129
    feature_dim: int = 2048
    word_dim: int = 300
    two_word_tables: bool = True
    hidden_dim: int = 1280
    num_glimpses: int = 8
    rank_factor: int = 3
    attention: str = "bilinear"
    use_counting: bool = True
    num_count_objects: int = 10
    dropout: float = 0.2
    attention_dropout: float = 0.5
    classifier_dropout: float = 0.5
    mask_question_padding: bool = False
    fused: bool = False

    def __post_init__(self) -> None:
        check_types(self, "model")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.task == "grounding" and self.attention != "bilinear":
            raise ConfigError("grounding is defined for bilinear attention only")
        for option in options_without_part(self.task, self.attention):
            if getattr(self, option):
                model = "grounding" if self.task == "grounding" else "unitary attention"
                applies = "VQA" if option == "mask_question_padding" else "BAN for VQA"
                raise ConfigError(f"{option}=True applies to {applies} only, not to {model}: turn it off "
                                  f"({option}=False; on the command line --set model.{option}=false)")
        for name in ("num_tokens", "num_answers", "feature_dim", "word_dim", "hidden_dim", "num_glimpses",
                     "rank_factor", "num_count_objects"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("dropout", "attention_dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")

    @property
    def pad_index(self) -> int:
        """Index of the padding token (the last row of each word table)."""
        return self.num_tokens

    @property
    def word_features(self) -> int:
        """Width of the word-embedding output (``word_dim``, or twice that with two tables: 300 or 600 in the paper)."""
        return self.word_dim * (2 if self.two_word_tables else 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BANConfig:
        check_known(cls, values, "model")
        return cls(**values)

    @classmethod
    def from_stored(cls, values: dict[str, Any]) -> BANConfig:
        """:meth:`from_dict` of a config a run stored: options set on a model without them (``use_counting`` and
        ``fused`` on unitary attention and grounding, ``mask_question_padding`` on grounding), which earlier
        versions accepted and ignored, are read as False — the same model."""
        without_part = options_without_part(values.get("task", "vqa"), values.get("attention", "bilinear"))
        return cls.from_dict({**values, **dict.fromkeys(without_part, False)})

    def replace(self, **changes: Any) -> BANConfig:
        """A copy with ``changes`` applied (unknown keys → ConfigError)."""
        return BANConfig.from_dict({**self.to_dict(), **changes})


def options_without_part(task: object, attention: object) -> tuple[str, ...]:
    """The boolean options of :class:`BANConfig` that a model of ``task`` and ``attention`` has no part for (they
    must be False)."""
    if task == "grounding":
        return ("use_counting", "fused", "mask_question_padding")
    return ("use_counting", "fused") if attention != "bilinear" else ()
