"""A DataLoader whose bad-input errors reach the caller as they were raised, also from worker processes, and
whose workers leave SIGTERM to the caller.

PyTorch re-raises an exception from a loader worker as a new one of the same type whose message holds the
worker's whole traceback, so ``ban``'s one-line error ("FILE: record R: field F: what is wrong") would be printed
under ten lines of frames. :class:`BatchLoader` carries a :class:`~ban.errors.BanError` back as the batch instead
(pickled whole: message, file, record and field) and raises it in the caller's process, the same with and without
workers.

A SIGTERM sent to a whole process group (torchrun's to each of its workers, a scheduler's) reaches the loader's
processes too; had they died of it, the caller's next batch would fail with PyTorch's "DataLoader worker is killed
by signal" before it could finish its step and save (``ban train``) or take back what it was writing. So they
ignore it, as PyTorch's workers ignore Ctrl-C (a scheduler may signal every process of a job, whatever its
process group). They end when the caller shuts the loader down, or within seconds of its death (PyTorch's
workers watch their parent); the price: a worker still busy when the loader gives up waiting for it at shutdown
is no longer ended by the SIGTERM PyTorch then sends, but finishes its batch first.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset

from ban.errors import BanError


class _Raised:
    """A :class:`BanError` raised while a batch was read or collated, carried back in place of the batch."""

    def __init__(self, error: BanError) -> None:
        self.error = error


class _ErrorsAsBatches(Dataset):
    """``dataset`` read a batch at a time, a :class:`BanError` on the way returned as :class:`_Raised`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> list[Any] | _Raised:
        try:
            return [self.dataset[index] for index in indices]
        except BanError as error:
            return _Raised(error)


class _CollateOrCarry:
    """``collate`` applied to a batch's samples; a :class:`_Raised` passed on, a :class:`BanError` carried."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, samples: list[Any] | _Raised) -> Any:
        if isinstance(samples, _Raised):
            return samples
        try:
            return self.collate(samples)
        except BanError as error:
            return _Raised(error)


def _ignore_sigterm(worker_id: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class BatchLoader(DataLoader):
    """``DataLoader(dataset, batch_sampler=…, collate_fn=…, **options)`` that raises a :class:`BanError` of reading
    or collating a batch as itself, in this process, and whose workers ignore SIGTERM (see the module's
    docstring)."""

    def __init__(self, dataset: Dataset, *, batch_sampler: Any, collate_fn: Callable[[list[Any]], Any],
                 **options: Any) -> None:
        super().__init__(_ErrorsAsBatches(dataset), batch_sampler=batch_sampler,
                         collate_fn=_CollateOrCarry(collate_fn), worker_init_fn=_ignore_sigterm, **options)

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            if isinstance(batch, _Raised):
                raise batch.error
            yield batch
