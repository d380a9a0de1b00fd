"""Grounding pictures: a caption's phrases, each with the box the model scores highest for it, one colour per
phrase and a legend with the phrase text.

The phrase texts come from the official ``Sentences/<image>.txt`` next to the image folder or among the raw files
the dataset was prepared from (the same phrases, in the same order, that ``ban prepare flickr30k`` turned into
entity slots); without it each phrase is named by its last word, the token the model reads it at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image
from torch import nn

from ban.data.collate import collate_grounding
from ban.data.flickr30k import GroundingDataset
from ban.data.flickr30k_parse import Phrase, parse_sentences_file
from ban.data.flickr30k_prepare import entity_positions_of
from ban.data.prepared import load_dictionary, prepared_from
from ban.data.tokenizer import tokenize
from ban.engine.evaluation import non_finite_output, to_device
from ban.engine.tasks import grounding_outputs
from ban.errors import DataError
from ban.viz.boxes import draw_colored_boxes, enlarged, find_plain_image, stored_image
from ban.viz.figures import evaluating, new_figure, save_png
from ban.viz.words import read_labels

PALETTE: tuple[tuple[int, int, int], ...] = (
    (228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0), (166, 86, 40),
    (247, 129, 191), (0, 170, 170), (120, 120, 20), (60, 60, 60),
)


@dataclass
class GroundingExample:
    """One caption's grounding: ``scores`` ``[N, E]`` the model's logits for its N boxes × E phrases,
    ``boxes`` ``[N, 4]`` normalised x1, y1, x2, y2, ``phrases`` the E phrase texts."""

    image_id: int
    caption: str
    phrases: list[str]
    scores: np.ndarray
    boxes: np.ndarray
    image: Image.Image
    image_found: bool

    @property
    def top_boxes(self) -> np.ndarray:
        """``[E]``: the index of the highest-scoring box of each phrase."""
        return self.scores.argmax(axis=0)


def phrase_label(text: str, phrase: Phrase, labels: list[str] | None) -> str:
    """The legend text of ``phrase`` of the caption ``text``: the phrase, followed by those of its words that
    the model read as another token (``a zebraish dog (zebraish→rings)``); ``labels`` are the caption's token
    labels by :func:`ban.viz.words.read_labels` (None: not known, the phrase alone)."""
    if labels is None:
        return text[phrase.start : phrase.end]
    first, last = len(tokenize(text[: phrase.start])), len(tokenize(text[: phrase.end]))
    words = tokenize(text)
    misread = [labels[i] for i in range(first, last) if labels[i] != words[i]]
    return text[phrase.start : phrase.end] + (f" ({', '.join(misread)})" if misread else "")


def phrase_color(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def grounding_figure(example: GroundingExample) -> Figure:
    """The image with each phrase's top box in the phrase's colour, the legend listing the phrases."""
    top = example.top_boxes
    colors = [phrase_color(k) for k in range(len(top))]
    labels = [str(k + 1) for k in range(len(top))]
    drawn = draw_colored_boxes(enlarged(example.image), example.boxes[top], colors, labels)
    figure = new_figure(11.0, 6.5)
    axes = figure.add_axes((0.02, 0.04, 0.58, 0.82))
    axes.imshow(np.asarray(drawn))
    axes.set_xticks([])
    axes.set_yticks([])
    handles = [Patch(facecolor=np.array(color) / 255, edgecolor="black",
                     label=f"{k + 1}. {phrase}  (box {int(top[k])})")
               for k, (phrase, color) in enumerate(zip(example.phrases, colors, strict=True))]
    figure.legend(handles=handles, loc="center left", bbox_to_anchor=(0.62, 0.5), fontsize=10, frameon=False,
                  title="phrase → top-scoring box")
    canvas = "" if example.image_found else "\n(no matching image file: boxes on a blank canvas of the image's size)"
    figure.suptitle(f"image {example.image_id}: {example.caption}{canvas}", fontsize=11, wrap=True)
    return figure


class GroundingPictures:
    """Draws the grounding of ``model`` on captions of ``split`` of the prepared Flickr30k dataset ``data_dir``.

    ``image_dir`` holds ``<image id>.jpg|png``; the phrase texts come from the first of :attr:`sentences_dirs`
    holding the caption's file: ``Sentences/`` beside ``image_dir``, then in the raw files' folder the dataset was
    prepared from (its manifest's ``root``).
    """

    def __init__(self, model: nn.Module, data_dir: Path, split: str, image_dir: Path | None,
                 device: torch.device | None = None) -> None:
        self.model = model
        self.device = device or torch.device("cpu")
        self.dataset = GroundingDataset(data_dir, split)
        self.dictionary = load_dictionary(data_dir)
        self.image_dir = image_dir
        root = prepared_from(Path(data_dir))
        folders = ([] if image_dir is None else [image_dir.parent]) + ([] if root is None else [root])
        self.sentences_dirs = [folder / "Sentences" for folder in folders]

    def __len__(self) -> int:
        return len(self.dataset)

    def sentences_file(self, image_id: int) -> Path | None:
        """The first ``<image_id>.txt`` of :attr:`sentences_dirs` that is there, or None."""
        paths = (folder / f"{image_id}.txt" for folder in self.sentences_dirs)
        return next((path for path in paths if path.is_file()), None)

    def texts(self, index: int, positions: list[int]) -> tuple[str, list[str]]:
        """(caption, the phrase text of each entity slot) of the caption at ``index``; a phrase with words the
        dictionary does not know ends with them as the model read them: ``a zebraish dog (zebraish→rings)``."""
        arrays = self.dataset.arrays
        image_id, caption_index = int(arrays["image_id"][index]), int(arrays["caption_index"][index])
        tokens = arrays["tokens"][index].tolist()
        padding = self.dictionary.padding_index
        indices = [t for t in tokens if t != padding]
        words = [self.dictionary.tokens[t] for t in indices]
        path = self.sentences_file(image_id)
        captions = [] if path is None else parse_sentences_file(path)
        if caption_index < len(captions):
            caption = captions[caption_index]
            caption_words = tokenize(caption.text)
            labels = (read_labels(caption_words, indices, self.dictionary)
                      if len(caption_words) == len(indices) else None)
            prepared_positions = entity_positions_of(self.dataset.data_dir, self.dataset.manifest)
            keeps_tokenless = prepared_positions == "reference"  # as prepared
            phrases = [phrase_label(caption.text, p, labels) for p in caption.phrases
                       if p.is_visual and (keeps_tokenless or tokenize(caption.text[p.start:p.end]))]
            if len(phrases) >= len(positions):
                return caption.text, phrases[: len(positions)]
        return " ".join(words), [f"…{words[p]}" if p < len(words) else f"token {p}" for p in positions]

    def example(self, index: int) -> GroundingExample:
        """The grounding picture's content for the caption at ``index`` of the split."""
        if not 0 <= index < len(self.dataset):
            raise DataError(f"caption index {index} is outside the split (0–{len(self.dataset) - 1})",
                            path=self.dataset.data_dir)
        sample = self.dataset[index]
        with evaluating(self.model):
            out = grounding_outputs(self.model, to_device(collate_grounding([sample]), self.device))
        used = sample["entity_mask"].numpy()
        positions = sample["entity_positions"].numpy()[used].tolist()
        caption, phrases = self.texts(index, positions)
        image_id = int(sample["image_id"])
        if not out.logits.isfinite().all():
            raise non_finite_output(self.dataset.data_dir, f"sentence {index} (image_id={image_id})")
        scores = out.logits[0, 0].float().cpu().numpy()[:, used]  # [N, E_used]
        spatial = sample["boxes"].numpy()
        path = None if self.image_dir is None else find_plain_image(self.image_dir, image_id)
        image, found = stored_image(self.dataset.store, image_id, spatial, path)
        return GroundingExample(image_id, caption, phrases, scores, spatial[:, :4], image, found)

    def write(self, index: int, out_dir: Path, prefix: str = "") -> tuple[Path, GroundingExample]:
        """Draw the caption at ``index`` into ``out_dir/<prefix>caption<index>_image<id>.png``."""
        example = self.example(index)
        name = f"{prefix}caption{index}_image{example.image_id}.png"
        return save_png(grounding_figure(example), out_dir / name), example
