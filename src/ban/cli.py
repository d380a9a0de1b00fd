"""The `ban` command: a thin dispatcher over the library.

Each sub-command lives in its own module under `ban.commands` and exposes
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ban import __version__
from ban.errors import BanError
from ban.heap import keep_freed_memory

# sub-command name -> (module under ban.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train BAN (on the synthetic scenes when no --data is given); checkpoints, resume, DDP"),
    "evaluate": ("evaluate", "official metrics of a trained run on a split (VQA accuracy / grounding recall)"),
    "predict": ("predict", "answers of a trained run in the VQA evaluation server's results format"),
    "bench": ("bench", "throughput and memory of BAN training and inference steps (fused, plain, graphed, compiled)"),
    "score": ("score", "official VQA accuracy of a results file (overall, per answer and question type)"),
    "prepare": ("prepare", "raw dataset files (VQA 2.0, Flickr30k Entities) → a prepared dataset directory"),
    "synth": ("synth", "write synthetic scenes in the official VQA 2.0 / bottom-up TSV / Flickr30k Entities formats"),
    "visualize": ("visualize", "attention pictures of a trained run: heatmaps, attended boxes, grounded phrases"),
    "import": ("import_official", "an authors' checkpoint (jnhwkim/ban-vqa) as a run directory, for evaluate, "
               "predict and visualize"),
    "ablate": ("ablate", "unitary attention vs BAN-1/4/8 with and without counting on the synthetic scenes"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ban", description="Bilinear Attention Networks: train, evaluate and inspect BAN models."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"ban.commands.{module_name}")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # a training step re-allocates the same blocks: reuse them (ban.heap)
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader that stopped early shows up below
        return code
    except BanError as error:
        if not (error.every_process and int(os.environ.get("RANK", "0")) > 0):  # torchrun: said once, by rank 0
            print(f"ban {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C (`ban train` turns it into a checkpoint and a BanError itself)
        print(f"ban {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    except BrokenPipeError:  # stdout's reader stopped early (`ban synth --json | head -1`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
