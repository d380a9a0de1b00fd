"""ban — Bilinear Attention Networks (Kim, Jun, Zhang, NeurIPS 2018), exact to the authors' model.

>>> import ban
>>> model = ban.load_official_checkpoint("model_epoch12.pth")  # doctest: +SKIP
>>> model = ban.load_run("runs/demo").model  # a run of `ban train`  # doctest: +SKIP
"""

from ban.engine.run import LoadedRun, load_run
from ban.models import BANConfig, BanForGrounding, BanForVQA, UnitaryAttentionVQA, build_model, preset
from ban.official import (
    load_official_checkpoint,
    read_reference_answers,
    read_reference_dictionary,
    save_official_checkpoint,
    to_official_state_dict,
)

__version__ = "0.1.0"

__all__ = [
    "BANConfig",
    "BanForGrounding",
    "BanForVQA",
    "LoadedRun",
    "UnitaryAttentionVQA",
    "build_model",
    "load_official_checkpoint",
    "load_run",
    "preset",
    "read_reference_answers",
    "read_reference_dictionary",
    "save_official_checkpoint",
    "to_official_state_dict",
]
