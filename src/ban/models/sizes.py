"""How large a model a config describes, checked before anything is allocated."""

from __future__ import annotations

from ban.errors import ConfigError
from ban.machine import physical_memory
from ban.models.config import BANConfig


def minimum_parameters(config: BANConfig) -> int:
    """A lower bound on the parameter count of the model ``config`` describes, from matrices every such model has:
    the word tables, a box projection to at least ``hidden_dim`` (one per glimpse for VQA: BAN's pooling, the
    unitary baseline's fused glimpses) and the GRU's recurrent weights."""
    words = (config.num_tokens + 1) * config.word_features
    box_projections = config.num_glimpses if config.task == "vqa" else 1
    return words + box_projections * config.feature_dim * config.hidden_dim + 3 * config.hidden_dim ** 2


def check_fits_in_memory(config: BANConfig) -> None:
    """Refuse a config whose float32 weights alone exceed this machine's physical memory (training needs about
    four times that: weights, gradients and Adamax's two states)."""
    needed = 4 * minimum_parameters(config)
    available = physical_memory()
    if available is not None and needed > available:
        sizes = ", ".join(f"{name}={getattr(config, name)}" for name in (
            "num_tokens", "word_dim", "feature_dim", "hidden_dim", "num_glimpses"))
        raise ConfigError(f"a model with {sizes} has at least {needed / 2**30:,.1f} GiB of float32 weights, more "
                          f"than this machine's {available / 2**30:,.1f} GiB of memory: check these sizes")
