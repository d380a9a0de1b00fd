"""BAN models: for VQA, for grounding, the unitary-attention baseline, configs and presets."""

from torch import nn

from ban.models.config import BANConfig
from ban.models.grounding import BanForGrounding
from ban.models.outputs import GroundingOutput, VQAOutput
from ban.models.presets import PRESETS, preset
from ban.models.sizes import check_fits_in_memory
from ban.models.unitary import UnitaryAttentionVQA
from ban.models.vqa import BanForVQA


def build_model(config: BANConfig) -> nn.Module:
    """The model a config describes: BanForVQA, UnitaryAttentionVQA or BanForGrounding.

    Sizes whose weights could not fit in this machine's memory are refused before anything is allocated (see
    :func:`ban.models.sizes.minimum_parameters`), instead of failing deep in the allocator or swapping for hours.
    """
    check_fits_in_memory(config)
    if config.task == "grounding":
        return BanForGrounding(config)
    if config.attention == "unitary":
        return UnitaryAttentionVQA(config)
    return BanForVQA(config)


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
