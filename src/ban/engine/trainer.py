"""The training loop: Adamax, the epoch-wise schedule, gradient clipping, bf16 autocast, DDP, checkpoints.

One checkpoint file per run (``checkpoint.safetensors``), rewritten atomically after every epoch and when the
run is interrupted (Ctrl-C / SIGTERM: the current step finishes first). It holds everything needed to continue
bit-for-bit: weights, optimizer state, each process's RNG state, the position (epoch, step) and the metrics so
far. The data order of an epoch is a pure function of (seed, epoch), so it needs no saved state.

A batch whose loss or gradient is not finite is never applied: the run stops naming the epoch, step and batch
(the last checkpoint stays as it was), or with ``skip_nonfinite`` the batch is skipped and counted
(``skipped_batches`` in the epoch's metrics). A checkpoint with non-finite weights is never written.

BAN on VQA packs the real boxes before projecting them; its batches bring the packing rows, made on the host from
the box mask (a loader's) or the box counts (resident data), so that no forward pass waits for the device to count
them. With ``cuda_graphs`` (one GPU) the step is replayed as CUDA graphs (:mod:`ban.engine.trainer_graphs`): the same
computation, in the layers' capture-safe form, on batches padded to few shapes. With ``compile`` the forward pass
(and with the graphs the update) runs through ``torch.compile``.
"""

from __future__ import annotations

import functools
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ban import kernels
from ban.data.atomic import NO_ROOM
from ban.data.loader import BatchLoader
from ban.engine import distributed
from ban.engine.checkpoint import Checkpoint, read_position, save_checkpoint
from ban.engine.distributed import DistContext, ShardedBatches
from ban.engine.evaluation import Batch, EvaluationStopped, to_device
from ban.engine.graphs import BOX_QUANTUM, ROW_QUANTUM, compiled_forward, static_batch
from ban.engine.optim import FusedCPUAdamax, adamax, clipped_step, gradient_norm
from ban.engine.precision import autocast, resolve_precision
from ban.engine.reporting import report_epoch, report_resumed
from ban.engine.run import BEST_FILE, CHECKPOINT_FILE, RunConfig, check_epochs
from ban.engine.schedule import learning_rate, set_learning_rate
from ban.engine.tasks import Task, check_splits
from ban.engine.trainer_graphs import TrainingGraphs
from ban.errors import BanError, CheckpointError, ConfigError, DataError
from ban.models import build_model

SUMS = ("loss", "score", "count", "scored")  # what an epoch accumulates over its batches (scored: Task.score_count)


class TrainingInterrupted(BanError):
    """Raised after an interrupted run has saved its checkpoint."""


class TrainingDiverged(BanError):
    """Raised when a batch gives a non-finite loss or gradient (and such batches are not skipped): the run can go
    on with ``skip_nonfinite``."""


class DivergedOnData(TrainingDiverged, DataError):
    """A non-finite loss or gradient from a batch whose inputs hold NaN or infinite values: bad data, named by its
    file, record and field; like any divergence, the run can go on with ``skip_nonfinite``."""


class WeightsDiverged(TrainingDiverged):
    """Raised when an update left a weight NaN or infinite: the run cannot go on with its settings."""


class NonFiniteStep(Exception):
    """A batch gave a non-finite ``what`` ("loss" or "gradient"); the optimizer step was not taken."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def initial_model(run: RunConfig, task: Task) -> nn.Module:
    """The model of ``run`` built with the run's seed, word tables from the dataset's GloVe when present."""
    torch.manual_seed(run.train.seed)
    model = build_model(run.model)
    tables = task.word_vectors(run.model.word_dim, run.model.two_word_tables)
    if tables is not None:
        model.load_word_embeddings(*tables)
    return model


@contextmanager
def stop_on_signals() -> Iterator[list[bool]]:
    """Turn the first SIGINT / SIGTERM into a request (``flag[0] = True``); a second one interrupts at once."""
    flag = [False]
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum: int, frame: Any) -> None:
        flag[0] = True
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def rng_states(context: DistContext) -> dict[str, torch.Tensor]:
    """Every process's torch RNG states (CPU, and CUDA when used), keyed ``torch_cpu/<rank>``."""
    states = {}
    for rank, state in enumerate(distributed.gather_tensor(torch.get_rng_state(), context)):
        states[f"torch_cpu/{rank}"] = state
    if context.device.type == "cuda":
        cuda_state = torch.cuda.get_rng_state(context.device)
        for rank, state in enumerate(distributed.gather_tensor(cuda_state, context)):
            states[f"torch_cuda/{rank}"] = state
    return states


