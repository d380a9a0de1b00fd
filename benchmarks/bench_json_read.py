"""What `ban.data.jsonfile.read_json`'s checks cost on a file of VQA 2.0's size, against parsing alone.

The workload: an annotations file in the official layout with VQA 2.0 train's count of questions (443,757), ten
annotator answers each (≈ 300 MB), written once to a temporary folder; three variants of its text: plain ASCII,
every answer with a non-ASCII letter written as a ``\\u00e9`` escape, and every question also holding an emoji as
a surrogate-pair escape (valid text: the lone-surrogate check must not walk the data for it). Timed: ``json.loads``
of the decoded bytes (the parse alone) and ``read_json`` (read, decode, parse, lone-surrogate check), best of
``--repeats``.

    python benchmarks/bench_json_read.py --json benchmarks/bench_json_read.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from ban.data.jsonfile import read_json
from ban.machine import code_version, describe_machine

QUESTIONS = 443_757  # VQA 2.0 train
VARIANTS = {"ascii": ("yes", "red"), "escaped letters": ("caf\\u00e9", "r\\u00e9d"),
            "escaped letters and emoji pairs": ("caf\\u00e9 \\ud83d\\ude00", "r\\u00e9d")}


def annotations_text(questions: int, answers: tuple[str, str]) -> str:
    """An official annotations file's text (records written by hand so that escapes stay as written)."""
    first, second = answers
    records = []
    for index in range(questions):
        given = ", ".join(f'{{"answer": "{first if k % 3 else second}", "answer_confidence": "yes", '
                          f'"answer_id": {k + 1}}}' for k in range(10))
        records.append(f'{{"question_type": "what color", "multiple_choice_answer": "{first}", "answers": [{given}], '
                       f'"image_id": {index // 5}, "answer_type": "other", "question_id": {index}}}')
    return '{"info": {}, "data_type": "mscoco", "annotations": [' + ", ".join(records) + "]}"


def best_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=QUESTIONS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, answers in VARIANTS.items():
            path = Path(scratch) / "annotations.json"
            path.write_text(annotations_text(args.questions, answers), encoding="utf-8")
            data = path.read_bytes()
            parse = best_seconds(lambda: json.loads(data.decode("utf-8")), args.repeats)  # noqa: B023
            read = best_seconds(lambda: read_json(path), args.repeats)  # noqa: B023
            rows.append({"variant": name, "mib": len(data) / 2**20, "parse_s": parse, "read_json_s": read})
            print(f"| {name} | {len(data) / 2**20:,.0f} MiB | parse {parse:.2f} s | read_json {read:.2f} s | "
                  f"+{100 * (read / parse - 1):.0f} % |", flush=True)
    if args.json:
        report = {"machine": describe_machine(None), "code": code_version(), "questions": args.questions,
                  "repeats": args.repeats, "results": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
