"""Statistics of a generated set: sizes, questions per family and answer type, answer balance, boxes."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from ban.data.synthetic.detections import KIND_NAMES
from ban.data.synthetic.worker import ImageResult, QaRecord


class SplitCounter:
    """Running totals over the images of one split."""

    def __init__(self) -> None:
        self.images = 0
        self.boxes: list[int] = []
        self.objects: list[int] = []
        self.kinds = np.zeros(len(KIND_NAMES), dtype=np.int64)
        self.families: Counter = Counter()
        self.answer_types: Counter = Counter()
        self.entity_types: Counter = Counter()
        self.entity_flags: Counter = Counter()
        self.qa: list[QaRecord] = []

    def add(self, result: ImageResult) -> None:
        self.images += 1
        self.boxes.append(int(result.box_kinds.sum()))
        self.objects.append(result.num_objects)
        self.kinds += result.box_kinds
        self.entity_types.update(result.entity_types)
        self.entity_flags.update(result.entity_flags)
        for record in result.qa:
            self.families[record.family] += 1
            self.answer_types[record.answer_type] += 1
        self.qa.extend(result.qa)

    def summary(self) -> dict[str, object]:
        boxes, objects = np.array(self.boxes or [0]), np.array(self.objects or [0])
        out: dict[str, object] = {
            "images": self.images,
            "objects_per_image": _spread(objects),
            "boxes_per_image": _spread(boxes),
            "boxes_per_kind": {name: int(n) for name, n in zip(KIND_NAMES, self.kinds, strict=True)},
        }
        if self.qa:
            out["questions"] = len(self.qa)
            out["questions_per_family"] = dict(sorted(self.families.items()))
            out["questions_per_answer_type"] = dict(sorted(self.answer_types.items()))
        if self.entity_flags:
            out["captions"] = self.entity_flags["captions"]
            out["entities"] = sum(self.entity_types.values())
            out["entities_per_type"] = dict(sorted(self.entity_types.items()))
            out["entities_with_boxes"] = self.entity_flags["boxed"]
            out["scene_entities"] = self.entity_flags["scene"]
            out["nobndbox_entities"] = self.entity_flags["nobndbox"]
            out["entity_boxes"] = self.entity_flags["boxes"]
        return out


def _spread(values: np.ndarray) -> dict[str, float]:
    return {"mean": round(float(values.mean()), 2), "min": int(values.min()), "max": int(values.max())}


def answer_balance(records: list[QaRecord], top: int = 5) -> dict[str, dict[str, object]]:
    """Per answer type: distinct majority answers, the most frequent ones with their share (%), and the
    entropy of the answer distribution relative to the uniform one (1 = perfectly balanced)."""
    by_type: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        if record.majority is not None:
            by_type[record.answer_type][record.majority] += 1
    out = {}
    for answer_type, counter in sorted(by_type.items()):
        total = sum(counter.values())
        shares = np.array(list(counter.values()), dtype=np.float64) / total
        entropy = float(-(shares * np.log(shares)).sum())
        ordered = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
        out[answer_type] = {
            "distinct": len(counter),
            "top": [[answer, round(100.0 * count / total, 1)] for answer, count in ordered[:top]],
            "normalised_entropy": round(entropy / math.log(len(counter)), 3) if len(counter) > 1 else 0.0,
        }
    return out


def format_stats(stats: dict, seconds: float) -> str:
    """A plain-text report of `stats` (as written to stats.json) and the time generation took."""
    lines = [f"ban synth: seed {stats['seed']}, feature width {stats['feature_dim']}, box counts "
             f"{stats['box_counts']}, {seconds:.1f} s"]
    lines.append(f"{'split':<16}{'images':>8}{'questions':>11}{'boxes/img':>11}{'objects/img':>13}")
    for dataset in ("vqa", "flickr30k"):
        for split, summary in stats[dataset].items():
            questions = summary.get("questions", summary.get("captions", 0))
            lines.append(
                f"{dataset + '/' + split:<16}{summary['images']:>8}{questions:>11}"
                f"{summary['boxes_per_image']['mean']:>11}{summary['objects_per_image']['mean']:>13}"
            )
    lines.append("(flickr30k rows count captions in the questions column)")
    families: Counter = Counter()
    answer_types: Counter = Counter()
    for summary in stats["vqa"].values():
        families.update(summary.get("questions_per_family", {}))
        answer_types.update(summary.get("questions_per_answer_type", {}))
    total = max(1, sum(families.values()))
    lines.append(
        "questions per family: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in sorted(families.items()))
    )
    lines.append(
        "questions per answer type: "
        + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in sorted(answer_types.items()))
    )
    for answer_type, balance in stats["answer_balance"].items():
        top = ", ".join(f"{a} {s}%" for a, s in balance["top"])
        lines.append(
            f"answers ({answer_type}): {balance['distinct']} distinct, "
            f"entropy {balance['normalised_entropy']}; top {top}"
        )
    baselines = stats["baselines"]
    if baselines:
        lines.append(f"{'val baseline (VQA acc. %)':<30}{'overall':>9}{'yes/no':>9}{'number':>9}{'other':>9}")
        for name in ("answer_prior", "question_only"):
            row = baselines[name]
            per = row["perAnswerType"]
            cells = "".join(f"{per.get(t, float('nan')):>9.2f}" for t in ("yes/no", "number", "other"))
            lines.append(f"{name:<30}{row['overall']:>9.2f}{cells}")
    return "\n".join(lines)
