"""Ablations on the synthetic scenes in the shape of the paper's tables: unitary attention against BAN-1 / BAN-4 /
BAN-8, each BAN with and without counting, every variant trained with each seed and scored on val (official VQA
accuracy, overall and per answer type).

Each (variant, seed) is an ordinary run dir under ``OUT/runs/`` trained by :func:`ban.engine.trainer.train`; an
interrupted ablation continues where it stopped (finished runs are not retrained, a half-trained one resumes
from its checkpoint). The results go to ``OUT/ablation.json`` (every run) and ``OUT/ablation.md`` (the table:
mean ± standard deviation over the seeds). An ``OUT`` holding anything else is refused (:func:`check_output`).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ban.data.atomic import make_directory, write_file, write_json
from ban.engine.config import SYNTHETIC_TRAINING, TrainConfig
from ban.engine.run import CHECKPOINT_FILE, CONFIG_FILE, RunConfig, fingerprint, start_run
from ban.engine.synthetic import FEATURE_DIM, NUM_IMAGES, SEED, synthetic_dataset
from ban.engine.tasks import make_task
from ban.engine.trainer import train
from ban.errors import DataError
from ban.machine import describe_machine
from ban.models import BANConfig, build_model, preset
from ban.models.presets import PRESETS

ANSWER_TYPES = ("yes/no", "number", "other")
RUNS = "runs"
RESULTS_JSON = "ablation.json"
RESULTS_TABLE = "ablation.md"


@dataclass(frozen=True)
class Variant:
    """One row of the table: the attention kind, its glimpses and whether counting is on."""

    attention: str
    num_glimpses: int
    use_counting: bool

    @property
    def name(self) -> str:
        """``unitary-g2``, ``ban-4``, ``ban-4-counting``: the run dir's name."""
        if self.attention == "unitary":
            return f"unitary-g{self.num_glimpses}"
        return f"ban-{self.num_glimpses}" + ("-counting" if self.use_counting else "")

    @property
    def label(self) -> str:
        """The table's model column: ``unitary attention (G=2)``, ``BAN-4``."""
        if self.attention == "unitary":
            return f"unitary attention (G={self.num_glimpses})"
        return f"BAN-{self.num_glimpses}"


def variants(glimpses: Sequence[int], unitary_glimpses: int) -> list[Variant]:
    """Unitary attention (no counting: the counting module plugs into BAN's glimpses), then for each G of
    ``glimpses`` BAN-G without and with counting."""
    rows = [Variant("unitary", unitary_glimpses, False)]
    for count in glimpses:
        rows += [Variant("bilinear", count, False), Variant("bilinear", count, True)]
    return rows


@dataclass(frozen=True)
class AblationSettings:
    """Sizes of an ablation. The defaults are the run `ban train` makes with no data (the cached synthetic scenes,
    the ``tiny`` preset, the synthetic training recipe); only the attention, glimpses and counting vary."""

    seeds: tuple[int, ...] = (1, 2, 3)
    glimpses: tuple[int, ...] = (1, 4, 8)
    unitary_glimpses: int = 2
    epochs: int = SYNTHETIC_TRAINING["epochs"]
    data_seed: int = SEED
    num_images: int = NUM_IMAGES
    feature_dim: int = FEATURE_DIM
    hidden_dim: int = PRESETS["tiny"]["hidden_dim"]
    word_dim: int = PRESETS["tiny"]["word_dim"]
    batch_size: int = SYNTHETIC_TRAINING["batch_size"]
    lr: float = SYNTHETIC_TRAINING["lr"]
    device: str = "auto"
    precision: str = "auto"

    def model(self, variant: Variant, sizes: dict[str, int]) -> BANConfig:
        """The model config of ``variant`` on data of ``sizes`` (tokens, answers, feature width)."""
        return preset("tiny", **sizes, hidden_dim=self.hidden_dim, word_dim=self.word_dim,
                      attention=variant.attention, num_glimpses=variant.num_glimpses,
                      use_counting=variant.use_counting)

    def training(self, seed: int) -> TrainConfig:
        """The training config of one run: the synthetic recipe (constant learning rate) with these sizes."""
        return TrainConfig(**{**SYNTHETIC_TRAINING, "lr": self.lr, "batch_size": self.batch_size,
                              "epochs": self.epochs}, seed=seed, device=self.device, precision=self.precision,
                           eval_batch_size=256)


@dataclass
class RunResult:
    """The val scores of one (variant, seed) run, in %; ``seconds`` is its training time."""

    variant: str
    seed: int
    overall: float
    per_answer_type: dict[str, float]
    parameters: int
    seconds: float
    run_dir: str


@dataclass
class AblationResult:
    """Every run and how they were made."""

    settings: AblationSettings
    runs: list[RunResult] = field(default_factory=list)
    machine: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"settings": dataclasses.asdict(self.settings), "machine": self.machine, "seconds": self.seconds,
                "runs": [dataclasses.asdict(run) for run in self.runs], "table": summary_rows(self)}


