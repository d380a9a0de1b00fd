"""A VQA training set held on the training device, batched by gathering rows: no loader, no collate.

On a fast GPU one loader process delivers about 5,000 questions/s of 2,048-d features (benchmarks/RESULTS.md),
far below what the model trains at. :class:`ResidentVQA` copies once, at start, the regions of every image the
questions use into one ``[R + 1, D]`` tensor on the device (the last row all zeros), and builds each batch with
one gather of ``[B, N]`` row indices: padding slots point at the zero row, so a batch equals what
:func:`ban.data.collate.collate_vqa` makes of the same questions, without per-item Python work. VQA 2.0
train+val with adaptive 10–100 boxes takes ≈ 16 GB of GPU memory in bf16.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from ban.data.features import FeatureStore
from ban.data.transfer import host_to_device
from ban.data.vqa_dataset import vqa_parts
from ban.errors import ConfigError, DataError

_COPY_ROWS = 2**16  # regions staged on the host per copy to the device


class ResidentVQA:
    """The questions, targets and region features of ``dataset`` as tensors on ``device``.

    ``features`` ``[R + 1, D]`` in ``feature_dtype`` and ``spatial`` ``[R + 1, 6]`` float32 hold the regions of
    the questions' images in image-id order (row R: zeros); ``tokens`` ``[Q, L]`` int64 on the device; per
    question its image (host numpy, so that batch shapes are known without a device sync) and its sparse targets.
    """

    def __init__(self, dataset: Dataset, device: torch.device, feature_dtype: torch.dtype = torch.float32,
                 progress: bool = False) -> None:
        parts = vqa_parts(dataset)
        store = parts[0].features
        if any(part.features is not store for part in parts):
            raise ConfigError("resident data needs the splits to share one feature store")
        image_ids = np.concatenate([part.image_ids for part in parts]).astype(np.int64)
        unique_ids, self.question_image = np.unique(image_ids, return_inverse=True)
        counts = store.box_counts(unique_ids)
        self.image_count = counts
        self.image_start = _starts(counts)
        self.zero_row = int(counts.sum())
        self.device, self.num_answers = device, parts[0].num_answers
        self._check_memory(self.zero_row + 1, store.feature_dim, feature_dtype)
        self.features = torch.zeros((self.zero_row + 1, store.feature_dim), dtype=feature_dtype, device=device)
        self.spatial = torch.zeros((self.zero_row + 1, 6), dtype=torch.float32, device=device)
        self._copy_regions(store, unique_ids, progress)

        self.tokens = torch.from_numpy(np.concatenate([part.tokens for part in parts]).astype(np.int64)).to(device)
        self.question_ids = np.concatenate([part.question_ids for part in parts]).astype(np.int64)
        self.target_lengths = np.concatenate([np.diff(part.target_offsets) for part in parts]).astype(np.int64)
        self.target_starts = _starts(self.target_lengths)  # into the concatenated labels
        self.target_labels = np.concatenate([part.target_labels for part in parts])
        self.target_scores = np.concatenate([part.target_scores for part in parts]).astype(np.float32)

    def __len__(self) -> int:
        return len(self.question_ids)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The batch of questions ``indices`` on the device: ``features`` [B, N, D], ``boxes`` [B, N, 6],
        ``box_mask`` [B, N], ``questions`` [B, L], ``targets`` [B, A], ``question_ids`` [B] — the keys, values
        and padding of :func:`ban.data.collate.collate_vqa` (N = the batch's largest box count)."""
        index = np.asarray(indices, dtype=np.int64)
        images = self.question_image[index]
        real = self.box_mask(index).numpy()
        slots = np.arange(real.shape[1])
        rows = np.where(real, self.image_start[images][:, None] + slots[None, :], self.zero_row)
        starts, lengths = self.target_starts[index], self.target_lengths[index]
        label_rows = np.repeat(np.arange(len(index)), lengths)
        label_positions = np.arange(lengths.sum()) + np.repeat(starts - _starts(lengths), lengths)
        # every index in one copy: rows [B·N], the targets' rows and answers [K each], questions and their ids [B]
        packed = host_to_device(np.concatenate([rows.reshape(-1), label_rows, self.target_labels[label_positions],
                                                index, self.question_ids[index]]), self.device)
        rows_on_device, label_rows, label_answers, questions, question_ids = packed.split(
            [rows.size, len(label_rows), len(label_rows), len(index), len(index)])
        rows_on_device = rows_on_device.view(rows.shape)
        targets = torch.zeros((len(index), self.num_answers), dtype=torch.float32, device=self.device)
        targets[label_rows, label_answers] = host_to_device(self.target_scores[label_positions], self.device)
        return {
            "features": self.features[rows_on_device],
            "boxes": self.spatial[rows_on_device],
            "box_mask": rows_on_device != self.zero_row,
            "questions": self.tokens[questions],
            "targets": targets,
            "question_ids": question_ids,
        }

    def box_mask(self, indices: Sequence[int]) -> Tensor:
        """[B, N] bool on the host: True where question ``indices[b]``'s image has a box in slot n (N = the largest
        box count among them), the ``box_mask`` of :meth:`batch` without reading the device."""
        counts = self.image_count[self.question_image[np.asarray(indices, dtype=np.int64)]]
        return torch.from_numpy(np.arange(counts.max())[None, :] < counts[:, None])

    def _copy_regions(self, store: FeatureStore, image_ids: np.ndarray, progress: bool) -> None:
        """Fill rows [0, R) with the images' features and spatial features, staged on the host in blocks; each
        block is checked where it lands (:meth:`_check_finite`)."""
        staged_features, staged_spatial, first_row, staged = [], [], 0, 0
        for image_id in tqdm(image_ids.tolist(), desc="features → device", unit="image", disable=not progress):
            features, spatial, _ = store.get(image_id)
            staged_features.append(features)
            staged_spatial.append(spatial)
            staged += len(features)
            if staged >= _COPY_ROWS:
                end = self._copy_block(staged_features, staged_spatial, first_row)
                self._check_finite(first_row, end, store, image_ids)
                staged_features, staged_spatial, staged, first_row = [], [], 0, end
        if staged_features:
            end = self._copy_block(staged_features, staged_spatial, first_row)
            self._check_finite(first_row, end, store, image_ids)

    def _copy_block(self, features: list[np.ndarray], spatial: list[np.ndarray], first_row: int) -> int:
        block = torch.from_numpy(np.concatenate(features))
        end = first_row + len(block)
        self.features[first_row:end] = block.to(self.device, self.features.dtype)
        self.spatial[first_row:end] = torch.from_numpy(np.concatenate(spatial)).to(self.device)
        return end

    def _check_finite(self, first_row: int, end: int, store: FeatureStore, image_ids: np.ndarray) -> None:
        """Rows [first_row, end) as held on the device are finite, else a :class:`DataError` naming the image (the
        store's values are checked when it is written, not when read; this catches a store damaged since). One
        device read per block of copied regions."""
        for name, table in (("features", self.features), ("spatial", self.spatial)):
            finite = torch.isfinite(table[first_row:end]).all(dim=1)
            if not bool(finite.all()):
                row = first_row + int((~finite).nonzero()[0])
                image_id = int(image_ids[np.searchsorted(self.image_start, row, side="right") - 1])
                raise DataError("NaN or infinite values", path=store.location, record=f"image_id={image_id}",
                                field=name)

    def _check_memory(self, rows: int, width: int, dtype: torch.dtype) -> None:
        """Refuse, before allocating, a set that does not fit in the device's free memory."""
        free = free_memory(self.device)
        needed = rows * (width * torch.empty((), dtype=dtype).element_size() + 6 * 4)
        if free is not None and needed > 0.9 * free:
            raise ConfigError(f"resident data needs {needed / 2**30:.1f} GiB on {self.device} but "
                              f"{free / 2**30:.1f} GiB are free: train with --set resident=false")


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device``: the CUDA allocator's view, or MemAvailable of /proc/meminfo for the CPU; None when
    unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _starts(lengths: np.ndarray) -> np.ndarray:
    """Where each of consecutive runs of ``lengths`` [n] begins: the exclusive prefix sum [n]."""
    return np.cumsum(lengths) - lengths
