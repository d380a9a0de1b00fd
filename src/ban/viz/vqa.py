"""Attention pictures of a VQA run: one question of a prepared split → the model's attention → a PNG.

The model sees exactly what training and evaluation feed it (``VQADataset`` item → ``collate_vqa``); the words,
the ground-truth answers and the image come from the split's official-format files
(``<split>_questions.json``, ``<split>_annotations.json``) and an image folder in the COCO naming convention.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ban.data.collate import collate_vqa
from ban.data.prepared import load_dictionary
from ban.data.tokenizer import tokenize
from ban.data.vqa_dataset import VQADataset
from ban.data.vqa_json import load_annotations, load_questions
from ban.engine.evaluation import non_finite_output, to_device
from ban.engine.tasks import vqa_outputs
from ban.errors import DataError
from ban.viz.attention import AttentionExample, attention_figure
from ban.viz.boxes import find_coco_image, stored_image
from ban.viz.figures import evaluating, save_png
from ban.viz.words import read_labels

PAD_LABEL = "<pad>"
UNITARY_LABEL = "(question)"
# Our split name → the COCO subset its images are named after (test-dev images are in test2015).
IMAGE_SUBSETS = {"train": "train2014", "val": "val2014", "test-dev": "test2015", "test": "test2015"}


def choose_indices(question_ids: np.ndarray, wanted: Sequence[int] | None, num: int, shuffle: bool, seed: int,
                   where: Path) -> list[int]:
    """Positions in the split of the questions to draw: the ``wanted`` question ids (in that order), else the
    first ``num`` (or ``num`` drawn at random with ``seed`` when ``shuffle``)."""
    if wanted:
        position = {int(qid): i for i, qid in enumerate(question_ids.tolist())}
        missing = [qid for qid in wanted if qid not in position]
        if missing:
            raise DataError(f"question ids {missing} are not in this split", path=where, field="question_id")
        return [position[qid] for qid in wanted]
    count = min(num, len(question_ids))
    if shuffle:
        return sorted(random.Random(seed).sample(range(len(question_ids)), count))
    return list(range(count))


class VQAPictures:
    """Draws the attention of ``model`` on questions of ``split`` of the prepared dataset ``data_dir``.

    ``image_dir`` holds the images as ``COCO_<subset>_<12-digit id>.jpg|png`` (None: blank canvases).
    """

    def __init__(self, model: nn.Module, data_dir: Path, split: str, image_dir: Path | None,
                 device: torch.device | None = None) -> None:
        self.model = model
        self.device = device or torch.device("cpu")
        self.data_dir = Path(data_dir)
        self.split = split
        self.image_dir = image_dir
        self.dataset = VQADataset(self.data_dir, split)
        self.labels = self.dataset.answers()
        questions_file = self.data_dir / f"{split}_questions.json"
        annotations_file = self.data_dir / f"{split}_annotations.json"
        self.questions = load_questions(questions_file) if questions_file.is_file() else {}
        self.annotations = ({int(r["question_id"]): r for r in load_annotations(annotations_file)}
                            if annotations_file.is_file() else {})
        self.dictionary = load_dictionary(self.data_dir)

    def words(self, question_id: int, tokens: np.ndarray) -> tuple[str, list[str]]:
        """(question text, one label per token position ``[L]``): the tokenised question as the model read it
        (a word the dictionary does not know as ``word→token read``), padding positions labelled ``<pad>``."""
        padding = self.dictionary.padding_index
        used = int((tokens != padding).sum())
        record = self.questions.get(question_id)
        if record is not None:
            words = tokenize(record["question"])[: len(tokens)]
            if len(words) == used:
                labels = read_labels(words, tokens[:used].tolist(), self.dictionary)
                return record["question"], labels + [PAD_LABEL] * (len(tokens) - used)
        words = [self.dictionary.tokens[t] if t != padding else PAD_LABEL for t in tokens.tolist()]
        return " ".join(w for w in words if w != PAD_LABEL), words

    def example(self, index: int) -> AttentionExample:
        """The attention picture's content for the question at ``index`` of the split."""
        sample = self.dataset[index]
        with evaluating(self.model):
            out = vqa_outputs(self.model, to_device(collate_vqa([sample]), self.device))
        question_id = int(sample["question_id"])
        if not (out.attention.isfinite().all() and out.logits.isfinite().all()):
            raise non_finite_output(self.data_dir, f"question_id={question_id}")
        image_id = int(self.dataset.image_ids[index])
        question, words = self.words(question_id, sample["question"].numpy())
        attention = out.attention[0].float().cpu().numpy()  # [G, N, L]
        if attention.shape[2] == 1:
            words = [UNITARY_LABEL]
        annotation = self.annotations.get(question_id)
        answers = [str(a["answer"]) for a in annotation["answers"]] if annotation else []
        spatial = sample["boxes"].numpy()
        path = None
        if self.image_dir is not None:
            path = find_coco_image(self.image_dir, IMAGE_SUBSETS.get(self.split, self.split), image_id)
        image, found = stored_image(self.dataset.features, image_id, spatial, path)
        return AttentionExample(question_id, image_id, question, words, attention, spatial[:, :4],
                                self.labels[int(out.logits[0].argmax())], answers, image, found)

    def write(self, index: int, out_dir: Path, prefix: str = "") -> tuple[Path, AttentionExample]:
        """Draw the question at ``index`` into ``out_dir/<prefix>q<question id>.png``; (path, what it shows)."""
        example = self.example(index)
        return save_png(attention_figure(example), out_dir / f"{prefix}q{example.question_id}.png"), example
