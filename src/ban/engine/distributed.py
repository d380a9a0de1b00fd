"""Data-parallel training under ``torchrun``: process group set-up, batch sharding, small collectives.

The same ``ban train`` command runs in one process or under ``torchrun --nproc_per_node K``. The global batch of
``batch_size`` samples is cut into K nearly equal contiguous parts, one per process; each process divides its
summed loss by the GLOBAL batch size and multiplies it by K, so that DDP's gradient averaging yields exactly the
gradient of the whole batch: training equals single-process training on the same global batches (up to float
summation order). Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from ban import launch
from ban.engine.config import resolve_device
from ban.errors import BanError, ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", setting: str = "training setting 'device'") -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); pick the device.

    ``device``: ``"auto"`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``
    (:func:`ban.engine.config.resolve_device`: one this machine lacks is a :class:`ConfigError` naming
    ``setting``, said before the process group is joined). Under torchrun with CUDA each process takes a GPU of
    its own (:func:`local_gpu`).
    """
    processes = launch.world_size()
    chosen = resolve_device(device, setting)
    if processes > 1:
        if chosen.type == "cuda":
            chosen = torch.device("cuda", local_gpu(chosen, launch.local_rank(), torch.cuda.device_count(), setting))
            torch.cuda.set_device(chosen)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        return DistContext(dist.get_rank(), processes, chosen)
    return DistContext(0, 1, chosen)


def local_gpu(requested: torch.device, local_rank: int, visible: int, setting: str) -> int:
    """The index of the GPU a torchrun process with ``local_rank`` takes among the ``visible`` ones it sees: the
    ``local_rank``-th, or the only one (a GPU per process, as SLURM's ``--gpus-per-task=1`` makes it). A GPU named
    by index (``requested`` ``cuda:N``) or a rank beyond the GPUs is a :class:`ConfigError` naming ``setting``."""
    if requested.index is not None:
        raise ConfigError(f"{setting}: under torchrun each process takes the GPU of its local rank; give cuda or "
                          f"auto, not {requested}")
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise ConfigError(f"this process has local rank {local_rank} but sees {visible} GPUs: start at most "
                          f"{visible} processes per machine (torchrun --nproc_per_node)")
    return local_rank


def teardown() -> None:
    """Leave the process group, if any, once nothing holds it any more. A DDP wrapper lives in reference cycles:
    left to the garbage collector, it may be freed during the interpreter's exit, with its process group and that
    group's last work — the likely cause of gloo's rare abort at exit ("terminate called without an active
    exception") that ended a torchrun test with SIGABRT after its run had finished. So collect first."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def any_process(flag: bool, context: DistContext) -> bool:
    """True if ``flag`` is True in at least one process (all processes must call this together)."""
    if not context.distributed:
        return flag
    value = torch.tensor([float(flag)], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(context: DistContext) -> None:
    """Wait for every process (no-op in a single process)."""
    if context.distributed:
        dist.barrier()


def gather_tensor(tensor: torch.Tensor, context: DistContext) -> list[torch.Tensor]:
    """The same-shaped ``tensor`` of every process, in rank order (a one-element list in a single process)."""
    if not context.distributed:
        return [tensor]
    moved = tensor.to(context.device)
    parts = [torch.empty_like(moved) for _ in range(context.world_size)]
    dist.all_gather(parts, moved)
    return [p.cpu() for p in parts]


def gather_objects(value: Any, context: DistContext) -> list[Any]:
    """The picklable ``value`` of every process, in rank order (a one-element list in a single process)."""
    if not context.distributed:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def everywhere(error: BanError) -> BanError:
    """``error``, marked as raised alike by every process (:attr:`ban.errors.BanError.every_process`)."""
    error.every_process = True
    return error


def gather_or_raise(value: Any, problem: BanError | None, context: DistContext) -> list[Any]:
    """Every process's picklable ``value``, in rank order, once all got here (a one-element list in a single
    process) — unless a process met a ``problem``: then every process raises one, :func:`everywhere`, so that
    none waits for the others in vain: its own, else the first process's (by rank)."""
    outcomes = gather_objects((value, problem), context)
    problems = [met for _, met in outcomes if met is not None]
    if problems:
        raise everywhere(problem if problem is not None else problems[0])
    return [kept for kept, _ in outcomes]


