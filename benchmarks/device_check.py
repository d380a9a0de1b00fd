"""The one prepared GPU check of issue 7: correctness on the GPU, then `ban bench` at paper size.

Run on the device machine from the repository root (the package need not be installed there; the commit named,
for a copy of the tree without .git; the output kept in $OUT even if the command is cut short):

    set -o pipefail; PYTHONUNBUFFERED=1 BAN_COMMIT=<commit> PYTHONPATH=src \
        python benchmarks/device_check.py --out "$OUT" 2>&1 | tee "$OUT/log"
    PYTHONPATH=src python benchmarks/device_check.py --out /tmp/dry --device cpu --batch-size 4 --steps 1   # dry run

First ``environment`` (the command, the commit, versions, the GPU) and ``trainer_data`` (the synthetic sets of 6.,
made before CUDA starts). At ``--deadline`` seconds from the start (540; keep it below the command's time limit) the
running part is cut short and the rest skipped; the report keeps what was measured.

Eager work first (a failed CUDA graph capture could leave the device unusable for what follows):

1. ``parity``: a paper-best model with random weights, evaluated on the CPU (fp32) and on the GPU (fp32 with TF32
   off, and bf16 autocast), fused and plain paths: the max abs difference of the logits.
2. ``bench``: the table of `ban bench` (batch 256, adaptive boxes 10–100, 14 tokens) for the fused, plain and
   straightforward paths (a row that fails is reported with its error; the others still run); ``profile``: the
   graphed step's work run eagerly under torch.profiler (bf16: operators by device time — what a replay still has
   to do); ``host_sync``:
   the bf16 plain training step again with `--host-sync` (what `ban train`'s per-step finiteness read costs);
   ``bucketed``: the bf16 plain and straightforward training steps on batches of similar box counts
   (`--boxes bucketed`, as `bucket_boxes=true` cuts them: padded to ≈ their mean instead of ≈ 100); ``authors``:
   the authors' training step (benchmarks/authors_formulation.py) on the same card and batches, fp32 and bf16
   autocast — the issue's baseline measured on this card, not taken from the card its table came from.
3. ``resident``: a small synthetic prepared VQA set held on the GPU gives the loader's batches exactly; the gather
   rate of batch-256 rows (adaptive boxes) from a 2,048-d bf16 table of 400k regions; ``evaluation``: a paper-best
   BAN evaluated on the paper-sized set's val split (bf16, box-count order) from the loader with 0 and 4 workers
   and from a resident copy: questions/s each, and the same metrics.

Then CUDA graphs (:mod:`ban.engine.graphs`):

4. ``graphs``: a dropout-free paper-best model trained 3 steps (batch 32, adaptive boxes padded to 100, fp32
   without TF32) eagerly, eagerly with the static inputs and capture-safe layers, and replayed as graphs: the
   losses and the parameters' largest differences; ``graphed_rows``: the graphed rows of the table;
   ``graph_dropout``: replays of a captured forward pass draw fresh dropout masks in train mode (none in eval).
5. ``compiled_row`` (if under ``--compile-before`` seconds, 340, have passed): the bf16 training row of "compiled"
   (graphed, with the forward pass and the clipped Adamax update through torch.compile), compiled first.
6. ``trainer`` (under 420 s): ``ban train`` eager and with ``cuda_graphs=true`` (resident data, synthetic sets): a
   dropout-free tiny BAN's losses and weights, both ways (fp32, TF32 off); the paper-best BAN's samples/s per
   epoch, both ways (bf16, batch 256, 2,000 images of 10–100 boxes).
   Then ``compiled_parity`` (under 430 s): the check of 4. for the compiled step; ``trainer_compiled`` (under
   360 s): the paper-best run with ``compile=true`` too. Dynamo's caches are emptied before each compiled part.
7. ``cudnn_gru_capture``, last: whether cuDNN's GRU (forward + backward) can be captured (to choose it over
   ``gru_sequence`` later).

Last, ``goal``: issue 7's goal read from the parts — ban's fastest training row against the authors' fp32 step
on this card (questions/s, the ratio, peak memory each).

Each part is guarded: one that raises is reported with its error and the next still runs; ``part_seconds`` gives
each part's duration, to plan the next run. Without a GPU (a dry run) the GPU-only parts say so, and the time
limits are lifted, so that every other part runs.
The JSON is rewritten after every part, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before torch's import and CUDA's start, which count against the device time too

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from authors_formulation import time_steps as authors_steps  # noqa: E402 - benchmarks/ is the script's directory
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from ban.benchmark import (  # noqa: E402
    BenchSettings,
    as_json,
    box_counts,
    format_table,
    measure,
    synchronize,
    synthetic_batches,
)
from ban.engine.config import TrainConfig  # noqa: E402
from ban.engine.graphs import graphed_inference, graphed_training, static_batch, training_step  # noqa: E402
from ban.engine.optim import adamax  # noqa: E402
from ban.machine import code_version, describe_machine  # noqa: E402
from ban.models import build_model, preset  # noqa: E402
from ban.nn.capture import capture_safe  # noqa: E402


def tf32_flags() -> dict[str, bool]:
    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """fp32 products without TF32, for the comparisons; torch's flags as they were afterwards (its defaults: TF32
    off for matmuls, on for cuDNN), for the speed rows."""
    before = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before["matmul"], before["cudnn"]


def parity(device: torch.device) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    reference = build_model(preset("paper-best")).eval()
    batch = synthetic_batches(BenchSettings(batch_size=16), reference.config, torch.device("cpu"), count=1)[0]
    with torch.no_grad():
        expected = reference(batch["features"], batch["boxes"], batch["questions"]).logits
    for fused in (True, False):
        model = build_model(reference.config.replace(fused=fused)).to(device).eval()
        model.load_state_dict(reference.state_dict())
        inputs = [batch[key].to(device) for key in ("features", "boxes", "questions")]
        for precision in ("fp32", "bf16"):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(*inputs).logits.float().cpu()
            rows.append({"path": "fused" if fused else "plain", "precision": precision,
                         "max_abs_diff_vs_cpu_fp32": float((logits - expected).abs().max())})
    return rows


def failure(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(error)).strip()[-2000:]


def graph_parity(device: torch.device, candidate: str = "graphed", steps: int = 3) -> dict:
    """3 training steps of a dropout-free paper-best model (fp32, TF32 off): eager, static eager (static inputs,
    capture-safe layers) and the candidate ("graphed", or "compiled": graphed with torch.compile)."""
    torch.manual_seed(0)
    config = preset("paper-best", dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0)
    initial = build_model(config).to(device)
    batches = [{key: value for key, value in batch.items() if key != "real_boxes"}
               for batch in synthetic_batches(BenchSettings(batch_size=32), config, device, count=steps)]
    static = [static_batch(batch, box_quantum=100, row_quantum=256) for batch in batches]  # one shape: one compilation
    runs = {}
    for name in ("eager", "static eager", candidate):
        model = copy.deepcopy(initial)
        optimizer = adamax(model.parameters(), device, lr=TrainConfig.lr, capturable=name == candidate)
        losses = []
        try:
            if name == candidate:
                step = graphed_training(model, optimizer, "fp32", compile=candidate == "compiled")
                losses = [float(step(batch)[0]) for batch in static]
            elif name == "static eager":
                with capture_safe():
                    losses = [float(training_step(model, optimizer, batch, "fp32")[0]) for batch in static]
            else:
                losses = [float(training_step(model, optimizer, batch, "fp32")[0]) for batch in batches]
        except Exception as error:  # report it: the other checks still run
            runs[name] = {"error": failure(error)}
            continue
        runs[name] = {"losses": losses, "parameters": [p.detach().clone() for p in model.parameters()]}
    report = {name: {key: value for key, value in run.items() if key != "parameters"} for name, run in runs.items()}
    tried = runs[candidate]
    for name in ("eager", "static eager"):
        if "parameters" in runs[name] and "parameters" in tried:
            pairs = zip(tried["parameters"], runs[name]["parameters"], strict=True)
            report[f"{candidate} vs {name}"] = {
                "max_abs_loss_diff": max(abs(a - b) for a, b in zip(tried["losses"], runs[name]["losses"],
                                                                    strict=True)),
                "max_abs_parameter_diff": max(float((a - b).abs().max()) for a, b in pairs),
            }
    return report


def graph_dropout(device: torch.device, replays: int = 3) -> dict:
    """Dropout inside a replayed CUDA graph: a paper-best model with its dropout, the forward pass captured once
    (fp32, batch 32) and replayed on the same batch, in train mode (each replay must draw fresh masks: the logits
    differ between replays) and in eval mode (no dropout: equal)."""
    torch.manual_seed(0)
    config = preset("paper-best")
    model = build_model(config).to(device)
    batch = {key: value for key, value in synthetic_batches(BenchSettings(batch_size=32), config, device,
                                                              count=1)[0].items() if key != "real_boxes"}
    batch = static_batch(batch, box_quantum=100, row_quantum=256)
    report = {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        infer = graphed_inference(model, "fp32")
        logits = [infer(batch)[0].clone() for _ in range(replays)]
        differences = [float((a - b).abs().max()) for a, b in zip(logits[:-1], logits[1:], strict=True)]
        report[mode] = {"max_abs_logit_diff_between_replays": max(differences)}
    report["fresh masks in train mode, none in eval mode"] = (
        report["train"]["max_abs_logit_diff_between_replays"] > 0
        and report["eval"]["max_abs_logit_diff_between_replays"] == 0)
    return report


def cudnn_gru_capture(device: torch.device) -> str:
    """Whether nn.GRU (cuDNN) forward + backward can be captured in a CUDA graph: "captured" or the error."""
    if device.type != "cuda":
        return "not tried: no GPU"
    rnn = torch.nn.GRU(600, 1280, batch_first=True).to(device)
    x = torch.randn(256, 14, 600, device=device)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                rnn(x)[0].sum().backward()
        torch.cuda.current_stream().wait_stream(side)
        rnn.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            rnn(x)[0].sum().backward()
        graph.replay()
        synchronize(device)
        return "captured"
    except Exception as error:
        return failure(error)


def step_profile(device: torch.device, batch_size: int, precision: str = "bf16", rows: int = 30) -> dict:
    """The graphed step's work run eagerly (static inputs, capture-safe layers; adaptive boxes) under
    torch.profiler: its operators by device time — what a replay still has to do once launching is gone."""
    torch.manual_seed(0)
    settings = BenchSettings(batch_size=batch_size)
    config = preset(settings.preset)
    model = build_model(config).to(device)
    batches = [static_batch({key: value for key, value in batch.items() if key != "real_boxes"})
               for batch in synthetic_batches(settings, config, device, count=2)]
    optimizer = adamax(model.parameters(), device, lr=TrainConfig.lr, capturable=device.type == "cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with capture_safe():
        for index in range(3):
            training_step(model, optimizer, batches[index % 2], precision)
        synchronize(device)
        began = time.perf_counter()
        with profile(activities=activities) as profiler:
            training_step(model, optimizer, batches[1], precision)
            synchronize(device)
        wall_ms = 1000 * (time.perf_counter() - began)
    events = profiler.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {"precision": precision, "wall_ms_profiled": wall_ms,
            "device_ms": sum(event.self_device_time_total for event in events) / 1000,
            "table": events.table(sort_by=sort, row_limit=rows, max_name_column_width=60)}


def bench_rows(settings: BenchSettings, paths: list[str], precisions: tuple[str, ...] = ("fp32", "bf16"),
               modes: tuple[str, ...] = ("train", "infer")) -> tuple[list, list[dict]]:
    """`ban bench`'s rows, each measured on its own: a failing row is reported, the others still run."""
    results, errors = [], []
    for mode in modes:
        for precision in precisions:
            for path in paths:
                try:
                    results.append(measure(settings, path, precision, mode))
                except Exception as error:
                    errors.append({"path": path, "precision": precision, "mode": mode, "error": failure(error)})
                    print("failed:", errors[-1])
                if settings.device != "cpu":
                    torch.cuda.empty_cache()
    return results, errors