def restore_rng(states: dict[str, torch.Tensor], context: DistContext) -> None:
    """Restore this process's RNG states, when the checkpoint has them."""
    if f"torch_cpu/{context.rank}" in states:
        torch.set_rng_state(states[f"torch_cpu/{context.rank}"])
    if context.device.type == "cuda" and f"torch_cuda/{context.rank}" in states:
        torch.cuda.set_rng_state(states[f"torch_cuda/{context.rank}"], context.device)


def resume_from(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                context: DistContext) -> dict[str, Any]:
    """Load ``checkpoint`` into the model, the optimizer and this process's RNG; return its training position."""
    checkpoint.load_model(model)
    checkpoint.load_optimizer(optimizer)
    try:
        restore_rng(checkpoint.rng, context)
    except (RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"RNG state does not fit ({error})", path=checkpoint.path, field="rng") from None
    return read_position(checkpoint)


def resume_command(run_dir: Path, world_size: int) -> str:
    """The command that continues the run in ``run_dir`` with the same number of processes (resuming with
    another is allowed, but each process's dropout generator state is restored only for the same count)."""
    launcher = "ban" if world_size == 1 else f"torchrun --nproc_per_node {world_size} -m ban.cli"
    return f"{launcher} train --out {run_dir} --resume"


def skip_command(run_dir: Path, world_size: int) -> str:
    """The command that resumes the run skipping batches with a non-finite loss or gradient."""
    return f"{resume_command(run_dir, world_size)} --set skip_nonfinite=true"


def non_finite_row(batch: Batch) -> tuple[int, str] | None:
    """The first row of ``batch`` whose region features or spatial box features hold a NaN or infinite value, with
    the store's name of that field ("features" or "spatial"); None when every input is finite."""
    for key, field in (("features", "features"), ("boxes", "spatial")):
        finite = torch.isfinite(batch[key]).flatten(1).all(1)  # [B]
        if not bool(finite.all()):
            return int((~finite).nonzero()[0, 0]), field
    return None


def first_ids(batch: dict[str, Any]) -> tuple[str, list[int]] | None:
    """The kind and the first five ids of ``batch``'s samples (``question_ids`` or ``image_ids``), if it has any."""
    key = "question_ids" if "question_ids" in batch else "image_ids" if "image_ids" in batch else None
    return (key, batch[key][:5].tolist()) if key else None


def divergence_message(what: str, epoch: int, step: int, steps: int, ids: Sequence[tuple[str, list[int]] | None],
                       run_dir: Path, world_size: int) -> str:
    """Where a non-finite ``what`` appeared (``ids``: :func:`first_ids` of each process's part of the batch, in rank
    order: the global batch's order), and what to do about it."""
    known = [part for part in ids if part is not None]
    named = (f"; its {known[0][0].replace('_', ' ')} begin {[i for _, part in known for i in part][:5]}" if known
             else "")
    return (f"non-finite {what} at epoch {epoch + 1}, step {step} (batch {step} of {steps} in the epoch's order"
            f"{named}); nothing was updated and the last checkpoint is unchanged. Lower the learning rate, check the "
            f"data, or skip such batches: {skip_command(run_dir, world_size)}")


