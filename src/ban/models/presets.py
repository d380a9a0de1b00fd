"""Named model presets. ``preset(name, **overrides)`` gives a BANConfig."""

from __future__ import annotations

from typing import Any

from ban.errors import ConfigError
from ban.models.config import BANConfig

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's best single model: BAN-8, H 1280, GloVe + option c, counting.
    "paper-best": dict(hidden_dim=1280, num_glimpses=8, two_word_tables=True, use_counting=True),
    # The paper's validation ablations: H 1024, one GloVe table, no counting; G is the user's choice
    # (``preset("paper-ablation", num_glimpses=G)``; 4 unless given).
    "paper-ablation": dict(hidden_dim=1024, num_glimpses=4, two_word_tables=False, use_counting=False),
    # Flickr30k Entities phrase grounding: one glimpse, one word table.
    "grounding": dict(task="grounding", hidden_dim=1280, num_glimpses=1, two_word_tables=False,
                      use_counting=False),
    # A small BAN for CPU demos on the synthetic scenes (`ban train` with no data). Without dropout and counting:
    # on the ~10-20k training questions of the demo scenes, dropout kept it at the question-only baseline for
    # many epochs, and counting made each CPU step 1.6x slower (measured while writing the engine).
    "tiny": dict(hidden_dim=128, num_glimpses=2, two_word_tables=False, use_counting=False, feature_dim=256,
                 word_dim=64, dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0),
    # Its grounding counterpart, for the synthetic Flickr30k scenes on a CPU (one glimpse, as "grounding").
    "tiny-grounding": dict(task="grounding", hidden_dim=128, num_glimpses=1, two_word_tables=False,
                           use_counting=False, word_dim=64, dropout=0.0, attention_dropout=0.0,
                           classifier_dropout=0.0),
}


def preset(name: str, **overrides: Any) -> BANConfig:
    """The named preset with ``overrides`` applied (e.g. ``num_tokens``, ``num_answers``, ``feature_dim``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return BANConfig.from_dict({**PRESETS[name], **overrides})
