"""``ban score``: the official VQA accuracy of a results file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ban.metrics.vqa import score_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", required=True, help="official questions JSON (v2_OpenEnded_mscoco_*)")
    parser.add_argument("--annotations", required=True, help="official annotations JSON (v2_mscoco_*)")
    parser.add_argument(
        "--results", required=True, help='results JSON: a list of {"question_id": int, "answer": str}'
    )
    parser.add_argument("--json", action="store_true", help="print the scores as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    scores = score_files(args.questions, args.annotations, args.results, progress=not args.json)
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        print(format_table(scores))
    return 0


def format_table(scores: dict[str, Any]) -> str:
    """A readable table of the official scores (percent): overall, per answer type, per question type."""
    rows = [("overall", scores["overall"]), ("", None), ("per answer type", None)]
    rows += [(f"  {name}", value) for name, value in scores["perAnswerType"].items()]
    rows += [("", None), ("per question type", None)]
    rows += [(f"  {name}", value) for name, value in sorted(scores["perQuestionType"].items())]
    width = max(len(name) for name, _ in rows)
    return "\n".join(name if value is None else f"{name:<{width}}  {value:6.2f}" for name, value in rows)