def train(run_dir: Path, run: RunConfig, task: Task, resume: bool = False) -> list[dict[str, Any]]:
    """Train (or continue training) the run in ``run_dir``; return the per-epoch metrics.

    Raises :class:`TrainingInterrupted` after saving a checkpoint when stopped by a signal.
    """
    context = distributed.setup(run.train.device)
    trainer: Trainer | None = None
    try:
        check_step_settings(run, context)
        trainer = Trainer(run_dir, run, task, context, resume)
        return trainer.fit()
    except BaseException as error:  # its traceback's frames hold the DDP wrapper (e.g. an error in the forward
        traceback.clear_frames(error.__traceback__)  # pass): their locals go, the lines stay for the report
        raise
    finally:
        if trainer is not None:
            trainer.release_wrapper()
        distributed.teardown()


def check_step_settings(run: RunConfig, context: DistContext) -> None:
    """Refuse ``cuda_graphs`` and ``compile`` where they cannot run: under ``torchrun``, for a model other than BAN
    on VQA (both take the host-made packing rows), and the graphs off a CUDA device. Every process refuses alike
    (said once)."""
    for name in ("cuda_graphs", "compile"):
        if not getattr(run.train, name):
            continue
        if name == "cuda_graphs" and context.device.type != "cuda":
            raise distributed.everywhere(ConfigError(f"cuda_graphs=true needs a CUDA device; this run trains on "
                                                     f"{context.device.type}"))
        if context.distributed:
            raise distributed.everywhere(ConfigError(f"{name}=true trains in one process; under torchrun leave it "
                                                     "false"))
        if not packs_boxes(run):
            raise ConfigError(f"{name}=true is implemented for BAN on VQA only, not for {run.task} with "
                              f"{run.model.attention} attention")


def packs_boxes(run: RunConfig) -> bool:
    """Whether the run's model packs the real boxes (BAN on VQA) and so takes packing rows with its batches."""
    return run.task == "vqa" and run.model.attention == "bilinear"