def on_main(work: Callable[[], T], context: DistContext) -> T | None:
    """``work()`` in the main process alone (a file only it writes), the others waiting for it: → its value there,
    None in the others. A :class:`BanError` it meets is raised in every process (said once), and so is a Ctrl-C
    or SIGTERM that stops it (its ``KeyboardInterrupt``), so that no process waits in vain at the next collective
    for a main process that has gone."""
    value, problem = None, None
    if context.is_main:
        try:
            value = work()
        except (BanError, KeyboardInterrupt) as error:
            if not context.distributed:
                raise
            problem = error
    if context.distributed:
        met = gather_objects(problem, context)[0]  # the main process's
        if met is not None:
            met = problem if context.is_main else met  # the main process's own: its traceback and cause kept
            raise met if isinstance(met, KeyboardInterrupt) else everywhere(met)
    return value


def run_together(function: Callable[[], T], context: DistContext) -> T:
    """``function()`` in every process, then :func:`gather_or_raise`: its value in this process once every process
    has run it, or the :class:`BanError` that any process met, raised in all (said once)."""
    problem = None
    try:
        value = function()
    except BanError as error:
        problem = error
    gather_or_raise(None, problem, context)
    return value


class ShardedBatches(Sampler[list[int]]):
    """One epoch of batches: a seeded permutation, cut into global batches, each split across the processes.

    ``global_sizes[k]`` is the size of global batch k (the loss denominator). Iteration yields this process's
    indices of each batch from ``start`` on (to resume mid-epoch). In a multi-process run a final global batch
    smaller than the number of processes is dropped (a process must not get an empty batch).

    With ``sizes`` (each sample's box count), batches are bucketed: the permutation is cut into runs of
    :data:`BUCKET_BATCHES` batches, each run sorted by size and cut into batches, and the batches of the epoch
    shuffled, the one smaller batch last (as unbucketed: the batches before a resume position are the same whatever
    the number of processes, which drops it or not) — so a batch holds images of similar box counts (little
    padding, few distinct shapes) while every sample still comes once per epoch in a seeded order.

    >>> list(ShardedBatches(6, batch_size=4, seed=0, epoch=0, shuffle=False, rank=1, world_size=2))
    [[2, 3], [5]]
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        sizes: Sequence[int] | None = None,
    ) -> None:
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(num_samples, generator=generator) if shuffle else torch.arange(num_samples)
        if sizes is None:
            batches = list(order.split(batch_size))
        else:
            batches = bucketed_batches(order, torch.as_tensor(sizes), batch_size, generator)
        batches = [b for b in batches if len(b) >= world_size]
        self.global_sizes = [len(b) for b in batches][start:]
        self._local = [b.tensor_split(world_size)[rank].tolist() for b in batches][start:]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._local)

    def __len__(self) -> int:
        return len(self._local)


BUCKET_BATCHES = 64  # batches whose samples are sorted by size together


def bucketed_batches(order: Tensor, sizes: Tensor, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """``order`` [S] int64 (sample indices) cut into runs of :data:`BUCKET_BATCHES` batches, each run stably sorted
    by ``sizes`` [len(dataset)] (each sample's box count) and cut into batches of ``batch_size`` → int64 index
    tensors, in a seeded random order but for the last run's last, smaller batch, which comes last."""
    batches = []
    for run in order.split(BUCKET_BATCHES * batch_size):
        by_size = run[torch.sort(sizes[run], stable=True).indices]
        batches.extend(by_size.split(batch_size))
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return sorted(shuffled, key=lambda batch: len(batch) < batch_size)  # stable: only the smaller batch moves
