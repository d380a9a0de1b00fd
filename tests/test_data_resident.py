"""Batches gathered from a device-resident copy of the training set equal the loader's collated batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset

from ban.data.collate import collate_vqa
from ban.data.features import FeatureStore
from ban.data.features_tsv import iter_tsv_files
from ban.data.features_writer import write_feature_store
from ban.data.resident import ResidentVQA
from ban.data.vqa_dataset import VQADataset
from ban.engine.tasks import GroundingTask, VQATask
from ban.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resident")
    make_dataset(root, seed=3)
    return root


def test_a_gathered_batch_equals_the_collated_one_across_splits(root):
    dataset = VQATask(root / "prepared").dataset(["train", "val"])
    resident = ResidentVQA(dataset, torch.device("cpu"))
    assert len(resident) == len(dataset)
    rng = np.random.default_rng(0)
    boundary = len(dataset.datasets[0])
    index_sets = [[0], [boundary - 1, boundary], rng.permutation(len(dataset))[:37].tolist(),
                  list(range(len(dataset)))]
    for indices in index_sets:
        expected = collate_vqa([dataset[i] for i in indices])
        gathered = resident.batch(indices)
        assert gathered.keys() == expected.keys()
        for key, value in expected.items():
            assert gathered[key].dtype == value.dtype and torch.equal(gathered[key], value), (key, indices[:3])
    counts = resident.image_count[resident.question_image]
    assert counts.min() < counts.max()  # the sets above mixed box counts: padding was exercised


def test_features_can_be_held_in_bfloat16(root):
    dataset = VQATask(root / "prepared").dataset(["train"])
    resident = ResidentVQA(dataset, torch.device("cpu"), torch.bfloat16)
    batch = resident.batch([3, 1, 4])
    expected = collate_vqa([dataset[i] for i in (3, 1, 4)])
    assert batch["features"].dtype == torch.bfloat16
    assert torch.equal(batch["features"], expected["features"].to(torch.bfloat16))
    assert torch.equal(batch["boxes"], expected["boxes"])  # the geometry stays float32


def test_a_question_whose_image_has_no_features_is_named(root, tmp_path):
    prepared = root / "prepared"
    dataset = VQADataset(prepared, "train")
    dropped = int(dataset.image_ids[5])
    records = (r for r in iter_tsv_files(sorted((root / "raw" / "features").glob("*.tsv")), progress=False)
               if r.image_id != dropped)
    write_feature_store(records, tmp_path / "store")
    first = int(dataset.question_ids[np.flatnonzero(dataset.image_ids == dropped)[0]])
    with pytest.raises(DataError, match=rf"train\.npz: record question_id={first}: field 'image_id': image "
                                        rf"{dropped} has no features"):  # when the split is opened on that store
        VQADataset(prepared, "train", features=FeatureStore.open(tmp_path / "store"))


def test_a_store_damaged_after_preparation_is_named_when_held(root, tmp_path, monkeypatch):
    """The loader reads stores unchecked (they were checked when written); the resident copy checks them, block
    by block (small blocks here: the damaged image is not in the first)."""
    monkeypatch.setattr("ban.data.resident._COPY_ROWS", 16)
    dataset = VQADataset(root / "prepared", "train")
    records = list(iter_tsv_files(sorted((root / "raw" / "features").glob("*.tsv")), progress=False))
    write_feature_store(records, tmp_path / "store")
    damaged = int(dataset.image_ids[7])
    store = FeatureStore.open(tmp_path / "store")
    start = int(store.offsets[store.position(damaged)])
    features = np.load(tmp_path / "store" / "features.npy", mmap_mode="r+")
    features[start + 1, 2] = np.nan
    features.flush()
    held = VQADataset(root / "prepared", "train", features=FeatureStore.open(tmp_path / "store"))
    with pytest.raises(DataError, match=rf"store: record image_id={damaged}: field 'features': NaN or infinite"):
        ResidentVQA(held, torch.device("cpu"))


def test_grounding_refuses_resident_data_with_a_clear_message(tmp_path):
    task = GroundingTask.__new__(GroundingTask)  # the check needs no dataset on disk
    with pytest.raises(ConfigError, match="resident=true is implemented for VQA only"):
        task.resident(None, torch.device("cpu"), "fp32", progress=False)


def test_a_set_larger_than_the_free_memory_is_refused_before_allocating(root, monkeypatch):
    import ban.data.resident as resident

    assert resident.free_memory(torch.device("cpu")) > 2**20  # this machine's MemAvailable is read
    monkeypatch.setattr(resident, "free_memory", lambda device: 1000)
    with pytest.raises(ConfigError, match=r"resident data needs .* GiB on cpu but 0\.0 GiB are free"):
        ResidentVQA(VQATask(root / "prepared").dataset(["train"]), torch.device("cpu"))