class Trainer:
    """The state of one training process: model (and its DDP wrapper), optimizer, data, position, metrics."""

    def __init__(self, run_dir: Path, run: RunConfig, task: Task, context: DistContext, resume: bool) -> None:
        self.run_dir, self.run, self.task, self.context, self.config = run_dir, run, task, context, run.train
        check_splits(self.config, task)
        if self.config.batch_size < context.world_size:  # ShardedBatches drops a global batch smaller than that
            raise distributed.everywhere(ConfigError(  # (in every process alike: said once)
                f"batch_size {self.config.batch_size} is smaller than the number of processes ({context.world_size}): "
                "every batch would be dropped"))
        self.precision = resolve_precision(self.config.precision, context.device)
        self.model = initial_model(run, task).to(context.device)
        graphed = self.config.cuda_graphs
        self.optimizer = adamax(self.model.parameters(), context.device, self.config.lr, tuple(self.config.betas),
                                self.config.eps, capturable=graphed and context.device.type == "cuda")
        self.use_kernels = isinstance(self.optimizer, FusedCPUAdamax)  # adamax() decided: a large CPU model
        torch.manual_seed(self.config.seed + context.rank)  # dropout noise: different per process, reproducible
        self.position: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "partial": {}}
        if resume and not (run_dir / CHECKPOINT_FILE).exists():  # stopped before its first checkpoint
            if context.is_main:
                tqdm.write(f"{run_dir} has no checkpoint yet: training starts from the beginning")
            resume = False
        if resume:
            self.position = resume_from(Checkpoint(run_dir / CHECKPOINT_FILE), self.model, self.optimizer, context)
            check_epochs(self.position, self.config.epochs)
            if self.position["history"]:  # a kill may have left metrics.jsonl an epoch behind
                distributed.on_main(lambda: report_resumed(run_dir, self.position["history"]), context)
        self.history: list[dict[str, Any]] = self.position["history"]
        self.data = task.dataset(self.config.train_splits)
        if len(self.data) < context.world_size:  # (a Visual Genome split with no image in its COCO split, say)
            held = (f"{len(self.data)} sample{'s' * (len(self.data) != 1)}, fewer than the {context.world_size} "
                    "processes (a batch smaller than that is dropped)" if len(self.data) else "no samples")
            raise ConfigError(f"training setting 'train_splits': {', '.join(self.config.train_splits)} of "
                              f"{task.data_dir} hold {held}: nothing to train on")
        self.resident = task.resident(self.data, context.device, self.precision, context.is_main) \
            if self.config.resident else None
        self.box_counts = task.box_counts(self.data) if self.config.bucket_boxes else None
        self.validate = bool(self.config.val_split)
        # opened now, so that a damaged val split is refused before the first epoch, not after it
        val_data = task.dataset([self.config.val_split]) if self.validate else None
        if self.validate:
            task.confirm_scorable(self.config.val_split, context)
        # the validation split held on the device as well (by every process: each validates a share of it)
        self.resident_val = task.resident(val_data, context.device, self.precision, context.is_main) \
            if self.config.resident and self.validate else None
        self.packing: dict[str, int] | None = None  # how the packing rows are padded; None: the model does not pack
        if packs_boxes(run):  # to few shapes for the graphs, not at all for eager steps
            self.packing = (dict(box_quantum=BOX_QUANTUM, row_quantum=ROW_QUANTUM) if graphed
                            else dict(box_quantum=1, row_quantum=1))
        self.trained: nn.Module = self.model
        if context.distributed:  # every trainable parameter gets a gradient in every step (test_models), so no
            # find_unused_parameters; not static_graph either: with the models' dataclass outputs its first step's
            # gradients were left unaveraged (torch 2.13, gloo; a tensor output was fine)
            device_ids = [context.device] if context.device.type == "cuda" else None
            self.trained = DistributedDataParallel(self.model, device_ids=device_ids)
        # on a CPU (tests) the graphs' steps run eagerly: train() refuses cuda_graphs there
        self.forward: Callable[[Batch], Tensor] = (compiled_forward(self.model) if self.config.compile
                                                   else functools.partial(task.forward, self.trained))
        self.graphs = TrainingGraphs(self.graph_gradients, self.model, self.optimizer, self.config.grad_clip,
                                     compile=self.config.compile, capture=context.device.type == "cuda") \
            if graphed else None

    def release_wrapper(self) -> None:
        """Let go of the DDP wrapper and the forward pass bound to it, so that leaving the process group frees them
        (:func:`ban.engine.distributed.teardown`); the trainer cannot train after this."""
        del self.trained, self.forward

    def fit(self) -> list[dict[str, Any]]:
        """Run the remaining epochs; a checkpoint and a metrics line after each; then the report's attention
        pictures (unless nothing was left to train and they are there already)."""
        trains = self.position["epoch"] < self.config.epochs
        with stop_on_signals() as stop, kernels.enabled(self.use_kernels):
            for epoch in range(self.position["epoch"], self.config.epochs):
                resumed = epoch == self.position["epoch"] and self.position["step"] > 0
                start = self.position["step"] if resumed else 0
                record, steps, partial = self.epoch(epoch, start, self.position["partial"] if resumed else {}, stop)
                self.check_finite_weights(f"in epoch {epoch + 1}")  # before best.safetensors may take them
                if self.validate:
                    self.validation(record, stop, epoch, steps, partial)
                self.keep_if_best(record)  # before the checkpoint: a kill in between redoes the epoch and this
                self.history.append(record)
                self.save(epoch + 1, 0, {})
                distributed.on_main(functools.partial(self.report, record), self.context)
        if self.history:
            distributed.on_main(functools.partial(self.report_pictures, again=trains), self.context)
        return self.history

    def report(self, record: dict[str, Any]) -> None:
        """(The main process's) metrics.jsonl, learning curves and TensorBoard after the epoch of ``record``; one
        that cannot be written says that the epoch's checkpoint is saved, and how to go on (a resume writes the
        reports again)."""
        try:
            report_epoch(self.run_dir, self.history)
        except DataError as error:
            raise DataError(f"{error.message}; the checkpoint after epoch {record['epoch']} is saved. Mend that, "
                            f"then continue with: {resume_command(self.run_dir, self.context.world_size)}",
                            path=error.path, record=error.record, field=error.field) from error
        tqdm.write(summarise(record))

    def report_pictures(self, again: bool) -> None:
        """(The main process's) attention pictures of the trained model, unless they are there and not ``again``."""
        from ban.viz.report import REPORT_DIR, write_report_pictures  # matplotlib only once training is over

        if again or not (self.run_dir / REPORT_DIR).is_dir():
            pictures = write_report_pictures(self.run_dir, self.model, self.run, device=self.context.device)
            if pictures:
                tqdm.write(f"attention pictures: {pictures[0].parent}")

    def validation(self, record: dict[str, Any], stop: list[bool], epoch: int, steps: int,
                   partial: dict[str, float]) -> None:
        """Validate into ``record["val"]`` (the main process's): each process evaluates every K-th batch of the
        val split (K processes), the main one scores them all — the same metrics as one process's. A stop request
        during it (a long validation outlasts the grace of a scheduler's or torchrun's SIGKILL) gives up the
        validation and saves the finished epoch's ``steps`` and sums (``partial``): a resume redoes only the
        validation, which draws nothing from the random state (:meth:`ban.engine.tasks.Task.loader`). Bad val data
        (a NaN output) saves the epoch the same way, then raises the :class:`DataError` in every process."""
        context = self.context
        try:
            metrics = self.task.evaluate(self.model, self.config.val_split, self.config.eval_batch_size,
                                         context.device, self.precision, self.config.num_workers, stop=stop,
                                         resident=self.resident_val, context=context)
        except (EvaluationStopped, DataError) as error:  # raised in every process alike
            self.save(epoch, steps, partial)
            resume = resume_command(self.run_dir, context.world_size)
            if isinstance(error, DataError):
                raise distributed.everywhere(DataError(
                    f"{error}. Epoch {epoch + 1} is checkpointed without its validation; once the data is mended, "
                    f"continue with: {resume}")) from error
            raise TrainingInterrupted(f"stopped while validating epoch {epoch + 1}; checkpoint saved in "
                                      f"{self.run_dir}. Continue with: {resume}") from None
        if context.is_main:
            record["val"] = metrics

    def keep_if_best(self, record: dict[str, Any]) -> None:
        """Write the weights to best.safetensors when this epoch's validation score beats every earlier one. A
        collective where the run validates (:meth:`write_together`)."""
        if not self.validate:  # no record has "val": nothing to write
            return
        earlier = [self.task.selection_score(r["val"]) for r in self.history if "val" in r]
        best = "val" in record and all(self.task.selection_score(record["val"]) > other for other in earlier)
        state = {"epoch": record["epoch"], "val": record.get("val")}
        self.write_together((lambda: save_checkpoint(self.run_dir / BEST_FILE, self.model, None, state)) if best
                            else None, f"epoch {record['epoch']}'s weights (the best so far) and its checkpoint were")

    def epoch(self, epoch: int, start: int, partial: dict[str, float],
              stop: list[bool]) -> tuple[dict[str, Any], int, dict[str, float]]:
        """Train one epoch from batch ``start`` on (``partial``: the sums of the batches before it) → (its record,
        its number of steps, its sums as a checkpoint keeps them)."""
        config, context = self.config, self.context
        lr = learning_rate(config, epoch)
        set_learning_rate(self.optimizer, lr)
        if self.graphs is not None:
            self.graphs.follow_learning_rate()
        batches = ShardedBatches(len(self.data), config.batch_size, config.seed, epoch, rank=context.rank,
                                 world_size=context.world_size, start=start, sizes=self.box_counts)
        loader = self.device_batches(batches, epoch)
        # running sums of loss, score, samples and scored units, kept on the device (no host sync per step); a
        # resumed epoch's sums so far are every process's together (see the interrupt below): the main process
        # carries them (a checkpoint from before "scored" was summed scored its samples)
        so_far = {"scored": partial.get("count", 0.0), **partial}
        carried = [so_far.get(k, 0.0) if context.is_main else 0.0 for k in SUMS]
        sums = torch.tensor(carried, dtype=torch.float64, device=context.device)
        skipped = int(partial.get("skipped", 0))  # batches with a non-finite loss or gradient (skip_nonfinite)
        began, shown = time.perf_counter() - partial.get("seconds", 0.0), time.perf_counter()
        bar = tqdm(total=start + len(batches), initial=start, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not context.is_main, dynamic_ncols=True)
        steps = zip(loader, batches, batches.global_sizes, strict=True)
        for step, (batch, indices, global_size) in enumerate(steps, start + 1):
            try:
                sums += self.step(batch, global_size)
            except NonFiniteStep as problem:
                if not config.skip_nonfinite:
                    bar.close()
                    self.refuse_non_finite_input(problem.what, batch, indices, epoch, step)
                    # every process's part of the batch named, the loss if any process's was not finite: said once
                    whats, ids = zip(*distributed.gather_objects((problem.what, first_ids(batch)), context),
                                     strict=True)
                    what = "loss" if "loss" in whats else "gradient"
                    raise distributed.everywhere(TrainingDiverged(divergence_message(
                        what, epoch, step, start + len(batches), ids, self.run_dir, context.world_size))) from None
                skipped += 1
            bar.update(1)
            if time.perf_counter() - shown > 0.5:
                loss, _, count, _ = sums.tolist()
                bar.set_postfix(loss=f"{loss / max(count, 1):.3f}", lr=f"{lr:.2e}",
                                samples_per_s=f"{count * context.world_size / (time.perf_counter() - began):.0f}")
                shown = time.perf_counter()
            if distributed.any_process(stop[0], context):
                bar.close()
                self.save(epoch, step, {**dict(zip(SUMS, summed(sums, context), strict=True)),
                                        "seconds": time.perf_counter() - began, "skipped": skipped})
                raise TrainingInterrupted(f"stopped at epoch {epoch + 1}, step {step}; checkpoint saved in "
                                          f"{self.run_dir}. Continue with: "
                                          f"{resume_command(self.run_dir, context.world_size)}")
        bar.close()
        totals = summed(sums, context)
        loss, score, count, scored = totals
        seconds = time.perf_counter() - began
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": loss / count if count else float("nan"),
                  "train_score": 100 * score / scored if scored else float("nan"), "samples": int(count),
                  "seconds": seconds, "samples_per_s": count / seconds}
        if config.skip_nonfinite:
            record["skipped_batches"] = skipped
        return record, start + len(batches), {**dict(zip(SUMS, totals, strict=True)), "seconds": seconds,
                                              "skipped": skipped}

    def device_batches(self, batches: ShardedBatches, epoch: int) -> Iterable[Batch]:
        """This process's ``batches`` of the epoch on its device: gathered there from the resident copy, or collated
        by a DataLoader (``num_workers`` processes, seeded by the epoch) and moved there."""
        if self.resident is not None:
            return map(self.resident_batch, batches)
        loader = BatchLoader(self.data, batch_sampler=batches, collate_fn=self.task.collate,
                             num_workers=self.config.num_workers, pin_memory=self.context.device.type == "cuda",
                             generator=torch.Generator().manual_seed(self.config.seed + epoch))
        return map(self.device_batch, loader)

    def refuse_non_finite_input(self, what: str, batch: Batch, indices: list[int], epoch: int, step: int) -> None:
        """After a non-finite ``what`` (loss or gradient), in every process together: :class:`DivergedOnData` naming
        the first sample of ``batch`` (this process's dataset ``indices``) whose region features or spatial box
        features hold NaN or infinite values — bad data, not a learning rate to lower; in the other processes, when
        one found such a sample, :class:`TrainingDiverged` saying so (that process's error names it)."""
        found = non_finite_row(batch)
        if not distributed.any_process(found is not None, self.context):
            return
        skip = skip_command(self.run_dir, self.context.world_size)
        if found is None:  # said by the main process only, unless it names the sample itself
            raise distributed.everywhere(TrainingDiverged(
                f"non-finite {what} at epoch {epoch + 1}, step {step}: another process's part of the batch holds NaN "
                f"or infinite features (its error names the sample); nothing was updated. Mend the data, or skip "
                f"such batches: {skip}"))
        row, field = found
        raise DivergedOnData(
            f"non-finite {what} at epoch {epoch + 1}, step {step}: this sample's {field} hold NaN or infinite values "
            f"(`ban prepare` refuses them: the store was changed since); nothing was updated and the last checkpoint "
            f"is unchanged. Mend the data, or skip such batches: {skip}",
            path=self.task.data_dir, record=self.task.sample_record(self.data, indices[row]), field=field)

    def device_batch(self, batch: Batch) -> Batch:
        """A loader's batch (on the host) on the training device, with the packing rows when the model packs."""
        moved = to_device(batch, self.context.device)
        return moved if self.packing is None else static_batch(moved, **self.packing, host_box_mask=batch["box_mask"])

    def resident_batch(self, indices: list[int]) -> Batch:
        """The resident questions ``indices`` as a batch, with the packing rows (from the host's box counts)."""
        batch = self.resident.batch(indices)
        if self.packing is None:
            return batch
        return static_batch(batch, **self.packing, host_box_mask=self.resident.box_mask(indices))

    def step(self, batch: Batch, global_size: int) -> torch.Tensor:
        """One optimisation step on this process's part of a global batch; → [loss sum, score sum, samples, scored
        units (:meth:`ban.engine.tasks.Task.score_count`)].
        A non-finite loss or gradient raises :class:`NonFiniteStep` before anything is updated."""
        if self.graphs is None:
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum, score_sum, grad_norm = self.gradients(batch, global_size)
        else:
            loss_sum, score_sum, grad_norm = self.graphs.gradients(batch)
        loss_finite = torch.isfinite(loss_sum)
        finite = bool(loss_finite & torch.isfinite(grad_norm))  # one host sync per step: a NaN must not be applied
        if distributed.any_process(not finite, self.context):  # the next step overwrites the gradients
            raise NonFiniteStep("loss" if not bool(loss_finite) else "gradient")
        if self.graphs is None:
            clipped_step(self.optimizer, self.model.parameters(), self.config.grad_clip, grad_norm)
        else:
            self.graphs.apply(grad_norm)
        count = loss_sum.new_full((), float(self.task.batch_size(batch)))  # a fill: no copy that waits for the GPU
        return torch.stack([loss_sum, score_sum, count, self.task.score_count(batch).to(loss_sum)]).double()

    def gradients(self, batch: Batch, global_size: int, cast_cache: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Forward and backward on this process's part of a global batch → (loss sum [], score sum [], gradient
        norm []); the gradients accumulate into the parameters' ``.grad``.

        The summed loss is divided by the GLOBAL batch size and multiplied by the number of processes, so DDP's
        gradient average is the gradient of the whole global batch's mean loss.
        """
        with autocast(self.context.device, self.precision, cast_cache):
            logits = self.forward(batch)
        loss_sum = self.task.loss_sum(logits, batch)
        (loss_sum * (self.context.world_size / global_size)).backward()
        with torch.no_grad():
            score_sum = self.task.score_sum(logits, batch)
        return loss_sum.detach(), score_sum, gradient_norm(self.model.parameters())

    def graph_gradients(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`gradients` as the graphs capture it: one process (the global batch is the batch), autocast's
        weight-cast cache off (a cached cast would be captured once and reused stale)."""
        return self.gradients(batch, self.task.batch_size(batch), cast_cache=False)

    def check_finite_weights(self, when: str) -> None:
        """Raise :class:`WeightsDiverged`, saying ``when``, if a weight is NaN or infinite (a finite loss and
        gradient can still make an update overflow): no checkpoint or best.safetensors is written from them."""
        if all(bool(torch.isfinite(parameter).all()) for parameter in self.model.parameters()):
            return
        kept = ("the last checkpoint is unchanged" if (self.run_dir / CHECKPOINT_FILE).exists()
                else "no checkpoint was written")
        raise WeightsDiverged(f"the weights became non-finite {when}; {kept}. Lower the learning rate.")

    def save(self, epoch: int, step: int, partial: dict[str, float]) -> None:
        """Checkpoint: continue at (``epoch``, ``step``). A collective: every process must call it."""
        self.check_finite_weights(f"at epoch {epoch + 1}, step {step}")
        rng = rng_states(self.context)
        state = {"epoch": epoch, "step": step, "history": self.history, "partial": partial}
        self.write_together(lambda: save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.model, self.optimizer, state,
                                                    rng), f"the checkpoint {position_words(epoch, step)} was")

    def write_together(self, write: Callable[[], None] | None, what: str) -> None:
        """``write`` (a checkpoint file's; None: nothing to write) in the main process, the others waiting
        (:func:`~ban.engine.distributed.on_main`): a write that fails (a full disk, say) raises :meth:`not_saved`'s
        error in every process, so that none waits for the others in vain."""

        def written() -> None:
            try:
                if write is not None:
                    write()
            except DataError as error:
                raise self.not_saved(error, what) from error

        distributed.on_main(written, self.context)

    def not_saved(self, error: DataError, what: str) -> DataError:
        """``error`` (a checkpoint that could not be written), saying that ``what`` "was" (or "were") not saved,
        which checkpoint is kept, and how to go on once the cause is mended."""
        path = self.run_dir / CHECKPOINT_FILE
        try:
            position = read_position(Checkpoint(path))
            kept = f"the previous checkpoint ({position_words(position['epoch'], position['step'])}) is kept"
        except CheckpointError:  # none yet (or unreadable: not this save's doing)
            kept = "and there is no earlier one" if not path.exists() else "the previous checkpoint is kept"
        cause = error.__cause__
        mend = "Make room" if isinstance(cause, OSError) and cause.errno in NO_ROOM else "Mend that"
        go_on = (f"continue with: {resume_command(self.run_dir, self.context.world_size)}" if path.exists()
                 else "run the same command again")
        return DataError(f"{error.message}; {what} not saved, {kept}. {mend}, then {go_on}", path=error.path)


def position_words(epoch: int, step: int) -> str:
    """A checkpoint's training position (``epoch`` finished epochs, ``step`` steps into the next) in words."""
    return f"after epoch {epoch}" if step == 0 else f"at epoch {epoch + 1}, step {step}"


def summed(sums: Tensor, context: DistContext) -> list[float]:
    """The running sums (:data:`SUMS`) of every process added together (a collective)."""
    return torch.stack(distributed.gather_tensor(sums, context)).sum(0).tolist()


def summarise(record: dict[str, Any]) -> str:
    """One line per epoch: loss, scores, speed."""
    text = (f"epoch {record['epoch']}: loss {record['train_loss']:.4f}  train score {record['train_score']:.2f}"
            f"  lr {record['lr']:.2e}  {record['samples_per_s']:.0f} samples/s")
    val = record.get("val")
    if val:
        main = {k: v for k, v in val.items() if isinstance(v, (int, float))}
        text += "  val " + "  ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.2f}" for k, v in main.items())
    return text
