"""`ban ablate`: unitary attention vs BAN-1 / BAN-4 / BAN-8, with and without counting, on the synthetic scenes.

    ban ablate                                  # the default table: 21 runs of the demo's model and data
    ban ablate --seeds 1 --glimpses 1 8         # fewer runs
    ban ablate --glimpses 1 2 --seeds 1 --epochs 1 --images 20   # a quick smoke test

Prints the markdown table and writes OUT/ablation.md and OUT/ablation.json (every run's scores, the settings
and the machine). Rerunning with the same --out continues an interrupted ablation and reuses finished runs; an
--out holding anything else is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from ban.commands.arguments import non_negative_int, positive_int
from ban.engine.ablation import AblationSettings, markdown_table, run_ablation
from ban.engine.trainer import TrainingInterrupted
from ban.errors import ConfigError

DEFAULTS = AblationSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="where the runs and the table "
                        "go: a new or empty folder, or an earlier ablation's, which is continued (default: "
                        "runs/ablation)")
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=list(DEFAULTS.seeds),
                        help="training seeds, one run per variant and seed (default: "
                             f"{' '.join(map(str, DEFAULTS.seeds))})")
    parser.add_argument("--glimpses", type=positive_int, nargs="+", default=list(DEFAULTS.glimpses),
                        help=f"BAN glimpse counts G (default: {' '.join(map(str, DEFAULTS.glimpses))})")
    parser.add_argument("--unitary-glimpses", type=positive_int, default=DEFAULTS.unitary_glimpses,
                        help=f"glimpses of the unitary-attention baseline (default: {DEFAULTS.unitary_glimpses})")
    parser.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help=f"default: {DEFAULTS.epochs}")
    parser.add_argument("--images", type=positive_int, default=DEFAULTS.num_images,
                        help=f"synthetic images, split into train/val/test-dev (default: {DEFAULTS.num_images})")
    parser.add_argument("--data-seed", type=non_negative_int, default=DEFAULTS.data_seed,
                        help=f"seed of the synthetic scenes (default: {DEFAULTS.data_seed})")
    parser.add_argument("--feature-dim", type=positive_int, default=DEFAULTS.feature_dim,
                        help=f"width of the synthetic region features (default: {DEFAULTS.feature_dim})")
    parser.add_argument("--hidden", type=positive_int, default=DEFAULTS.hidden_dim,
                        help=f"hidden size H of every model (default: {DEFAULTS.hidden_dim})")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size,
                        help=f"training batch size (default: {DEFAULTS.batch_size})")
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help=f"learning rate (default: {DEFAULTS.lr:g})")
    parser.add_argument("--device", default=DEFAULTS.device,
                        help=f"auto (CUDA if available), cpu, cuda, … (default: {DEFAULTS.device})")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=DEFAULTS.precision,
                        help=f"training precision (default: {DEFAULTS.precision}: bf16 on a CPU and on a GPU that "
                             "has it)")
    parser.add_argument("--json", action="store_true", help="print every run's scores as JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    for option, values in (("--seeds", args.seeds), ("--glimpses", args.glimpses)):
        if len(set(values)) != len(values):
            raise ConfigError(f"{option} lists a value twice: {' '.join(map(str, values))}")
    settings = AblationSettings(
        seeds=tuple(args.seeds), glimpses=tuple(args.glimpses), unitary_glimpses=args.unitary_glimpses,
        epochs=args.epochs, data_seed=args.data_seed, num_images=args.images, feature_dim=args.feature_dim,
        hidden_dim=args.hidden, batch_size=args.batch_size, lr=args.lr, device=args.device,
        precision=args.precision,
    )
    try:
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            result = run_ablation(args.out, settings)  # the runs' progress lines: on stderr when stdout is the JSON
    except TrainingInterrupted:
        print(f"ban ablate: interrupted; the finished runs and the stopped one's checkpoint are kept in {args.out}. "
              "Continue with the same `ban ablate` command.", file=sys.stderr)
        return 130
    print(json.dumps(result.to_dict(), indent=2) if args.json else markdown_table(result))
    return 0