def authors_part(settings: BenchSettings) -> list[dict]:
    """The authors' training step timed on ``settings``' batches (the ones `ban bench` times), fp32 and bf16
    autocast; a precision that fails is reported with its error."""
    rows = []
    for precision in ("fp32", "bf16"):
        try:
            rows.append(authors_steps(settings, settings.model_config(), precision))
        except Exception as error:
            rows.append({"formulation": "authors", "precision": precision, "error": failure(error)})
        if settings.device != "cpu":
            torch.cuda.empty_cache()
    return rows


def goal_summary(report: dict) -> dict:
    """Issue 7's goal from the report's parts: ban's training row with the most questions/s (bench, graphed and
    compiled rows) against the authors' fp32 training step, with both peak memories."""
    rows = [row for part in ("bench", "graphed_rows", "compiled_row") if isinstance(report.get(part), dict)
            for row in report[part].get("results", []) if row["mode"] == "train"]
    theirs = next((row for row in report.get("authors") or [] if row.get("precision") == "fp32" and "error" not in row),
                  None)
    if not rows or theirs is None:
        return {"not measured": "no ban training row" if not rows else "no authors' fp32 row"}
    best = max(rows, key=lambda row: row["questions_per_s"])
    return {"ban": {key: best[key] for key in ("path", "precision", "questions_per_s", "peak_memory_gib")},
            "authors_fp32": {key: theirs[key] for key in ("questions_per_s", "peak_memory_gib")},
            "speedup": best["questions_per_s"] / theirs["questions_per_s"],
            "at_least_40000_questions_per_s": best["questions_per_s"] >= 40_000,
            "peak_memory_not_higher": best["peak_memory_gib"] <= theirs["peak_memory_gib"]}


