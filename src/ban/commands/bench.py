"""`ban bench`: throughput and memory of training and inference steps, graphed, fused, plain and straightforward
execution, fp32 and bf16."""

from __future__ import annotations

import argparse
import json

import torch

from ban.benchmark import BenchSettings, as_json, format_table, peak_memory_meaning, run_all
from ban.commands.arguments import box_count, distinct, non_negative_int, positive_int
from ban.engine.config import resolve_device
from ban.errors import ConfigError
from ban.machine import describe_machine
from ban.models import PRESETS, preset

VQA_PRESETS = [name for name in PRESETS if preset(name).task == "vqa"]  # what the benchmark's batches feed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BenchSettings()
    parser.add_argument("--preset", default=defaults.preset,
                        help=f"VQA model preset: {', '.join(VQA_PRESETS)} (default: %(default)s)")
    parser.add_argument("--hidden-dim", type=positive_int, help="hidden size H (default: the preset's)")
    parser.add_argument("--glimpses", type=positive_int, help="glimpses G (default: the preset's)")
    parser.add_argument("--feature-dim", type=positive_int, help="box-feature width Dv (default: the preset's)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="questions per step (default: 256 on a GPU, 32 on the CPU)")
    parser.add_argument("--boxes", type=box_count, default=None,
                        help="'adaptive' (10–100 per image, mean ≈ 31, padded per batch), 'bucketed' (the same "
                             "counts in batches of similar counts, as bucket_boxes=true cuts them) or a fixed count "
                             "(default: adaptive on a GPU, 36 on the CPU)")
    parser.add_argument("--question-length", type=positive_int, default=defaults.question_length,
                        help="tokens per question (default: %(default)s)")
    parser.add_argument("--num-tokens", type=positive_int, default=defaults.num_tokens,
                        help="dictionary size (default: %(default)s, VQA 2.0's)")
    parser.add_argument("--num-answers", type=positive_int, default=defaults.num_answers,
                        help="candidate answers (default: %(default)s, VQA 2.0's)")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps,
                        help="timed steps (default: %(default)s)")
    parser.add_argument("--warmup", type=non_negative_int, default=defaults.warmup,
                        help="untimed steps first (default: %(default)s)")
    parser.add_argument("--paths", nargs="+", choices=["compiled", "graphed", "fused", "plain", "straightforward"],
                        default=None,
                        help="plain: `ban train`'s default execution (real boxes packed, ban's CPU kernels for a "
                             "large CPU model, one box projection per glimpse); fused: the glimpses' box "
                             "projections in one product; graphed: plain with each step replayed as a CUDA graph "
                             "(a GPU only); compiled: graphed, with the forward pass and the clipped Adamax update "
                             "through torch.compile (minutes of compilation first; on the CPU without graphs); "
                             "straightforward: the same model executed plainly (every box slot projected, padding "
                             "included; PyTorch's operators and torch.optim.Adamax only) (default: graphed, fused, "
                             "plain and straightforward on a GPU, fused, plain and straightforward on the CPU)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                        help="default: both")
    parser.add_argument("--modes", nargs="+", choices=["train", "infer"], default=["train", "infer"],
                        help="train: forward, loss, backward, clip, Adamax; infer: the forward pass (default: both)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--host-sync", action="store_true",
                        help="read the loss's and gradient norm's finiteness on the host before each update, as "
                             "`ban train` does (on a GPU the host then waits for every step)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = resolve_device(args.device, "--device").type == "cuda"
    paths = distinct(args.paths or (["graphed", "fused", "plain", "straightforward"] if on_gpu
                                    else ["fused", "plain", "straightforward"]))
    if "graphed" in paths and not on_gpu:  # said before minutes of measuring the other paths
        raise ConfigError("--paths graphed replays CUDA graphs: it needs a GPU")
    if args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}; ban bench measures VQA models: {', '.join(VQA_PRESETS)}")
    if args.preset not in VQA_PRESETS:
        raise ConfigError(f"ban bench measures VQA models; preset {args.preset!r} is a {preset(args.preset).task} "
                          f"model (VQA presets: {', '.join(VQA_PRESETS)})")
    settings = BenchSettings(
        preset=args.preset, num_tokens=args.num_tokens, num_answers=args.num_answers,
        batch_size=args.batch_size or (256 if on_gpu else 32), boxes=args.boxes or ("adaptive" if on_gpu else "36"),
        question_length=args.question_length, steps=args.steps, warmup=args.warmup, device=args.device,
        host_sync=args.host_sync, hidden_dim=args.hidden_dim, num_glimpses=args.glimpses, feature_dim=args.feature_dim,
    )
    results = run_all(settings, paths, distinct(args.precisions), distinct(args.modes))
    if args.json:
        print(json.dumps(as_json(settings, results), indent=2))
    else:
        device = resolve_device(settings.device)
        config = settings.model_config()
        print(f"{describe_machine(device)}; preset {settings.preset} (H {config.hidden_dim}, G {config.num_glimpses}, "
              f"Dv {config.feature_dim}), batch {settings.batch_size}, "
              f"boxes {settings.boxes}, {settings.question_length} tokens"
              + (", finiteness read on the host each step" if settings.host_sync else ""))
        print(format_table(results))
        print(f"peak memory: {peak_memory_meaning(device)}")
    return 0
