"""The authors' BAN for VQA, re-created operation by operation, and a timer for its training step.

What this is: a baseline for measuring, on the machine at hand, how much faster `ban` trains than the authors' code
(jnhwkim/ban-vqa, PAPER.md §2). :class:`AuthorsBanVQA` follows the authors' computational structure as it is:
the attention logits materialise the [B, G, N, 3H] Hadamard product before the matrix product, every glimpse
projects the boxes again, the counting module's piecewise-linear functions look their values up with ``gather``
in expanded cumulative sums, weight normalisation is the hook-based ``torch.nn.utils.weight_norm``. It is written
for timing only — do not optimise it. Its parameters carry the official state-dict names (without DataParallel's
``module.``), so an official checkpoint loads with ``strict=True``; tests/test_authors_formulation.py proves that
it computes the authors' outputs (their test vectors, tests/fixtures/official/) and what ``ban`` computes.

One timed step is the authors' training step: forward in train mode, BCE with logits × number of answers,
backward, gradient-norm clipping at 0.25, ``torch.optim.Adamax``, ``zero_grad``. The synthetic batches are the
ones `ban bench` makes (``ban.benchmark.synthetic_batches``), so the two measure the same inputs. glibc's malloc
keeps its defaults, as in the authors' runs, unless ``--keep-freed-memory`` asks for ``ban.heap``'s setting.

    python benchmarks/authors_formulation.py                      # paper-best size, batch 32, 36 boxes, fp32
    python benchmarks/authors_formulation.py --precision fp32 bf16 --json authors.json

This file is a benchmark, not part of the ``ban`` package.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ban.benchmark import (
    BenchSettings,
    peak_memory_gib,
    reset_peak_memory,
    step_flops,
    synchronize,
    synthetic_batches,
)
from ban.engine.config import TrainConfig, resolve_device
from ban.heap import keep_freed_memory
from ban.machine import describe_machine
from ban.models import BANConfig, preset

WORD_DIM = 300
COUNT_OBJECTS = 10
PIECEWISE_SEGMENTS = 16
PIECEWISE_FUNCTIONS = 16
GRAD_CLIP = 0.25


def weight_normed(module: nn.Module, name: str = "weight") -> nn.Module:
    """``module`` with the authors' weight normalisation of ``name``: one scalar gain over the whole tensor."""
    with warnings.catch_warnings():  # deprecated in favour of parametrizations, but it is what the authors ran
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module, name=name, dim=None)