def resident_check(device: torch.device) -> dict:
    """Gathered batches on the GPU against the collated ones (float32: must be equal), and the gather rate."""
    try:
        from ban.data.collate import collate_vqa
        from ban.data.resident import ResidentVQA
        from ban.data.synthetic import generate
        from ban.data.vqa2 import prepare_vqa2
        from ban.engine.tasks import VQATask
    except ImportError as error:
        return {"skipped": f"cannot import the data modules: {error}"}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        generate(root / "raw", seed=0, num_images=56, feature_dim=2048, flickr_images=0, write_images=False,
                 workers=1, progress=False)
        prepare_vqa2(root / "raw" / "vqa", sorted((root / "raw" / "features").glob("*.tsv")), root / "prepared",
                     progress=False)
        dataset = VQATask(root / "prepared").dataset(["train", "val"])
        resident = ResidentVQA(dataset, device)
        indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:64].tolist()
        expected, gathered = collate_vqa([dataset[i] for i in indices]), resident.batch(indices)
        equal = {key: bool(torch.equal(gathered[key].cpu(), value)) for key, value in expected.items()}
    table = torch.randn(400_000, 2048, device=device).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(1)
    row_sets = []
    for _ in range(20):
        counts = box_counts(BenchSettings(), generator)
        starts = torch.randint(0, 400_000 - 100, (len(counts),), generator=generator)
        row_sets.append((starts[:, None] + torch.arange(int(counts.max()))[None, :]).to(device))
    table[row_sets[0]]
    synchronize(device)
    began = time.perf_counter()
    for rows in row_sets:
        table[rows]
    synchronize(device)
    seconds = (time.perf_counter() - began) / len(row_sets)
    return {"batch_equal_to_collate": equal, "gather_ms_per_batch_256": 1000 * seconds,
            "gather_questions_per_s": 256 / seconds}


