"""Arguments shared by the commands that load a trained run (`evaluate`, `predict`, `visualize`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ban.engine.run import LoadedRun, load_run


def add_run_arguments(parser: argparse.ArgumentParser, default_device: str = "auto") -> None:
    """``--data``, ``--checkpoint`` and ``--device``."""
    parser.add_argument("--data", type=Path, help="prepared dataset (default: the one the run was trained on; "
                        "must have the same dictionary and answers)")
    parser.add_argument("--checkpoint", choices=["last", "best"], default="last",
                        help="the weights of the last epoch (default) or of the best validation epoch")
    parser.add_argument("--device", default=default_device,
                        help=f"auto (CUDA if available), cpu, cuda, cuda:1, … (default: {default_device})")


def load_trained_run(args: argparse.Namespace) -> tuple[LoadedRun, torch.device]:
    """The run named by ``args.run_dir`` with the chosen weights and dataset, and the device to use."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    return load_run(args.run_dir, args.data, args.checkpoint), device
