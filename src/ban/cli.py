"""The `ban` command: a thin dispatcher over the library.

Each sub-command lives in its own module under `ban.commands` and exposes
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from ban import __version__, launch
from ban.errors import BanError
from ban.heap import keep_freed_memory

# sub-command name -> (module under ban.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train BAN (on the synthetic scenes when no --data is given); checkpoints, resume, DDP"),
    "evaluate": ("evaluate", "official metrics of a trained run on a split (VQA accuracy / grounding recall)"),
    "predict": ("predict", "answers of a trained run in the VQA evaluation server's results format"),
    "bench": ("bench", "throughput and memory of BAN training and inference steps (straightforward, plain, fused, "
                       "graphed, compiled)"),
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's, or torchrun's when another process failed), raised where the command is, so that what
    it was writing is taken back on the way out (:func:`ban.data.atomic.atomic_path`): a ``KeyboardInterrupt``, so
    that what a command does on Ctrl-C it does on SIGTERM too."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM must not break off the taking back
    raise Terminated


def _default_sigterm_in_child() -> None:
    """In a forked process (a worker of a multiprocessing pool or a data loader), SIGTERM ends the process as it
    would without ban: ending workers is their parent's business (a pool terminates its workers on closing)."""
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):  # POSIX: where processes fork
    os.register_at_fork(after_in_child=_default_sigterm_in_child)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # (imports every command's module: a second or two)
    except KeyboardInterrupt:
        print("ban: interrupted", file=sys.stderr)
        return 130
    keep_freed_memory()  # a training step re-allocates the same blocks: reuse them (ban.heap)
    said_by_main = launch.is_main_process()  # under torchrun, what every process meets is said once
    in_main_thread = threading.current_thread() is threading.main_thread()  # where a signal handler can be set
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader that stopped early shows up below
        return code
    except BanError as error:
        if said_by_main or not error.every_process:
            print(f"ban {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        if said_by_main:
            print(f"ban {args.command}: terminated", file=sys.stderr)
        return 143  # 128 + SIGTERM, as a shell reports it
    except KeyboardInterrupt:  # Ctrl-C (`ban train` turns it into a checkpoint and a BanError itself)
        if said_by_main:
            print(f"ban {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    except BrokenPipeError:  # stdout's reader stopped early (`ban synth --json | head -1`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        return 141  # 128 + SIGPIPE, as a shell reports it
    finally:
        if in_main_thread:  # None: a handler set outside Python, which cannot be put back; the default then
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    sys.exit(main())