def trainer_data(root: Path, images: int = 2000) -> dict[str, Path] | str:
    """Prepared synthetic VQA sets for :func:`trainer_check` under ``root``: "small" (56 images, 16-d features) and
    "paper" (``images`` images, 2,048-d, bottom-up's 10–100 boxes per image as in issue 7's conditions) → their
    directories, or why not. Made before anything starts CUDA (the generator forks its workers)."""
    try:
        from ban.data.synthetic import generate
        from ban.data.vqa2 import prepare_vqa2
    except ImportError as error:
        return f"cannot import the data modules: {error}"
    made = {}
    for name, count, width, boxes in (("small", 56, 16, "10-36"), ("paper", images, 2048, "bottom-up")):
        generate(root / name / "raw", seed=0, num_images=count, feature_dim=width, flickr_images=0,
                 write_images=False, box_counts=boxes, workers=8, progress=False)
        prepare_vqa2(root / name / "raw" / "vqa", sorted((root / name / "raw" / "features").glob("*.tsv")),
                     root / name / "prepared", progress=False)
        made[name] = root / name / "prepared"
    return made


def evaluation_check(device: torch.device, data: dict[str, Path] | str) -> dict:
    """A paper-best BAN (random weights, the synthetic set's answer and token tables) evaluated on the paper-sized
    set's val split in bf16, batch 256, box-count order, its batches from the data loader (0 and 4 worker processes)
    and gathered from a resident copy: questions/s of each (the validation of a `resident=true` run) and whether
    the three give the same metrics."""
    if isinstance(data, str):
        return {"skipped": data}
    from ban.engine.tasks import VQATask

    task = VQATask(data["paper"])
    model = build_model(preset("paper-best", **task.model_sizes())).to(device)
    resident = task.resident(task.dataset(["val"]), device, "bf16", progress=False)
    sources = {"loader, 0 workers": dict(num_workers=0), "loader, 4 workers": dict(num_workers=4),
               "resident": dict(resident=resident)}
    report: dict = {"questions": len(task.dataset(["val"]))}
    metrics = {}
    for name, source in sources.items():
        task.evaluate(model, "val", 256, device, "bf16", **source)  # warm-up (and the workers' start)
        synchronize(device)
        began = time.perf_counter()
        metrics[name] = task.evaluate(model, "val", 256, device, "bf16", **source)
        synchronize(device)
        report[name] = {"seconds": time.perf_counter() - began,
                        "questions_per_s": report["questions"] / (time.perf_counter() - began)}
    report["same_metrics"] = all(value == metrics["resident"] for value in metrics.values())
    return report