class FCNet(nn.Module):
    """One layer of the authors' FCNet: [Dropout(p) if p > 0] → weight-normed Linear → [ReLU]. [..., in] → [..., out]"""

    def __init__(self, in_dim: int, out_dim: int, relu: bool, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        layers.append(weight_normed(nn.Linear(in_dim, out_dim)))
        if relu:
            layers.append(nn.ReLU())
        self.main = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


class WordEmbedding(nn.Module):
    """Option c: two (ntoken + 1) × 300 tables (padding index ntoken), concatenated. q [B, L] → [B, L, 600]"""

    def __init__(self, num_tokens: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_tokens + 1, WORD_DIM, padding_idx=num_tokens)
        self.emb_ = nn.Embedding(num_tokens + 1, WORD_DIM, padding_idx=num_tokens)
        self.dropout = nn.Dropout(0.0)

    def forward(self, questions: Tensor) -> Tensor:
        return self.dropout(torch.cat((self.emb(questions), self.emb_(questions)), 2))


class QuestionEmbedding(nn.Module):
    """One-layer GRU from a zero state, all outputs. [B, L, 600] → [B, L, H]"""

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(in_dim, hidden_dim, 1, batch_first=True)

    def forward(self, words: Tensor) -> Tensor:
        initial = words.new_zeros(1, words.size(0), self.rnn.hidden_size)
        outputs, _ = self.rnn(words, initial)
        return outputs


class AttentionBCNet(nn.Module):
    """The authors' BCNet with k = 3 and G glimpse outputs: low-rank bilinear attention logits.

    v [B, N, Dv], q [B, L, H] → logits [B, G, N, L]. ``h_mat`` [1, G, 1, 3H], ``h_bias`` [1, G, 1, 1].
    """

    def __init__(self, feature_dim: int, hidden_dim: int, glimpses: int) -> None:
        super().__init__()
        rank = 3 * hidden_dim
        self.v_net = FCNet(feature_dim, rank, relu=True, dropout=0.2)
        self.q_net = FCNet(hidden_dim, rank, relu=True, dropout=0.2)
        self.dropout = nn.Dropout(0.5)
        self.h_mat = nn.Parameter(torch.randn(1, glimpses, 1, rank))
        self.h_bias = nn.Parameter(torch.randn(1, glimpses, 1, 1))

    def forward(self, v: Tensor, q: Tensor) -> Tensor:
        v_ = self.dropout(self.v_net(v)).unsqueeze(1)  # [B, 1, N, K]
        q_ = self.q_net(q)  # [B, L, K]
        h_ = v_ * self.h_mat  # [B, G, N, K], materialised
        logits = torch.matmul(h_, q_.unsqueeze(1).transpose(2, 3))  # [B, G, N, L]
        return logits + self.h_bias


class BiAttention(nn.Module):
    """Attention maps over the flattened box × token grid of each glimpse.

    v [B, N, Dv], q [B, L, H] → (attention [B, G, N, L], logits [B, G, N, L] with −inf on all-zero boxes).
    """

    def __init__(self, feature_dim: int, hidden_dim: int, glimpses: int) -> None:
        super().__init__()
        self.glimpse = glimpses
        self.logits = weight_normed(AttentionBCNet(feature_dim, hidden_dim, glimpses), name="h_mat")

    def forward(self, v: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        boxes, tokens = v.size(1), q.size(1)
        logits = self.logits(v, q)
        padded = (v.abs().sum(2) == 0).unsqueeze(1).unsqueeze(3).expand(logits.size())
        logits.masked_fill_(padded, -float("inf"))
        attention = F.softmax(logits.view(-1, self.glimpse, boxes * tokens), 2)
        return attention.view(-1, self.glimpse, boxes, tokens), logits


class PoolingBCNet(nn.Module):
    """The authors' BCNet with k = 1 and no glimpse output, used through the attention map of one glimpse.

    v [B, N, Dv], q [B, L, H], attention [B, N, L] → joint [B, H]: Σᵢⱼ A_ij · v″_ik · q″_jk.
    """

    def __init__(self, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.v_net = FCNet(feature_dim, hidden_dim, relu=True, dropout=0.2)
        self.q_net = FCNet(hidden_dim, hidden_dim, relu=True, dropout=0.2)

    def forward(self, v: Tensor, q: Tensor, attention: Tensor) -> Tensor:
        v_ = self.v_net(v).transpose(1, 2).unsqueeze(2)  # [B, H, 1, N]
        q_ = self.q_net(q).transpose(1, 2).unsqueeze(3)  # [B, H, L, 1]
        joint = torch.matmul(torch.matmul(v_, attention.unsqueeze(1)), q_)  # [B, H, 1, 1]
        return joint.squeeze(3).squeeze(2)


class PiecewiseLin(nn.Module):
    """Monotone piecewise-linear f on [0, 1] (f(0) = 0, f(1) = 1), evaluated by look-up. x [...] → f(x) [...]"""

    def __init__(self, segments: int) -> None:
        super().__init__()
        self.segments = segments
        weight = torch.ones(segments + 1)
        weight[0] = 0
        self.weight = nn.Parameter(weight)

    def forward(self, x: Tensor) -> Tensor:
        slopes = self.weight.abs()
        slopes = (slopes / slopes.sum()).view([self.segments + 1] + [1] * x.dim())  # [n + 1, 1, ...]
        cumulative = slopes.cumsum(dim=0).expand((self.segments + 1,) + tuple(x.size()))  # [n + 1, ...]
        slopes = slopes.expand_as(cumulative)
        scaled = self.segments * x.unsqueeze(0)  # [1, ...]
        segment = scaled.long()
        left_of_segment = cumulative.gather(0, segment.clamp(max=self.segments))
        within_segment = scaled.frac() * slopes.gather(0, (segment + 1).clamp(max=self.segments))
        return (left_of_segment + within_segment).squeeze(0)


class Counter(nn.Module):
    """The counting module of Zhang et al. (2018) with the authors' computation.

    boxes [B, 4, N] (x1, y1, x2, y2 as rows), scores [B, N] (pre-sigmoid) → soft one-hot count × confidence
    [B, objects + 1].
    """

    def __init__(self, objects: int) -> None:
        super().__init__()
        self.objects = objects
        self.f = nn.ModuleList(PiecewiseLin(PIECEWISE_SEGMENTS) for _ in range(PIECEWISE_FUNCTIONS))

    def forward(self, boxes: Tensor, scores: Tensor) -> Tensor:
        boxes, scores = self.keep_highest(boxes, scores)  # [B, 4, n], [B, n]
        attention = torch.sigmoid(scores)
        relevancy = outer_product(attention)  # [B, n, n]
        distance = 1 - iou(boxes)  # [B, n, n]
        score = self.f[0](relevancy) * self.f[1](distance)
        dedup_score = self.f[3](relevancy) * self.f[4](distance)
        per_entry, per_row = self.deduplicate(dedup_score, attention)
        score = score / per_entry
        correction = self.f[0](attention * attention) / per_row  # [B, n]
        total = score.sum(dim=2).sum(dim=1, keepdim=True) + correction.sum(dim=1, keepdim=True)  # [B, 1]
        count = (total + 1e-20).sqrt()
        attention_confidence = (self.f[5](attention) - 0.5).abs()
        distance_confidence = (self.f[6](distance) - 0.5).abs()
        confidence = self.f[7](attention_confidence.mean(dim=1, keepdim=True)
                               + distance_confidence.mean(dim=2).mean(dim=1, keepdim=True))  # [B, 1]
        return self.to_one_hot(count) * confidence

    def keep_highest(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """The ``objects`` highest-scoring boxes: boxes [B, 4, N], scores [B, N] → [B, 4, n], [B, n]."""
        scores, index = scores.topk(self.objects, dim=1, sorted=False)
        index = index.unsqueeze(dim=1).expand(boxes.size(0), boxes.size(1), index.size(1))
        return boxes.gather(2, index), scores

    def deduplicate(self, dedup_score: Tensor, attention: Tensor) -> tuple[Tensor, Tensor]:
        """Similarity of box pairs: dedup_score [B, n, n], attention [B, n] → per entry [B, n, n], per row [B, n]."""
        score_difference = outer_difference(dedup_score)  # [B, n, n, n]
        attention_difference = outer_difference(attention)  # [B, n, n]
        similarity = self.f[2](1 - score_difference).prod(dim=1) * self.f[2](1 - attention_difference)
        per_row = similarity.sum(dim=2)
        return outer_product(per_row), per_row

    def to_one_hot(self, count: Tensor) -> Tensor:
        """count [B, 1] → interpolation of one-hot(⌊c⌋) and one-hot(⌊c⌋ + 1) by the fraction [B, objects + 1]."""
        count = count.clamp(min=0, max=self.objects)
        whole = count.long()
        fraction = count.frac()
        rounded_down = count.new_zeros(whole.size(0), self.objects + 1)
        rounded_up = count.new_zeros(whole.size(0), self.objects + 1)
        rounded_down.scatter_(dim=1, index=whole.clamp(max=self.objects), value=1)
        rounded_up.scatter_(dim=1, index=(whole + 1).clamp(max=self.objects), value=1)
        return (1 - fraction) * rounded_down + fraction * rounded_up


def outer_pair(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [..., n] → (x_i, x_j) each expanded to [..., n, n]."""
    size = tuple(x.size()) + (x.size()[-1],)
    return x.unsqueeze(dim=-1).expand(*size), x.unsqueeze(dim=-2).expand(*size)


def outer_product(x: Tensor) -> Tensor:
    """x [..., n] → x_i · x_j [..., n, n]."""
    row, column = outer_pair(x)
    return row * column


def outer_difference(x: Tensor) -> Tensor:
    """x [..., n] → |x_i − x_j| [..., n, n]."""
    row, column = outer_pair(x)
    return (row - column).abs()


def iou(boxes: Tensor) -> Tensor:
    """boxes [B, 4, n] → pairwise intersection over union [B, n, n] (1e-12 added to the union)."""
    size = (boxes.size(0), 2, boxes.size(2), boxes.size(2))
    top_left = torch.max(boxes[:, :2, :].unsqueeze(dim=3).expand(*size), boxes[:, :2, :].unsqueeze(dim=2).expand(*size))
    bottom_right = torch.min(boxes[:, 2:, :].unsqueeze(dim=3).expand(*size),
                             boxes[:, 2:, :].unsqueeze(dim=2).expand(*size))
    sides = (bottom_right - top_left).clamp(min=0)  # [B, 2, n, n]
    intersection = sides[:, 0, :, :] * sides[:, 1, :, :]
    area_first = box_area(boxes).unsqueeze(2).expand_as(intersection)
    area_second = box_area(boxes).unsqueeze(1).expand_as(intersection)
    return intersection / (area_first + area_second - intersection + 1e-12)


def box_area(boxes: Tensor) -> Tensor:
    """boxes [B, 4, n] → areas [B, n] (negative extents count as 0)."""
    width = (boxes[:, 2, :] - boxes[:, 0, :]).clamp(min=0)
    height = (boxes[:, 3, :] - boxes[:, 1, :]).clamp(min=0)
    return width * height


class SimpleClassifier(nn.Module):
    """WN-Linear(H → 2H) → ReLU → Dropout(.5) → WN-Linear(2H → answers). [B, H] → [B, answers]"""

    def __init__(self, hidden_dim: int, num_answers: int) -> None:
        super().__init__()
        self.main = nn.Sequential(weight_normed(nn.Linear(hidden_dim, 2 * hidden_dim)), nn.ReLU(), nn.Dropout(0.5),
                                  weight_normed(nn.Linear(2 * hidden_dim, num_answers)))

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


class AuthorsBanVQA(nn.Module):
    """The authors' BAN for VQA with option c and counting (their ``BanModel``), official parameter names.

    forward(v [B, N, Dv], b [B, N, ≥ 4], q [B, L]) → (logits [B, answers], attention [B, G, N, L]).
    """

    def __init__(self, num_tokens: int, num_answers: int, feature_dim: int, hidden_dim: int, glimpses: int) -> None:
        super().__init__()
        self.glimpse = glimpses
        self.w_emb = WordEmbedding(num_tokens)
        self.q_emb = QuestionEmbedding(2 * WORD_DIM, hidden_dim)
        self.v_att = BiAttention(feature_dim, hidden_dim, glimpses)
        self.b_net = nn.ModuleList(PoolingBCNet(feature_dim, hidden_dim) for _ in range(glimpses))
        self.q_prj = nn.ModuleList(FCNet(hidden_dim, hidden_dim, relu=False, dropout=0.2) for _ in range(glimpses))
        self.c_prj = nn.ModuleList(FCNet(COUNT_OBJECTS + 1, hidden_dim, relu=True, dropout=0.0)
                                   for _ in range(glimpses))
        self.classifier = SimpleClassifier(hidden_dim, num_answers)
        self.counter = Counter(COUNT_OBJECTS)

    @classmethod
    def from_config(cls, config: BANConfig) -> AuthorsBanVQA:
        """The authors' model at the sizes of a ``ban`` config (option c and counting are always on)."""
        return cls(config.num_tokens, config.num_answers, config.feature_dim, config.hidden_dim, config.num_glimpses)

    def forward(self, v: Tensor, b: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        q_emb = self.q_emb(self.w_emb(q))  # [B, L, H]
        boxes = b[:, :, :4].transpose(1, 2)  # [B, 4, N]
        attention, logits = self.v_att(v, q_emb)  # [B, G, N, L] each
        for g in range(self.glimpse):
            b_emb = self.b_net[g](v, q_emb, attention[:, g, :, :])  # [B, H]
            box_scores, _ = logits[:, g, :, :].max(2)  # [B, N]
            count = self.counter(boxes, box_scores)  # [B, 11]
            q_emb = self.q_prj[g](b_emb.unsqueeze(1)) + q_emb
            q_emb = q_emb + self.c_prj[g](count).unsqueeze(1)
        return self.classifier(q_emb.sum(1)), attention


def load_official(path: Path) -> AuthorsBanVQA:
    """An official VQA checkpoint (option c, counting) in :class:`AuthorsBanVQA`; sizes from the tensor shapes."""
    state = torch.load(path, weights_only=True)["model_state"]
    state = {key.removeprefix("module."): value for key, value in state.items()}
    glimpses = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("b_net."))
    hidden_dim, feature_dim = state["b_net.0.v_net.main.1.weight_v"].shape
    model = AuthorsBanVQA(num_tokens=state["w_emb.emb.weight"].shape[0] - 1,
                          num_answers=state["classifier.main.3.bias"].shape[0], feature_dim=feature_dim,
                          hidden_dim=hidden_dim, glimpses=glimpses)
    model.load_state_dict(state, strict=True)
    return model


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor],
                  precision: str) -> Tensor:
    """The authors' step on a batch of :func:`ban.benchmark.synthetic_batches`; returns the loss (detached)."""
    features = batch["features"]
    with torch.autocast(features.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits, _ = model(features, batch["boxes"], batch["questions"])
    targets = batch["targets"]
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets) * targets.shape[1]
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()


def time_steps(settings: BenchSettings, config: BANConfig, precision: str) -> dict[str, Any]:
    """Build the authors' model, run ``settings.warmup`` then ``settings.steps`` timed training steps.

    ``peak_memory_gib``: the process's peak RSS during the steps on the CPU (model and batches included), the peak
    of allocated memory on a GPU (:func:`ban.benchmark.peak_memory_gib`)."""
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    model = AuthorsBanVQA.from_config(config).to(device).train()
    optimizer = torch.optim.Adamax(model.parameters(), lr=TrainConfig().lr)
    batches = synthetic_batches(settings, config, device, count=min(settings.steps, 4))
    reset_peak_memory(device)
    step_ms = []
    for index in range(settings.warmup + settings.steps):
        started = time.perf_counter()
        training_step(model, optimizer, batches[index % len(batches)], precision)
        synchronize(device)
        step_ms.append(1000 * (time.perf_counter() - started))
    step_ms = step_ms[settings.warmup:]
    median_ms = statistics.median(step_ms)
    real_boxes = statistics.mean(int(batches[i % len(batches)]["real_boxes"]) for i in range(settings.steps))
    work = step_flops(config, settings.batch_size, int(real_boxes), settings.question_length, "train")
    return {"formulation": "authors", "precision": precision, "ms_per_step_median": median_ms,
            "ms_per_step_min": min(step_ms), "questions_per_s": settings.batch_size / median_ms * 1000,
            "tflops": work / median_ms / 1e9, "peak_memory_gib": peak_memory_gib(device), "step_ms": step_ms}


def format_rows(results: list[dict[str, Any]]) -> str:
    """A markdown table with one row per precision."""
    lines = ["| formulation | precision | median ms/step | min ms/step | questions/s | TFLOP/s "
             "| peak RSS / GPU memory (GiB) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['formulation']} | {r['precision']} | {r['ms_per_step_median']:,.1f} | "
                     f"{r['ms_per_step_min']:,.1f} | {r['questions_per_s']:,.1f} | {r['tflops']:.3f} | "
                     f"{r['peak_memory_gib']:.2f} |")
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--boxes", default="36", help="boxes per image: a count, or 'adaptive' (10-100, mean ≈ 31)")
    parser.add_argument("--question-length", type=int, default=14)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                        help="bf16 = forward under bf16 autocast")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hidden-dim", type=int, default=1280)
    parser.add_argument("--glimpses", type=int, default=8)
    parser.add_argument("--num-tokens", type=int, default=19901)
    parser.add_argument("--num-answers", type=int, default=3129)
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="use ban.heap.keep_freed_memory (off: glibc's defaults, as the authors ran)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_arguments(argv)
    torch.set_num_threads(args.threads)
    kept_freed_memory = args.keep_freed_memory and keep_freed_memory()
    settings = BenchSettings(num_tokens=args.num_tokens, num_answers=args.num_answers, batch_size=args.batch_size,
                             boxes=args.boxes, question_length=args.question_length, steps=args.steps,
                             warmup=args.warmup, device=args.device)
    config = preset("paper-best", hidden_dim=args.hidden_dim, num_glimpses=args.glimpses, num_tokens=args.num_tokens,
                    num_answers=args.num_answers, feature_dim=args.feature_dim)
    results = [time_steps(settings, config, precision) for precision in args.precision]
    machine = describe_machine(resolve_device(settings.device))
    print(f"machine: {machine}; glibc malloc {'keeps freed memory' if kept_freed_memory else 'defaults'}")
    print(format_rows(results))
    if args.json:
        report = {"machine": machine, "keep_freed_memory": kept_freed_memory, "settings": dataclasses.asdict(settings),
                  "model": config.to_dict(), "results": results}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
