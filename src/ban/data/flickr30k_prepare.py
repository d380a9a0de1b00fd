"""``ban prepare flickr30k``: the official Flickr30k Entities files + region features → a prepared grounding
dataset directory (layout: docs/data-formats.md, "Prepared grounding dataset").

What an example is (as the reference pipeline, with one fix):

- one example per caption that has at least one phrase with ground-truth boxes; its entity slots are the
  caption's visual phrases in order (non-visual phrases — entity id 0, type ``notvisual`` — are skipped);
  phrases whose entity has no box (``nobndbox``, scene entities, or named by no object) are kept with
  ``has_ground_truth = False`` so they can be scored or masked, but only entities with ground truth count;
- the entity's position is the index of the phrase's LAST token in the caption as the model reads it: the
  caption with its markup removed, tokenised by :func:`ban.data.tokenizer.tokenize` (the question tokeniser).
  The reference instead searched the phrase's words in the caption split on single spaces — not the token
  list it fed the model (which drops ``,``/``?`` and splits off ``'s``), and finding the first occurrence of
  the words even when the phrase is a later one — so its positions could point at other words. Here the
  position is the token that holds the phrase's last character, found by tokenising the caption up to that
  character (a prefix tokenises to a prefix of the token list), so it is right by construction;
- targets: the detected boxes with IoU ≥ 0.5 to any ground-truth box of the entity (IoU as the reference:
  corners used as given, ``intersection / union``).

``entity_positions="reference"`` (``--entity-positions reference``) gives the reference's positions instead, the
ones the authors' released Flickr30k model was trained and evaluated on (so that ``ban import`` of it computes
their outputs): the caption is the reference's ``remove_annotations`` text (:attr:`Caption.reference_text`),
the tokens are that text tokenised, and a phrase's position is the index of the last word of the first run of
its written words split on single spaces (:attr:`Phrase.written`) in that text split on single spaces
(:func:`reference_position`). After a `` , `` (a word there, no token) the position is one too far (after a
glued ``'s``, one word but two tokens, one too near), a repeated phrase points at its first occurrence, and a
position may fall past the caption's tokens (on a padding token: the arrays are made long enough). A visual
phrase whose words tokenise to nothing is kept (the authors' model saw it); a phrase not found (which the
reference asserts never happens, for every phrase, non-visual ones too) is a :class:`DataError`.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ban.data.atomic import atomic_path, write_json
from ban.data.boxes import box_iou
from ban.data.dictionary import Dictionary
from ban.data.feature_setup import finished_conversion, set_up_features
from ban.data.feature_sources import check_feature_sources, images_of_sources
from ban.data.features import LISTING, FeatureRecord, is_tsv_source
from ban.data.flickr30k_parse import ENTITY_TYPES, Caption, parse_annotation_file, parse_sentences_file, type_bits
from ban.data.glove import check_glove_file, read_glove, report_coverage
from ban.data.npyfile import offsets_of, write_npy, write_npz
from ban.data.prepare_output import checked_output
from ban.data.prepared import DICTIONARY, FORMAT_VERSION, GLOVE, MANIFEST
from ban.data.textfile import read_text
from ban.data.tokenizer import tokenize
from ban.data.vqa2 import nested_root_hint
from ban.errors import ConfigError, DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")
IOU_THRESHOLD = 0.5
# a given dictionary that does not know more than this share of the caption words gets a warning (its last token
# stands for each of them): likely a dictionary of other data; the captions' own has none unknown, the
# reference's Flickr30k dictionary.pkl (built from the same captions) next to none
UNKNOWN_WORDS_WARNING = 0.10
ENTITY_POSITIONS: tuple[str, ...] = ("tokens", "reference")  # the first is the default
POSITION_IN_WORDS = {
    "tokens": "last token of the phrase in the tokenised caption",
    "reference": "the reference's: last word of the phrase's first occurrence in the caption split on single spaces",
}

Box = tuple[float, float, float, float]


@dataclass
class GroundedSentence:
    """One caption ready to be encoded: its tokens and, per entity slot, position / id / type bits / whether
    the entity has ground-truth boxes."""

    image_id: int
    caption_index: int
    tokens: list[str]
    positions: list[int] = field(default_factory=list)
    entity_ids: list[int] = field(default_factory=list)
    type_bits: list[int] = field(default_factory=list)
    has_ground_truth: list[bool] = field(default_factory=list)


@dataclass
class ParseStats:
    """Counts of what was left out, reported in the manifest."""

    captions: int = 0
    non_visual_phrases: int = 0
    phrases_without_tokens: int = 0
    captions_without_grounded_entities: int = 0


def positive_boxes(ground_truth: dict[int, list[Box]], detected: np.ndarray) -> dict[int, np.ndarray]:
    """Entity id → indices of the ``detected`` boxes ``[N, 4]`` with IoU ≥ 0.5 to any of its ground-truth
    boxes (int64, ascending)."""
    if not ground_truth or len(detected) == 0:
        return {entity_id: np.zeros(0, dtype=np.int64) for entity_id in ground_truth}
    owners = np.array([entity_id for entity_id, boxes in ground_truth.items() for _ in boxes])
    rows = np.array([box for boxes in ground_truth.values() for box in boxes], dtype=np.float64)
    matches = box_iou(rows, np.asarray(detected, dtype=np.float64)) >= IOU_THRESHOLD  # [G, N]
    return {entity_id: np.flatnonzero(matches[owners == entity_id].any(0)) for entity_id in ground_truth}


def entity_positions_of(data_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> str:
    """How the grounding dataset prepared in ``data_dir`` (its ``manifest``) computed its entity positions:
    ``"tokens"`` or ``"reference"`` (``--entity-positions``); a dataset prepared before the choice existed has no
    key and is ``"tokens"``. Any other value: :class:`DataError`."""
    positions = manifest.get("entity_positions", ENTITY_POSITIONS[0])
    if positions not in ENTITY_POSITIONS:
        raise DataError(f"expected {' or '.join(map(repr, ENTITY_POSITIONS))}, got {positions!r}",
                        path=Path(data_dir) / MANIFEST, field="entity_positions")
    return positions


def reference_position(words: Sequence[str], phrase: Sequence[str]) -> int:
    """The reference's entity position: the index in ``words`` of the last word of the first (leftmost) run of
    ``phrase``'s words, ``-1`` when there is none.

    >>> reference_position("a man , a man .".split(" "), ["a", "man"])
    1
    """
    size = len(phrase)
    wanted = list(phrase)
    for start in range(len(words) - size + 1):
        if list(words[start:start + size]) == wanted:
            return start + size - 1
    return -1


def ground_caption(caption: Caption, image_id: int, caption_index: int, has_boxes: set[int],
                   stats: ParseStats, *, entity_positions: str = "tokens",
                   path: str | os.PathLike[str] | None = None) -> GroundedSentence | None:
    """The example of one caption, or None if none of its phrases has ground-truth boxes. ``entity_positions``:
    ``"tokens"`` (ban's positions) or ``"reference"`` (the reference's; see the module docstring; ``path``, the
    Sentences file, names it in the error for a phrase not found)."""
    reference = entity_positions == "reference"
    sentence = GroundedSentence(image_id, caption_index,
                                tokenize(caption.reference_text if reference else caption.text))
    words = caption.reference_text.split(" ") if reference else []
    for phrase in caption.phrases:
        # the reference searched every phrase, non-visual ones too, and asserted it found it
        position = reference_position(words, phrase.written.split(" ")) if reference else 0
        if position < 0:
            raise DataError(f"phrase {phrase.written!r} is not in the caption split on single spaces "
                            f"({caption.reference_text!r}), where the reference's entity position is searched",
                            path=path, record=f"line {caption.line_number}", field="phrase")
        if not phrase.is_visual:
            stats.non_visual_phrases += 1
            continue
        if not reference:  # ban's: the token that holds the phrase's last character; none: no slot
            if not tokenize(caption.text[phrase.start:phrase.end]):
                stats.phrases_without_tokens += 1
                continue
            position = len(tokenize(caption.text[:phrase.end])) - 1
        sentence.positions.append(position)
        sentence.entity_ids.append(phrase.entity_id)
        sentence.type_bits.append(type_bits(phrase.types))
        sentence.has_ground_truth.append(phrase.entity_id in has_boxes)
    if not any(sentence.has_ground_truth):
        stats.captions_without_grounded_entities += 1
        return None
    return sentence


def read_split(path: str | os.PathLike[str], *, missing: str = "split list not found") -> list[int]:
    """Image ids of a split list (``train.txt``: one id a line); ``missing``: the message when there is none."""
    lines = read_text(path, missing=missing).split("\n")
    ids = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                ids.append(int(line.strip()))
            except ValueError:
                raise DataError(f"expected an image id, got {line.strip()[:40]!r}", path=path,
                                record=f"line {number}", field="image_id") from None
    return ids


def parse_splits(
    root: Path, split_images: dict[str, list[int]], progress: bool, entity_positions: str = "tokens"
) -> tuple[dict[str, list[GroundedSentence]], dict[int, dict[int, list[Box]]], dict[int, tuple[int, int]],
           ParseStats]:
    """Parse the Sentences and Annotations files of every listed image: the kept examples of each split, each
    image's ground-truth boxes by entity id, each image's (width, height) and what was left out."""
    stats = ParseStats()
    sentences: dict[str, list[GroundedSentence]] = {split: [] for split in split_images}
    ground_truth: dict[int, dict[int, list[Box]]] = {}
    sizes: dict[int, tuple[int, int]] = {}
    total = sum(len(images) for images in split_images.values())
    with tqdm(total=total, desc="parsing Flickr30k Entities", unit="img", disable=not progress) as bar:
        for split, images in split_images.items():
            for image_id in images:
                annotation = parse_annotation_file(root / "Annotations" / f"{image_id}.xml")
                ground_truth[image_id] = annotation.boxes
                sizes[image_id] = (annotation.width, annotation.height)
                sentences_path = root / "Sentences" / f"{image_id}.txt"
                captions = parse_sentences_file(sentences_path)
                stats.captions += len(captions)
                with_boxes = set(annotation.boxes)
                for index, caption in enumerate(captions):
                    sentence = ground_caption(caption, image_id, index, with_boxes, stats,
                                              entity_positions=entity_positions, path=sentences_path)
                    if sentence is not None:
                        sentences[split].append(sentence)
                bar.update()
    return sentences, ground_truth, sizes, stats


def prepare_flickr30k(
    root: str | os.PathLike[str],
    features: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    splits: Sequence[str] = SPLITS,
    dictionary: Dictionary | None = None,
    glove: str | os.PathLike[str] | None = None,
    feature_dtype: str = "float32",
    entity_positions: str = "tokens",
    progress: bool = True,
) -> dict[str, Any]:
    """Build the prepared grounding dataset at ``out`` (atomically: ``out`` appears complete or not at all, and
    a previous dataset there stays whole until then; ``manifest.json`` is written last) and return its
    manifest. ``out`` must be missing, empty or an earlier grounding dataset, with no input inside it
    (:func:`ban.data.prepare_output.checked_output`).

    ``root`` holds ``Sentences/``, ``Annotations/`` and ``<split>.txt``; ``features`` are bottom-up TSV files
    (converted into ``out/features``, keeping only the images of ``splits``; a finished conversion of the same
    files and images is reused) and/or sources :meth:`FeatureStore.open` reads (the authors' HDF5 caches, our
    store directories), all listed in ``out/features.json`` (:mod:`ban.data.feature_setup`). ``dictionary``
    defaults to the tokens of the kept captions in order of first appearance. ``glove`` (a GloVe text file) gives
    ``glove.npy``, the word table's initialisation (the reference starts its grounding model from GloVe); how
    many of the dictionary's words it holds is printed on stderr and kept in the manifest (``glove_coverage``).
    A given ``dictionary`` that does not know many of the caption words gets a warning on stderr
    (:func:`warn_unknown_words`).
    Everything but the features is read first. Each annotation's ``<size>`` must be the image size the features
    were detected on (the authors' HDF5 cache keeps no image sizes: its images are not checked).
    ``entity_positions``: ``"tokens"`` (ban's, the phrase's last token) or ``"reference"`` (the authors' procedure,
    which their released model needs; see the module docstring), recorded in the manifest.
    """
    if entity_positions not in ENTITY_POSITIONS:
        raise ConfigError(f"unknown entity positions {entity_positions!r}; choose {' or '.join(ENTITY_POSITIONS)}")
    root = Path(root)
    out = checked_output(out, "grounding", {"root": [root], "features": features, "glove": [glove]})
    check_feature_sources(features)
    if glove is not None:
        check_glove_file(glove)
    hint = nested_root_hint(root, "flickr30k", lambda nested: all((nested / f"{split}.txt").is_file()
                                                                for split in splits))
    split_images = {split: read_split(root / f"{split}.txt", missing=f"split list not found{hint}") for split in splits}
    _check_disjoint(split_images, root)
    sentences, ground_truth, sizes, stats = parse_splits(root, split_images, progress, entity_positions)
    for split in splits:  # a split with nothing to train on or score would fail only when used
        if not sentences[split]:
            raise DataError(f"no caption of split {split!r} has a phrase with ground-truth boxes",
                            path=root / f"{split}.txt")
    kept = [sentence for split in splits for sentence in sentences[split]]
    if dictionary is None:
        dictionary = Dictionary(token for sentence in kept for token in sentence.tokens)
    else:
        warn_unknown_words(dictionary, kept)
    # every position indexes inside the token rows: a reference position may lie past its caption's tokens (the
    # state there is the GRU's after the caption and padding, as the reference pads its rows to 82 tokens)
    length = max(max(len(sentence.tokens), max(sentence.positions, default=0) + 1) for sentence in kept)
    max_entities = max(len(sentence.entity_ids) for sentence in kept)
    word_vectors, glove_coverage = None, None
    if glove is not None:
        word_vectors, found = read_glove(glove, dictionary.tokens, progress=progress)
        glove_coverage = report_coverage(glove, found, len(dictionary))

    wanted = set(ground_truth)
    # before the conversion, which takes minutes; TSV files are converted for the wanted images only (so an image
    # they hold twice matters only if wanted), the other sources are referenced whole
    held_once = wanted if all(is_tsv_source(source) for source in features) else None
    holders = images_of_sources(features, wanted, held_once=held_once,
                                converted=finished_conversion(features, out, images=wanted), progress=progress)
    if holders is not None:
        _check_images_have_features(wanted, holders, features)
    with atomic_path(out) as temp:
        temp.mkdir()
        # image id → its boxes [n, 4] in pixels, its (width, height) and where it was read, as the conversion streams
        detected: dict[int, tuple[np.ndarray, tuple[int, int], str]] = {}

        def keep_boxes(record: FeatureRecord) -> None:
            where = f"{record.path} line {record.line}"
            detected[record.image_id] = record.boxes, (record.image_w, record.image_h), where

        store = set_up_features(features, out, temp, dtype=feature_dtype, images=wanted, on_record=keep_boxes,
                                progress=progress)
        positives: dict[int, dict[int, np.ndarray]] = {}
        present = [image_id for image_id in store.image_ids.tolist() if image_id in wanted]
        for image_id in tqdm(present, desc="matching boxes", unit="img", disable=not progress):
            boxes, size, where = detected[image_id] if image_id in detected else (
                store.boxes(image_id), store.image_size(image_id), ", ".join(map(str, features)))
            _check_same_size(image_id, sizes[image_id], size, root, where)
            positives[image_id] = positive_boxes(ground_truth[image_id], boxes)
        _check_images_have_features(wanted, positives, features)  # a TSV source read only once (a pipe): now
        split_summaries = {}
        for split in splits:
            arrays = encode_split(sentences[split], positives, dictionary, length, max_entities)
            write_npz(temp / f"{split}.npz", arrays)
            split_summaries[split] = _split_summary(arrays, len(split_images[split]))
        dictionary.save(temp / DICTIONARY)
        if word_vectors is not None:
            write_npy(temp / GLOVE, word_vectors)
        manifest = {
            "task": "grounding",
            "dataset": "flickr30k_entities",
            "format_version": FORMAT_VERSION,
            "root": str(Path(root).resolve()),
            "splits": split_summaries,
            "num_tokens": len(dictionary),
            "padding_index": dictionary.padding_index,
            "sentence_length": length,
            "max_entities": max_entities,
            "feature_dim": store.feature_dim,
            "features": LISTING,
            "glove": glove is not None,
            "glove_coverage": glove_coverage,
            "entity_types": list(ENTITY_TYPES),
            "iou_threshold": IOU_THRESHOLD,
            "entity_position": POSITION_IN_WORDS[entity_positions],
            "entity_positions": entity_positions,
            "left_out": {
                "non_visual_phrases": stats.non_visual_phrases,
                "phrases_without_tokens": stats.phrases_without_tokens,
                "captions_without_grounded_entities": stats.captions_without_grounded_entities,
            },
            "captions": stats.captions,
        }
        write_json(temp / MANIFEST, manifest)
    return manifest


def warn_unknown_words(dictionary: Dictionary, sentences: Sequence[GroundedSentence]) -> None:
    """Warn on stderr when ``dictionary`` does not know more than :data:`UNKNOWN_WORDS_WARNING` (10 %) of the
    caption words of ``sentences`` (each occurrence counted), naming the most frequent of them."""
    words = Counter(token for sentence in sentences for token in sentence.tokens)
    unknown = Counter({word: count for word, count in words.items() if word not in dictionary})
    total, missing = words.total(), unknown.total()
    if missing > UNKNOWN_WORDS_WARNING * total:
        examples = ", ".join(repr(word) for word, _ in unknown.most_common(5))
        print(f"ban: warning: the given dictionary does not know {100 * missing / total:.1f} % of the caption words "
              f"({missing} of {total}; most often {examples}): each is encoded as its last token "
              f"({dictionary.tokens[-1]!r}); was it made for other data?", file=sys.stderr)


def encode_split(
    sentences: Sequence[GroundedSentence],
    positives: dict[int, dict[int, np.ndarray]],
    dictionary: Dictionary,
    length: int,
    max_entities: int,
) -> dict[str, np.ndarray]:
    """The arrays of one split's ``.npz`` (S sentences, L = ``length``, E = ``max_entities``)."""
    count = len(sentences)
    tokens = np.full((count, length), dictionary.padding_index, dtype=np.int32)
    positions = np.zeros((count, max_entities), dtype=np.int64)
    entity_ids = np.zeros((count, max_entities), dtype=np.int64)
    entity_types = np.zeros((count, max_entities), dtype=np.int64)
    has_ground_truth = np.zeros((count, max_entities), dtype=bool)
    sizes = np.zeros(count * max_entities, dtype=np.int64)
    boxes: list[np.ndarray] = []
    for row, sentence in enumerate(sentences):
        tokens[row, : len(sentence.tokens)] = [dictionary.index_of(token) for token in sentence.tokens]
        used = len(sentence.entity_ids)
        positions[row, :used] = sentence.positions
        entity_ids[row, :used] = sentence.entity_ids
        entity_types[row, :used] = sentence.type_bits
        has_ground_truth[row, :used] = sentence.has_ground_truth
        image_positives = positives[sentence.image_id]
        for slot, entity_id in enumerate(sentence.entity_ids):
            found = image_positives.get(entity_id)
            if found is not None and len(found):
                boxes.append(found)
                sizes[row * max_entities + slot] = len(found)
    return {
        "image_id": np.array([sentence.image_id for sentence in sentences], dtype=np.int64),
        "caption_index": np.array([sentence.caption_index for sentence in sentences], dtype=np.int64),
        "tokens": tokens,
        "entity_positions": positions,
        "entity_ids": entity_ids,
        "entity_types": entity_types,
        "has_ground_truth": has_ground_truth,
        "positive_offsets": offsets_of(sizes),
        "positive_boxes": (np.concatenate(boxes) if boxes else np.zeros(0)).astype(np.int32),
    }


def _split_summary(arrays: dict[str, np.ndarray], num_images: int) -> dict[str, Any]:
    with_truth = int(arrays["has_ground_truth"].sum())
    sizes = np.diff(arrays["positive_offsets"]).reshape(arrays["has_ground_truth"].shape)
    reachable = int(((sizes > 0) & arrays["has_ground_truth"]).sum())
    return {
        "images": num_images,
        "sentences": int(len(arrays["image_id"])),
        "entities": int((arrays["entity_ids"] > 0).sum()),
        "entities_with_ground_truth": with_truth,
        "upper_bound": 100.0 * reachable / with_truth if with_truth else 0.0,
    }


def _check_images_have_features(wanted: set[int], holders: Container[int],
                                paths: Sequence[str | os.PathLike[str]]) -> None:
    """:class:`DataError` naming up to five images of ``wanted`` not in ``holders``."""
    missing = sorted(image_id for image_id in wanted if image_id not in holders)
    if missing:
        shown = ", ".join(str(image_id) for image_id in missing[:5])
        raise DataError(f"{len(missing)} images of the splits have no features (e.g. {shown})",
                        path=", ".join(map(str, paths)), field="image_id")


def _check_same_size(image_id: int, annotated: tuple[int, int], detected: tuple[int, int] | None, root: Path,
                     where: str) -> None:
    """:class:`DataError` naming the annotation file where its image size differs from the one the features (read
    at ``where``) were detected on: ground-truth and detected boxes are both pixel coordinates, their IoU needs
    the same image. ``detected`` is None for a source that keeps no image sizes (the authors' HDF5 cache): then
    nothing can be checked."""
    if detected is not None and detected != annotated:
        raise DataError(f"image size {annotated[0]}x{annotated[1]}, but the features of image {image_id} were "
                        f"detected on {detected[0]}x{detected[1]} ({where}): the boxes cannot be matched",
                        path=root / "Annotations" / f"{image_id}.xml", record="size", field="size/width"
                        if detected[0] != annotated[0] else "size/height")


def _check_disjoint(split_images: dict[str, list[int]], root: Path) -> None:
    seen: dict[int, str] = {}
    for split, images in split_images.items():
        for image_id in images:
            if image_id in seen:
                where = "twice" if seen[image_id] == split else f"also in {seen[image_id]}.txt"
                raise DataError(f"image {image_id} listed {where}", path=root / f"{split}.txt",
                                field="image_id")
            seen[image_id] = split