TRAINER_VARIANTS = {"eager": {}, "graphed": {"cuda_graphs": True}, "compiled": {"cuda_graphs": True, "compile": True}}


def trainer_check(device: torch.device, data: dict[str, Path] | str, root: Path,
                  variants: tuple[str, ...] = ("eager", "graphed"),
                  parts: tuple[str, ...] = ("parity", "speed")) -> dict:
    """``ban train`` in each of ``variants`` (:data:`TRAINER_VARIANTS`: eager, ``cuda_graphs=true``, and with
    ``compile=true`` too; the public ``train()``, resident data; runs under ``root``) on :func:`trainer_data`'s sets:
    "parity", a dropout-free tiny BAN, fp32 without TF32, 2 epochs on the small set (the epochs' losses, the weights'
    largest difference from the eager run); "speed", the paper-best BAN's sizes (its answer and token tables are the
    synthetic set's), bf16, batch 256, 2 epochs on the paper-sized set (samples/s of each epoch: the first includes
    the captures and compilations)."""
    if isinstance(data, str):
        return {"skipped": data}
    try:
        from ban.engine.checkpoint import Checkpoint
        from ban.engine.config import TrainConfig
        from ban.engine.run import CHECKPOINT_FILE, RunConfig, fingerprint, start_run
        from ban.engine.tasks import VQATask
        from ban.engine.trainer import train
    except ImportError as error:
        return {"skipped": f"cannot import the training modules: {error}"}
    sizes = {"parity": ("small", dict(hidden_dim=16, word_dim=8, num_glimpses=2, dropout=0.0, attention_dropout=0.0,
                                      classifier_dropout=0.0), dict(batch_size=16, precision="fp32", lr=2e-3)),
             "speed": ("paper", {}, dict(batch_size=256, precision="bf16", lr=7e-4, skip_nonfinite=True))}
    report: dict = {}
    for name in parts:
        data_name, model_settings, train_settings = sizes[name]
        data_dir = data[data_name]
        task = VQATask(data_dir)
        model = preset("tiny" if name == "parity" else "paper-best", **model_settings, **task.model_sizes())
        runs = {}
        for variant in variants:
            config = TrainConfig(epochs=2, warmup=(0.5, 1.0), resident=True, device=device.type,
                                 **TRAINER_VARIANTS[variant], **train_settings)
            run = RunConfig("vqa", str(data_dir), model, config, fingerprint(data_dir))
            run_dir = root / f"{name}-{variant}"
            try:
                start_run(run_dir, run, resume=False)
                history = train(run_dir, run, VQATask(data_dir))
            except Exception as error:  # report it: the other runs still go
                runs[variant] = {"error": failure(error)}
                continue
            runs[variant] = {"losses": [r["train_loss"] for r in history],
                             "samples_per_s": [r["samples_per_s"] for r in history],
                             "weights": Checkpoint(run_dir / CHECKPOINT_FILE).model}
        part = {variant: {k: v for k, v in r.items() if k != "weights"} for variant, r in runs.items()}
        eager = runs.get("eager", {}).get("weights")
        for variant, r in runs.items():
            if eager is not None and variant != "eager" and "weights" in r:
                part[variant]["max_abs_weight_diff"] = max(float((r["weights"][k].float() - eager[k].float())
                                                                 .abs().max()) for k in eager)
        report[name] = part
    return report