def train_variant(out: Path, data_dir: Path, settings: AblationSettings, variant: Variant, seed: int) -> RunResult:
    """Train (or finish, or reuse) the run of ``variant`` with ``seed`` in ``out/runs/``; its val scores."""
    task = make_task("vqa", data_dir)
    model = settings.model(variant, task.model_sizes())
    run = RunConfig("vqa", str(data_dir), model, settings.training(seed), fingerprint(data_dir))
    run_dir = out / RUNS / f"{variant.name}-seed{seed}"
    start_run(run_dir, run, resume=(run_dir / CONFIG_FILE).is_file())  # an existing run must have this config
    history = train(run_dir, run, task, resume=(run_dir / CHECKPOINT_FILE).is_file())
    scores = history[-1]["val"]
    parameters = sum(p.numel() for p in build_model(model).parameters())
    return RunResult(variant.name, seed, float(scores["overall"]),
                     {kind: float(scores["perAnswerType"].get(kind, float("nan"))) for kind in ANSWER_TYPES},
                     parameters, sum(record["seconds"] for record in history), str(run_dir))


def run_ablation(out: str | os.PathLike[str], settings: AblationSettings,
                 data_root: Path | None = None) -> AblationResult:
    """Train and score every variant with every seed; write ``out/ablation.json`` and ``out/ablation.md``.

    ``data_root`` is where the synthetic scenes are generated (default: the `ban` cache).
    """
    out = Path(out)
    check_output(out)
    make_directory(out)
    began = time.perf_counter()
    data_dir = synthetic_dataset(settings.data_seed, settings.num_images, settings.feature_dim, root=data_root)
    result = AblationResult(settings, machine=describe_machine())
    plan = [(variant, seed) for variant in variants(settings.glimpses, settings.unitary_glimpses)
            for seed in settings.seeds]
    for variant, seed in tqdm(plan, desc="ablation", unit="run"):
        result.runs.append(train_variant(out, data_dir, settings, variant, seed))
    result.seconds = time.perf_counter() - began
    write_json(out / RESULTS_JSON, result.to_dict())
    table = markdown_table(result)
    write_file(out / RESULTS_TABLE, table)
    return result


def check_output(out: Path) -> None:
    """Refuse an ``out`` that holds anything but an earlier ablation (its runs, ablation.json and ablation.md;
    hidden entries, e.g. a killed write's temporaries, aside): the runs and the tables would go among it."""
    if not out.is_dir():
        return
    other = sorted(entry.name for entry in out.iterdir()
                   if entry.name not in (RUNS, RESULTS_JSON, RESULTS_TABLE) and not entry.name.startswith("."))
    if other:
        shown = ", ".join(other[:3]) + (", …" if len(other) > 3 else "")
        raise DataError(f"--out holds {shown}, which no ablation writes: give a new or empty folder, or an earlier "
                        "ablation's to continue it", path=out)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary_rows(result: AblationResult) -> list[dict[str, Any]]:
    """One row per variant, in plan order: label, counting, parameters, and (mean, std) of each score."""
    rows = []
    for variant in variants(result.settings.glimpses, result.settings.unitary_glimpses):
        runs = [run for run in result.runs if run.variant == variant.name]
        if not runs:
            continue
        row: dict[str, Any] = {"variant": variant.name, "model": variant.label,
                               "counting": variant.use_counting if variant.attention == "bilinear" else None,
                               "parameters": runs[0].parameters, "seeds": [run.seed for run in runs],
                               "overall": _mean_std([run.overall for run in runs])}
        for kind in ANSWER_TYPES:
            row[kind] = _mean_std([run.per_answer_type[kind] for run in runs])
        rows.append(row)
    return rows


def markdown_table(result: AblationResult) -> str:
    """The table (mean ± std over the seeds, VQA accuracy in % on val) with a line saying how it was made."""
    settings = result.settings
    several = len(settings.seeds) > 1
    lines = ["| model | counting | parameters | overall | yes/no | number | other |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in summary_rows(result):
        counting = "–" if row["counting"] is None else ("yes" if row["counting"] else "no")
        cells = [f"{mean:.2f} ± {std:.2f}" if several else f"{mean:.2f}"
                 for mean, std in (row[k] for k in ("overall", *ANSWER_TYPES))]
        lines.append(f"| {row['model']} | {counting} | {row['parameters']:,} | " + " | ".join(cells) + " |")
    lines.append("")
    seeds = ", ".join(str(s) for s in settings.seeds)
    over = f"mean ± std over seeds {seeds}" if several else f"seed {seeds}"
    epochs = f"{settings.epochs} epoch{'s' if settings.epochs != 1 else ''}"
    lines.append(f"VQA accuracy (%) on the synthetic val split, {over}; synthetic scenes seed {settings.data_seed}, "
                 f"{settings.num_images} images, {settings.feature_dim}-d features; hidden {settings.hidden_dim}, "
                 f"{epochs}, batch {settings.batch_size}, lr {settings.lr:g}, precision "
                 f"{settings.precision}. Machine: {result.machine}. Training time summed over the runs "
                 f"{sum(run.seconds for run in result.runs) / 60:.1f} min (this invocation {result.seconds / 60:.1f} "
                 f"min; finished runs are reused).")
    return "\n".join(lines) + "\n"
