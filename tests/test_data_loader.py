"""ban.data.loader.BatchLoader: a bad-input error from reading or collating a batch reaches the caller as itself,
from real worker processes as from this one."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from ban.data.loader import BatchLoader
from ban.errors import DataError


class DamagedAt(Dataset):
    """Samples 0..7 (a tensor each); reading sample ``bad`` raises the DataError a damaged feature file gives."""

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == self.bad:
            raise DataError("value 19 is nan: NaN or infinite", path="features.hdf5", record=f"image_id={index}",
                            field="image_features")
        return torch.tensor([index])


def refuse_odd_sums(samples: list[torch.Tensor]) -> torch.Tensor:
    batch = torch.stack(samples)
    if int(batch.sum()) % 2:
        raise DataError("odd", path="collate", record=str(batch.flatten().tolist()))
    return batch


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_reading_a_sample_is_raised_as_itself(workers: int) -> None:
    loader = BatchLoader(DamagedAt(5), batch_sampler=[[0, 1], [4, 5], [6, 7]], collate_fn=torch.stack,
                         num_workers=workers)
    seen = []
    with pytest.raises(DataError) as caught:
        for batch in loader:
            seen.append(batch.flatten().tolist())
    assert seen == [[0, 1]]
    assert str(caught.value) == ("features.hdf5: record image_id=5: field 'image_features': value 19 is nan: NaN or "
                                 "infinite")  # no "Caught DataError in DataLoader worker process 0", no traceback
    assert (caught.value.path, caught.value.record, caught.value.field) == (
        "features.hdf5", "image_id=5", "image_features")


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_collating_a_batch_is_raised_as_itself(workers: int) -> None:
    loader = BatchLoader(DamagedAt(-1), batch_sampler=[[0, 2], [2, 3]], collate_fn=refuse_odd_sums,
                         num_workers=workers)
    iterator = iter(loader)
    assert next(iterator).flatten().tolist() == [0, 2]
    with pytest.raises(DataError) as caught:
        next(iterator)
    assert str(caught.value) == "collate: record [2, 3]: odd"


def test_a_loader_without_errors_gives_every_batch_in_order() -> None:
    loader = BatchLoader(DamagedAt(-1), batch_sampler=[[7, 1], [0], [2, 3, 4]], collate_fn=torch.stack,
                         num_workers=2)
    assert [batch.flatten().tolist() for batch in loader] == [[7, 1], [0], [2, 3, 4]]
    assert len(loader) == 3