class Deadline(BaseException):
    """The check's deadline came while a part ran (SIGALRM): that part is reported cut short, the rest skipped. Not
    an Exception: the parts' own handlers (a failing row, a failing run) must not take it for one and go on."""


def _deadline_reached(signum: int, frame: object) -> None:
    raise Deadline("the check's deadline came while this part ran")


class Parts:
    """The check's parts run in order into one report, ``out/device_check.json``, rewritten (atomically) after every
    part: a part that raises is reported with its error and the next one still runs; each part's seconds are
    recorded, and the TF32 flags it ran under. At ``deadline`` seconds from the script's start (SIGALRM) the part
    running is cut short; parts not begun by then are skipped, except those that run ``always`` (instant ones)."""

    def __init__(self, out: Path, deadline: float | None) -> None:
        self.out, self.deadline = out, deadline
        self.report: dict = {"part_seconds": {}, "tf32": {}}
        if deadline is not None:
            signal.signal(signal.SIGALRM, _deadline_reached)
            signal.setitimer(signal.ITIMER_REAL, max(deadline - (time.perf_counter() - STARTED), 0.001))

    def run(self, name: str, part: Callable[[], object], before: float | None = None,
            needs_gpu: str | None = None, always: bool = False) -> object:
        """Run ``part`` into ``report[name]`` unless more than ``before`` seconds (or the deadline) have passed since
        the start or ``needs_gpu`` says why it cannot run on this device; → what it returned (None if it did not)."""
        elapsed = time.perf_counter() - STARTED
        limit = min(x for x in (before, self.deadline, float("inf")) if x is not None)
        value = None
        if needs_gpu is not None:
            self.report[name] = f"not measured: {needs_gpu}"
        elif elapsed > limit and not always:
            self.report[name] = f"not measured: {elapsed:.0f} s used, the limit for this part is {limit:.0f} s"
        else:
            self.report["tf32"][name] = tf32_flags()
            try:
                value = self.report[name] = part()
            except (Exception, Deadline) as error:  # report it: the other parts still run (if time is left)
                self.report[name] = {"error": failure(error)}
            self.report["part_seconds"][name] = time.perf_counter() - STARTED - elapsed
        shown = self.report[name]
        print(f"== {name}:", shown if isinstance(shown, str) else json.dumps(shown, indent=2, default=str)[:6000],
              flush=True)
        self.report["seconds"] = time.perf_counter() - STARTED
        temporary = self.out / ".device_check.json.tmp"
        temporary.write_text(json.dumps(self.report, indent=2, default=str))
        temporary.replace(self.out / "device_check.json")
        return value


