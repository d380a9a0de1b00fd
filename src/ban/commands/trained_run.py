"""Arguments shared by the commands that load a trained run (`evaluate`, `predict`, `visualize`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ban.commands.arguments import non_negative_int, positive_int
from ban.engine.precision import resolve_precision
from ban.engine.run import LoadedRun, load_run


def add_run_arguments(parser: argparse.ArgumentParser, default_device: str = "auto", shared: bool = True) -> None:
    """``--data``, ``--checkpoint`` and ``--device`` (``shared``: of a command whose processes share the work under
    torchrun)."""
    parser.add_argument("--data", type=Path, help="prepared dataset (default: the one the run was trained on; "
                        "must have the same dictionary and answers)")
    parser.add_argument("--checkpoint", choices=["last", "best"], default="last",
                        help="the weights of the last epoch (default) or of the best validation epoch")
    under_torchrun = "; under torchrun auto or cuda: each process takes the GPU of its local rank" if shared else ""
    parser.add_argument("--device", default=default_device,
                        help=f"auto (CUDA if available), cpu, cuda, cuda:1, … "
                             f"(default: {default_device}{under_torchrun})")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision`` of the forward passes (`evaluate`, `predict`)."""
    parser.add_argument("--precision", choices=["run", "fp32", "bf16"], default="run",
                        help="run: the run's training precision, as its validation during training used (default); "
                             "fp32: float32 logits, as the reference computes the metric (bf16 logits can tie or "
                             "swap near-ties)")


def forward_precision(args: argparse.Namespace, loaded: LoadedRun, device: torch.device) -> str:
    """The precision ``--precision`` asks for on ``device`` ("bf16" or "fp32")."""
    return resolve_precision(loaded.config.train.precision if args.precision == "run" else args.precision, device)


def add_batch_size_argument(parser: argparse.ArgumentParser) -> None:
    """``--batch-size`` of the forward passes (`evaluate`, `predict`)."""
    parser.add_argument("--batch-size", type=positive_int, default=512,
                        help="samples (VQA questions, grounding captions) per forward pass (default: 512)")


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """``--workers`` loading the batches (`evaluate`, `predict`)."""
    parser.add_argument("--workers", type=non_negative_int, metavar="N",
                        help="data-loader processes (default: the run's num_workers setting; 0: load in this one)")


def loader_workers(args: argparse.Namespace, loaded: LoadedRun) -> int:
    """The data-loader processes ``--workers`` asks for (by default the run's ``num_workers`` setting)."""
    return loaded.config.train.num_workers if args.workers is None else args.workers


def load_trained_run(args: argparse.Namespace) -> LoadedRun:
    """The run named by ``args.run_dir`` with the weights of ``--checkpoint`` and the dataset of ``--data``."""
    return load_run(args.run_dir, args.data, args.checkpoint)
