"""BAN models: for VQA, for grounding, the unitary-attention baseline, configs and presets."""

import os

from torch import nn

from ban.errors import ConfigError
from ban.models.config import BANConfig
from ban.models.grounding import BanForGrounding
from ban.models.outputs import GroundingOutput, VQAOutput
from ban.models.presets import PRESETS, preset
from ban.models.unitary import UnitaryAttentionVQA
from ban.models.vqa import BanForVQA


def build_model(config: BANConfig) -> nn.Module:
    """The model a config describes: BanForVQA, UnitaryAttentionVQA or BanForGrounding.

    Sizes whose weights could not fit in this machine's memory are refused before anything is allocated (see
    :func:`minimum_parameters`), instead of failing deep in the allocator or swapping for hours.
    """
    check_fits_in_memory(config)
    if config.task == "grounding":
        return BanForGrounding(config)
    if config.attention == "unitary":
        return UnitaryAttentionVQA(config)
    return BanForVQA(config)


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


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None  # -1: the system cannot tell


__all__ = [
    "PRESETS",
    "BANConfig",
    "BanForGrounding",
    "BanForVQA",
    "GroundingOutput",
    "UnitaryAttentionVQA",
    "VQAOutput",
    "build_model",
    "preset",
]