def environment(args: argparse.Namespace, device: torch.device) -> dict:
    """What ran, where: the command, the commit (``BAN_COMMIT``, for a copy of the tree without .git), versions."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    for module in ("numpy", "triton"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    gpu = None
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        gpu = {"name": properties.name, "capability": f"{properties.major}.{properties.minor}",
               "memory_gib": properties.total_memory / 2**30}
    return {"command": " ".join(sys.argv), "settings": {key: str(value) for key, value in vars(args).items()},
            "commit": os.environ.get("BAN_COMMIT") or code_version(), "machine": describe_machine(device),
            "gpu": gpu, "versions": versions, "seconds_before_the_first_part": time.perf_counter() - STARTED}


def bench_part(settings: BenchSettings, paths: list[str], **kinds: tuple[str, ...]) -> dict:
    """:func:`bench_rows` as a report part: the `ban bench` JSON of the rows that ran, with the errors of the others."""
    results, errors = bench_rows(settings, paths, **kinds)
    print(format_table(results))
    return {**as_json(settings, results), "errors": errors}


def compiled_afresh(part: Callable[[], object]) -> Callable[[], object]:
    """``part`` after Dynamo's caches are emptied: every :func:`ban.engine.graphs.compiled_forward` shares one code
    object, so an earlier part's compilations (other shapes, other precisions) would otherwise count towards the
    recompile limit and make this part's compiled function one with symbolic sizes, not `ban bench`'s."""

    def run() -> object:
        torch._dynamo.reset()
        return part()

    return run


# the parts that run only while time is left: --<part>-before → (default seconds, what the part does)
TIME_LIMITS = {
    "compile": (340.0, "measure the compiled training row (bf16)"),
    "trainer": (420.0, "run ban train eager and with cuda_graphs"),
    "compiled-parity": (430.0, "check the compiled step against the eager one"),
    "trainer-compiled": (360.0, "run ban train with cuda_graphs and compile (paper-best, bf16)"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu for a dry run of the script")
    parser.add_argument("--deadline", type=float, default=540.0,
                        help="seconds from the script's start (its imports included) after which the running part is "
                             "cut short and the rest skipped, the report kept: below the command's time limit "
                             "(default: %(default)s; none in a dry run)")
    for part, (default, what) in TIME_LIMITS.items():
        parser.add_argument(f"--{part}-before", type=float, default=default,
                            help=f"{what} only if the script has run less than this many seconds by then "
                                 "(default: %(default)s)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    no_gpu = None if device.type == "cuda" else "no GPU"

    def limit(seconds: float) -> float | None:
        """A part's time limit: none in a dry run, which is there to run every part."""
        return seconds if device.type == "cuda" else None

    parts = Parts(args.out, limit(args.deadline))
    parts.run("environment", lambda: environment(args, device), always=True)
    scratch = Path(tempfile.mkdtemp(prefix="device-check-"))  # the synthetic sets of part 6, made before CUDA starts
    data = parts.run("trainer_data", lambda: trainer_data(scratch, images=56 if device.type == "cpu" else 2000))
    data = data if data is not None else "the synthetic sets were not made (see trainer_data)"
    settings = BenchSettings(batch_size=args.batch_size, steps=args.steps, warmup=min(5, args.steps),
                             device=args.device)
    # eager work first: a failed CUDA graph capture could leave the device unusable for what follows
    with exact_float32():
        parts.run("parity", lambda: parity(device))
    parts.run("bench", lambda: bench_part(settings, ["fused", "plain", "straightforward"]))
    parts.run("profile", lambda: step_profile(device, args.batch_size))
    parts.run("authors", lambda: authors_part(settings))
    synced = dataclasses.replace(settings, host_sync=True)
    parts.run("host_sync", lambda: bench_part(synced, ["plain"], precisions=("bf16",), modes=("train",)))
    bucketed = dataclasses.replace(settings, boxes="bucketed")
    parts.run("bucketed", lambda: bench_part(bucketed, ["plain", "straightforward"], precisions=("bf16",),
                                             modes=("train",)))
    parts.run("resident", lambda: resident_check(device))
    parts.run("evaluation", lambda: evaluation_check(device, data))
    with exact_float32():
        parts.run("graphs", lambda: graph_parity(device))
    parts.run("graphed_rows", lambda: bench_part(settings, ["graphed"]), needs_gpu=no_gpu)
    with exact_float32():
        parts.run("graph_dropout", lambda: graph_dropout(device), needs_gpu=no_gpu)
    parts.run("compiled_row", compiled_afresh(lambda: bench_part(settings, ["compiled"], precisions=("bf16",),
                                                                 modes=("train",))),
              before=limit(args.compile_before), needs_gpu=no_gpu)
    with exact_float32():  # (its speed runs are bf16)
        parts.run("trainer", lambda: trainer_check(device, data, scratch),  # on the CPU: train()'s refusal of graphs
                  before=limit(args.trainer_before))
    with exact_float32():
        parts.run("compiled_parity", compiled_afresh(lambda: graph_parity(device, "compiled")),
                  before=limit(args.compiled_parity_before), needs_gpu=no_gpu)
    parts.run("trainer_compiled", compiled_afresh(lambda: trainer_check(device, data, scratch, variants=("compiled",),
                                                                       parts=("speed",))),
              before=limit(args.trainer_compiled_before))
    # last: an exploratory capture that may leave the device unusable
    parts.run("cudnn_gru_capture", lambda: cudnn_gru_capture(device), needs_gpu=no_gpu)
    signal.setitimer(signal.ITIMER_REAL, 0)
    parts.run("goal", lambda: goal_summary(parts.report), always=True)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
