"""`ban prepare flickr30k` on official-format files written here, the grounding dataset and its batches."""

from __future__ import annotations

import argparse
import base64
import json
import os
import pickle
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_metrics_grounding import grounding_recall

from ban.commands import prepare_flickr30k as command
from ban.data.boxes import box_iou
from ban.data.collate import collate_grounding
from ban.data.dictionary import Dictionary
from ban.data.features import FeatureStore
from ban.data.features_tsv import iter_tsv_files
from ban.data.features_writer import write_feature_store
from ban.data.flickr30k import GroundingDataset
from ban.data.flickr30k_parse import parse_caption, type_bits
from ban.data.flickr30k_prepare import (
    ParseStats,
    entity_positions_of,
    ground_caption,
    positive_boxes,
    prepare_flickr30k,
)
from ban.data.tokenizer import tokenize
from ban.engine.config import TrainConfig
from ban.engine.run import RunConfig
from ban.engine.tasks import make_task
from ban.engine.trainer import initial_model
from ban.errors import ConfigError, DataError
from ban.models import preset

FEATURE_DIM = 3

# image id → (width, height, Sentences lines, Annotations objects, detected boxes)
IMAGES = {
    101: (100, 100, [
        "[/EN#1/people A man] , [/EN#2/people/other his friend] and [/EN#0/notvisual them] stand in "
        "[/EN#3/scene the park] .",
        "[/EN#3/scene A park] with nobody .",
        "[/EN#1/people The man]'s dog sees [/EN#1/people him] .",
    ], [
        ([1, 2], (10, 10, 50, 50)),
        ([1], (60, 60, 90, 90)),
        ([3], None),
    ], [
        (10, 10, 50, 50),  # 0: the shared box itself → positive of 1 and 2
        (60, 60, 90, 90),  # 1: entity 1's second box → positive of 1
        (10, 10, 30, 50),  # 2: IoU exactly 0.5 with the shared box → positive of 1 and 2 (no epsilon)
        (10, 10, 31, 50),  # 3: IoU 0.525 → positive of 1 and 2
        (0, 0, 5, 5),  # 4: nothing
    ]),
    202: (50, 40, ["[/EN#5/animals A dog] runs ?"], [([5], (0, 0, 20, 20))], [(30, 30, 40, 39), (25, 0, 45, 20)]),
    303: (64, 64, ["[/EN#7/vehicles A car] ."], [([7], (0, 0, 10, 10))], [(0, 0, 10, 10)]),
}
SPLITS = {"train": [101], "val": [202], "test": [303]}


def annotation_xml(width: int, height: int, objects: list) -> str:
    parts = [f"<annotation><filename>x.jpg</filename><size><width>{width}</width><height>{height}</height>"
             "<depth>3</depth></size>"]
    for names, box in objects:
        parts.append("<object>" + "".join(f"<name>{name}</name>" for name in names))
        if box is None:
            parts.append("<nobndbox>1</nobndbox><scene>1</scene>")
        else:
            parts.append("<bndbox>" + "".join(f"<{tag}>{value}</{tag}>" for tag, value in
                                              zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)) + "</bndbox>")
        parts.append("</object>")
    return "\n".join(parts) + "</annotation>\n"


def tsv_line(image_id: int, width: int, height: int, boxes: np.ndarray, features: np.ndarray) -> str:
    encode = lambda array: base64.b64encode(np.ascontiguousarray(array, np.float32).tobytes()).decode()  # noqa: E731
    return "\t".join([str(image_id), str(width), str(height), str(len(boxes)), encode(boxes), encode(features)])


def write_raw(root: Path, images: dict = IMAGES, splits: dict = SPLITS) -> list[Path]:
    """The official layout under ``root`` plus a TSV feature file (with one extra image outside the splits);
    returns the feature files."""
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    lines = []
    generator = np.random.default_rng(0)
    for image_id, (width, height, sentences, objects, detected) in images.items():
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
        (root / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(width, height, objects),
                                                               encoding="utf-8")
        boxes = np.array(detected, dtype=np.float32)
        lines.append(tsv_line(image_id, width, height, boxes, generator.normal(size=(len(boxes), FEATURE_DIM))))
    lines.append(tsv_line(999, 10, 10, np.array([[0, 0, 5, 5]]), np.ones((1, FEATURE_DIM))))
    for split, ids in splits.items():
        (root / f"{split}.txt").write_text("".join(f"{image_id}\n" for image_id in ids), encoding="utf-8")
    features = root / "flickr30k_features.tsv.1"  # named as some official downloads
    features.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return [features]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("flickr")
    features = write_raw(root / "raw")
    manifest = prepare_flickr30k(root / "raw", features, root / "data", progress=False)
    return root / "data", manifest


# --- pieces -----------------------------------------------------------------------------------------------


def test_box_iou_by_hand() -> None:
    first = np.array([[10.0, 10, 50, 50]])
    second = np.array([[10.0, 10, 31, 50], [30, 30, 70, 70], [50, 50, 60, 60]])
    # 840 / 1600; 400 / (1600 + 1600 - 400); touching corners: 0
    assert box_iou(first, second)[0].tolist() == [840 / 1600, 400 / 2800, 0.0]
    # exactly half (the reference has no epsilon, so this is a positive); boxes without area: 0, not NaN
    assert box_iou(np.array([[10.0, 10, 30, 30]]), np.array([[10.0, 10, 30, 20]]))[0].tolist() == [0.5]
    assert box_iou(np.array([[5.0, 5, 5, 9]]), np.array([[5.0, 5, 5, 9], [0, 0, 10, 10]]))[0].tolist() == [0.0, 0.0]


def test_boxes_apart_on_one_or_both_axes_do_not_overlap() -> None:
    # apart on both axes: the "overlap" would be (-10) × (-10) = +100 without the clip at 0; apart on x only,
    # level on y: (-10) × 10; both must be an intersection of 0
    first = np.array([[0.0, 0, 10, 10]])
    second = np.array([[20.0, 20, 30, 30], [20, 0, 30, 10]])
    assert box_iou(first, second).tolist() == [[0.0, 0.0]]
    found = positive_boxes({1: [(0, 0, 10, 10)]}, np.array([[20, 20, 30, 30]], np.float32))
    assert found[1].tolist() == []


def test_an_overlap_of_exactly_one_half_is_positive() -> None:
    found = positive_boxes({1: [(10, 10, 30, 30)]}, np.array([[10, 10, 30, 20], [10, 10, 30, 19.9]], np.float32))
    assert found[1].tolist() == [0]


def test_positive_boxes_union_over_an_entitys_boxes() -> None:
    detected = np.array(IMAGES[101][4], dtype=np.float32)
    found = positive_boxes({1: [(10, 10, 50, 50), (60, 60, 90, 90)], 2: [(10, 10, 50, 50)], 9: []}, detected)
    assert {key: value.tolist() for key, value in found.items()} == {1: [0, 1, 2, 3], 2: [0, 2, 3], 9: []}


def test_entity_position_is_the_phrase_last_token_in_model_tokens() -> None:
    stats = ParseStats()
    # The reference searched the words in the caption split on spaces: "a man" would be found at the FIRST
    # occurrence for both phrases, and the "," token it counted is deleted by the tokeniser.
    caption = parse_caption("[/EN#1/people a man] , [/EN#2/people his dog] sees [/EN#3/people a man] .")
    sentence = ground_caption(caption, 5, 0, {1, 2, 3}, stats)
    assert sentence.tokens == ["a", "man", "his", "dog", "sees", "a", "man", "."]
    assert sentence.positions == [1, 3, 6]
    assert sentence.type_bits == [type_bits(["people"])] * 3


def test_ground_caption_skips_non_visual_and_tokenless_phrases() -> None:
    stats = ParseStats()
    caption = parse_caption("[/EN#0/notvisual It] is [/EN#4/other ,] [/EN#5/scene a beach] , right [/EN#6/people ?]")
    sentence = ground_caption(caption, 5, 0, {4, 5}, stats)
    assert sentence.entity_ids == [5] and sentence.positions == [3] and sentence.has_ground_truth == [True]
    assert (stats.non_visual_phrases, stats.phrases_without_tokens) == (1, 2)
    assert ground_caption(parse_caption("[/EN#5/scene a beach]"), 5, 0, set(), stats) is None
    assert stats.captions_without_grounded_entities == 1


WORDS = st.sampled_from(["a", "Man", "dog's", "red", ",", "?", "it's", "the", "two", "--"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(WORDS, max_size=3), st.lists(WORDS, min_size=1, max_size=3),
                          st.sampled_from([" ", "'s "])), min_size=1, max_size=4))
def test_entity_positions_point_at_each_phrase_last_token(parts: list) -> None:
    line, expected_last = "", []
    for number, (before, phrase, after) in enumerate(parts, start=1):
        line += " ".join(before) + f" [/EN#{number}/other {' '.join(phrase)}]" + after
        expected_last.append(tokenize(" ".join(phrase)))
    caption = parse_caption(line)
    sentence = ground_caption(caption, 1, 0, set(range(1, len(parts) + 1)), ParseStats())
    kept = [tokens for tokens in expected_last if tokens]
    if sentence is None:
        assert not kept
        return
    assert sentence.tokens == tokenize(caption.text)
    assert [sentence.tokens[position] for position in sentence.positions] == [tokens[-1] for tokens in kept]
    assert sentence.positions == sorted(sentence.positions)


# --- the reference's entity positions (--entity-positions reference) -------------------------------------


def naive_reference_positions(line: str) -> tuple[list[str], list[int], str | None]:
    """The authors' procedure, done here step by step on the raw line, independently of ban's parser: the line's
    ends stripped; the caption = the markup removed by their regex; for each bracketed phrase the index of the
    last word of the first run of its words (split on single spaces) in the caption split on single spaces,
    searched from each occurrence of its first word, left to right; -1 if none. Returns (the caption's model
    tokens, the positions of the visual phrases — the slots ban keeps —, the first phrase not found or None)."""
    line = line.strip()
    caption = re.sub(r"\[[^ ]+ ", "", line).replace("]", "")
    words = caption.split(" ")
    positions, missing = [], None
    for inside in re.findall(r"\[(.*?)\]", line):
        head, phrase = inside.split(" ", 1)
        wanted, found, start = phrase.split(" "), -1, 0
        while found < 0 and wanted[0] in words[start:]:
            start = words.index(wanted[0], start)
            if words[start:start + len(wanted)] == wanted:
                found = start + len(wanted) - 1
            start += 1
        if found < 0 and missing is None:
            missing = phrase
        _, entity_id, *types = head.split("/")
        if entity_id != "EN#0" and "notvisual" not in types:
            positions.append(found)
    return tokenize(caption), positions, missing


EXAMPLE = "[/EN#1/people A man] , wearing [/EN#2/clothing a red hat] , walks past [/EN#3/other a fence] ."


def test_the_references_positions_of_the_example() -> None:
    """After each " , " (a word to the reference's search, no token to the model) its positions are one further:
    "a red hat" → 6 ("walks"), "a fence" → 11, past the caption's 11 tokens (a padding state); ban's: 1, 5, 9."""
    caption = parse_caption(EXAMPLE)
    tokens = ["a", "man", "wearing", "a", "red", "hat", "walks", "past", "a", "fence", "."]
    reference = ground_caption(caption, 5, 0, {1, 2, 3}, ParseStats(), entity_positions="reference")
    assert reference.tokens == tokens and reference.positions == [1, 6, 11]
    assert naive_reference_positions(EXAMPLE) == (tokens, [1, 6, 11], None)
    ours = ground_caption(caption, 5, 0, {1, 2, 3}, ParseStats())
    assert ours.tokens == tokens and ours.positions == [1, 5, 9]


HAND_WRITTEN = [
    EXAMPLE,
    "[/EN#1/people a man] , [/EN#2/people his dog] sees [/EN#3/people a man] .",  # repeated: the first one
    "[/EN#1/people A man] with [/EN#0/notvisual nothing] and [/EN#2/people/other his  son] near [/EN#1/people him]",
    "  [/EN#1/people Two men]   play [/EN#2/other a  game] , [/EN#3/scene outside]  ",  # spaces everywhere
    "[/EN#1/people The man] 's dog , [/EN#2/animals a dog 's tail] ?",
    "[/EN#4/other ,] [/EN#5/scene a beach] , right [/EN#6/people ?]",  # phrases with no token: kept
    "Where is [/EN#7/clothing the U.S.A. T-shirt] , [/EN#8/other it's] [/EN#9/other mine ! ]",
    "[/EN#1/people man] [/EN#1/people man] [/EN#2/people Man] .",  # case matters to the search, not to tokens
    "[/EN#3/other a] [/EN#4/other a b] [/EN#5/other b] , , [/EN#6/other a b]",
    "[/EN#1/other  x] a  y [/EN#0/notvisual z] b[/EN#2/other  y]",  # found at the "" of "  ": the model reads "b y"
]


@pytest.mark.parametrize("line", HAND_WRITTEN)
def test_reference_positions_equal_the_naive_procedure(line: str) -> None:
    caption = parse_caption(line)
    sentence = ground_caption(caption, 1, 0, set(range(1, 10)), ParseStats(), entity_positions="reference")
    assert (sentence.tokens, sentence.positions, None) == naive_reference_positions(line)
    assert sentence.entity_ids == [phrase.entity_id for phrase in caption.phrases if phrase.is_visual]


SEARCHED = st.sampled_from(["a", "A", "man", "dog", "dog's", "'s", ",", "?", ".", "red", "it's", "--"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(SEARCHED, max_size=3), st.lists(SEARCHED, min_size=1, max_size=3),
                          st.sampled_from([" ", "  ", " 's ", "'s "]), st.sampled_from(["other", "notvisual"])),
                min_size=1, max_size=5),
       st.sampled_from(["", " ", "  "]))
def test_reference_positions_of_generated_captions(parts: list, edge: str) -> None:
    """Random captions in the official format (and some beyond it: glued "'s", double spaces): ban's reference
    positions are the naive procedure's, or a DataError naming the file, the line and the phrase where it finds
    nothing."""
    line = edge
    for number, (before, phrase, after, kind) in enumerate(parts, start=1):
        entity = 0 if kind == "notvisual" else number
        line += " ".join(before) + f" [/EN#{entity}/{kind} {' '.join(phrase)}]" + after
    line += edge
    caption = parse_caption(line, path="Sentences/9.txt", line_number=4)
    tokens, expected, missing = naive_reference_positions(line)
    arguments = (caption, 1, 0, set(range(1, len(parts) + 1)), ParseStats())
    if missing is not None:
        with pytest.raises(DataError, match="is not in the caption") as error:
            ground_caption(*arguments, entity_positions="reference", path="Sentences/9.txt")
        assert error.value.path == "Sentences/9.txt" and error.value.record == "line 4"
        assert error.value.field == "phrase" and f"phrase {missing!r} is not" in str(error.value)
        return
    sentence = ground_caption(*arguments, entity_positions="reference")
    if sentence is None:
        assert not expected
        return
    assert (sentence.tokens, sentence.positions) == (tokens, expected)


# The reference's search finds every phrase here: "'s" written apart, as the official files have it
REFERENCE_IMAGES = {
    **IMAGES,
    101: (*IMAGES[101][:2], [*IMAGES[101][2][:2], "[/EN#1/people The man] 's dog sees [/EN#1/people him] ."],
          *IMAGES[101][3:]),
    202: (*IMAGES[202][:2], ["[/EN#5/animals A dog] runs [/EN#6/other ,] ?"], *IMAGES[202][3:]),
    303: (*IMAGES[303][:2], ["[/EN#7/vehicles A car] " + ", " * 12 + "[/EN#7/vehicles it]"], *IMAGES[303][3:]),
}


def test_a_dataset_with_the_references_positions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--entity-positions reference: the reference's positions (shifted by each " , ", past the caption's tokens
    onto padding), rows long enough for them, a phrase of no token kept, the choice in the manifest."""
    features = write_raw(tmp_path / "raw", REFERENCE_IMAGES)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    arguments = ["--root", str(tmp_path / "raw"), "--features", str(features[0]), "--json", "--out"]
    assert parser.parse_args([*arguments, "x"]).entity_positions == "tokens"
    assert command.run(parser.parse_args([*arguments, str(tmp_path / "ref"), "--entity-positions", "reference"])) == 0
    manifest = json.loads(capsys.readouterr().out)
    ours = prepare_flickr30k(tmp_path / "raw", features, tmp_path / "ours", progress=False)
    assert (manifest["entity_positions"], ours["entity_positions"]) == ("reference", "tokens")
    assert entity_positions_of(tmp_path / "ref", manifest) == "reference" and "reference" in manifest["entity_position"]
    assert manifest["sentence_length"] == 15 and ours["sentence_length"] == 11  # "a car it": "it" at 14
    assert manifest["left_out"]["phrases_without_tokens"] == 0 and ours["left_out"]["phrases_without_tokens"] == 1
    assert manifest["max_entities"] == 3
    pad = manifest["padding_index"]
    expected = {  # split → (tokens of each caption, reference positions, ban's positions)
        "train": ([list(range(11)), [8, 1, 11, 12, 13, 14, 10]], [[1, 4, 10], [1, 5, 0]], [[1, 3, 9], [1, 5, 0]]),
        "val": ([[0, 12, 15]], [[1, 3, 0]], [[1, 0, 0]]),
        "test": ([[0, 16, 17]], [[1, 14, 0]], [[1, 2, 0]]),
    }
    for split, (tokens, reference, bans) in expected.items():
        with np.load(tmp_path / "ref" / f"{split}.npz") as theirs, np.load(tmp_path / "ours" / f"{split}.npz") as mine:
            assert theirs["tokens"].tolist() == [row + [pad] * (15 - len(row)) for row in tokens]
            assert mine["tokens"].tolist() == [row + [pad] * (11 - len(row)) for row in tokens]
            assert theirs["entity_positions"].tolist() == reference and mine["entity_positions"].tolist() == bans
    assert GroundingDataset(tmp_path / "ref", "val")[0]["entity_mask"].tolist() == [True, True, False]
    assert GroundingDataset(tmp_path / "ref", "val")[0]["has_ground_truth"].tolist() == [True, False, False]

    # the GRU reads left to right: the state at a position is the one the reference's rows of 82 tokens give
    task = make_task("grounding", tmp_path / "ref")
    model = initial_model(RunConfig("grounding", str(tmp_path / "ref"), preset(
        "grounding", hidden_dim=8, word_dim=3, **task.model_sizes()), TrainConfig()), task).eval()
    for split in ("train", "val", "test"):
        dataset = GroundingDataset(tmp_path / "ref", split)
        batch = collate_grounding([dataset[i] for i in range(len(dataset))])
        padded = torch.nn.functional.pad(batch["tokens"], (0, 82 - 15), value=pad)
        index = batch["entity_positions"].unsqueeze(-1).expand(-1, -1, 8)
        with torch.no_grad():
            ours_states = model.encode_tokens(batch["tokens"]).gather(1, index)
            theirs_states = model.encode_tokens(padded).gather(1, index)
        torch.testing.assert_close(ours_states, theirs_states)


def test_a_phrase_the_references_search_cannot_find_is_refused(tmp_path: Path) -> None:
    """"[… The man]'s dog": the caption split on spaces has "man's", not "man" (the reference asserts)."""
    features = write_raw(tmp_path / "raw")
    with pytest.raises(DataError, match="phrase 'The man' is not in the caption split on single spaces") as error:
        prepare_flickr30k(tmp_path / "raw", features, tmp_path / "out", entity_positions="reference", progress=False)
    assert error.value.path == str(tmp_path / "raw" / "Sentences" / "101.txt")
    assert (error.value.record, error.value.field) == ("line 3", "phrase")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="unknown entity positions 'words'"):
        prepare_flickr30k(tmp_path / "raw", features, tmp_path / "out", entity_positions="words", progress=False)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--root", "r", "--features", "f", "--out", "o", "--entity-positions", "words"])


# --- the prepared directory ------------------------------------------------------------------------------


def test_manifest(prepared: tuple[Path, dict]) -> None:
    data_dir, manifest = prepared
    assert json.loads((data_dir / "manifest.json").read_text()) == manifest
    assert manifest["task"] == "grounding"
    assert manifest["sentence_length"] == 11  # "a man his friend and them stand in the park ."
    assert manifest["max_entities"] == 3
    assert manifest["feature_dim"] == FEATURE_DIM
    assert manifest["splits"]["train"] == {"images": 1, "sentences": 2, "entities": 5,
                                           "entities_with_ground_truth": 4, "upper_bound": 100.0}
    assert manifest["splits"]["val"]["upper_bound"] == 0.0  # the dog's box is never detected
    assert manifest["splits"]["test"]["upper_bound"] == 100.0
    assert manifest["left_out"] == {"non_visual_phrases": 1, "phrases_without_tokens": 0,
                                    "captions_without_grounded_entities": 1}
    assert manifest["captions"] == 5
    assert manifest["entity_positions"] == "tokens"
    assert manifest["entity_position"] == "last token of the phrase in the tokenised caption"


def test_dictionary_and_train_arrays(prepared: tuple[Path, dict]) -> None:
    data_dir, manifest = prepared
    dictionary = Dictionary.load(data_dir / "dictionary.json")
    assert dictionary.tokens == ["a", "man", "his", "friend", "and", "them", "stand", "in", "the", "park", ".",
                                 "'s", "dog", "sees", "him", "runs", "car"]
    assert manifest["padding_index"] == len(dictionary) == manifest["num_tokens"]
    with np.load(data_dir / "train.npz") as train:
        pad = dictionary.padding_index
        assert train["image_id"].tolist() == [101, 101]
        assert train["caption_index"].tolist() == [0, 2]
        assert train["tokens"].tolist() == [list(range(11)), [8, 1, 11, 12, 13, 14, 10] + [pad] * 4]
        assert train["entity_positions"].tolist() == [[1, 3, 9], [1, 5, 0]]
        assert train["entity_ids"].tolist() == [[1, 2, 3], [1, 1, 0]]
        people, scene = type_bits(["people"]), type_bits(["scene"])
        assert train["entity_types"].tolist() == [[people, type_bits(["people", "other"]), scene], [people, people, 0]]
        assert train["has_ground_truth"].tolist() == [[True, True, False], [True, True, False]]
        offsets, boxes = train["positive_offsets"], train["positive_boxes"]
        per_slot = [boxes[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
        assert per_slot == [[0, 1, 2, 3], [0, 2, 3], [], [0, 1, 2, 3], [0, 1, 2, 3], []]


def test_feature_store_holds_only_split_images(prepared: tuple[Path, dict]) -> None:
    store = FeatureStore.open(prepared[0] / "features")
    assert sorted(store.image_ids.tolist()) == [101, 202, 303]
    _, spatial, boxes = store.get(202)
    assert boxes.tolist() == [[30, 30, 40, 39], [25, 0, 45, 20]]
    assert spatial[1].tolist() == pytest.approx([0.5, 0.0, 0.9, 0.5, 0.4, 0.5])


def test_dataset_items_and_batches(prepared: tuple[Path, dict]) -> None:
    data_dir, manifest = prepared
    train, val = GroundingDataset(data_dir, "train"), GroundingDataset(data_dir, "val")
    assert (len(train), len(val)) == (2, 1)
    item = train[0]
    assert item["features"].shape == (5, FEATURE_DIM) and item["boxes"].shape == (5, 6)
    expected = torch.zeros(5, 3)
    expected[[0, 1, 2, 3], 0] = 1
    expected[[0, 2, 3], 1] = 1
    assert torch.equal(item["targets"], expected)
    assert item["entity_mask"].tolist() == [True, True, True]

    batch = collate_grounding([train[1], val[0]])
    assert batch["features"].shape == (2, 5, FEATURE_DIM)
    assert batch["boxes"].shape == (2, 5, 6)
    assert batch["box_mask"].tolist() == [[True] * 5, [True, True, False, False, False]]
    assert batch["features"][1, 2:].abs().sum() == 0
    assert batch["tokens"].shape == (2, manifest["sentence_length"]) and batch["tokens"].dtype == torch.int64
    assert batch["entity_positions"].tolist() == [[1, 5, 0], [1, 0, 0]]
    assert batch["entity_mask"].tolist() == [[True, True, False], [True, False, False]]
    assert batch["has_ground_truth"].tolist() == [[True, True, False], [True, False, False]]
    assert batch["targets"].shape == (2, 5, 3) and batch["targets"].dtype == torch.float32
    assert batch["targets"][1].sum() == 0
    assert batch["entity_types"].dtype == torch.int64
    assert batch["image_ids"].tolist() == [101, 202]


def test_recall_of_perfect_scores_is_the_upper_bound(prepared: tuple[Path, dict]) -> None:
    data_dir, manifest = prepared
    for split in ("train", "val", "test"):
        dataset = GroundingDataset(data_dir, split)
        batch = collate_grounding([dataset[i] for i in range(len(dataset))])
        scores = grounding_recall(batch["targets"], batch["targets"], batch["entity_mask"],
                                  batch["has_ground_truth"], batch["entity_types"], batch["box_mask"])
        assert scores["recall@1"] == pytest.approx(manifest["splits"][split]["upper_bound"])


# --- command line, other sources, errors -----------------------------------------------------------------


def test_command_with_a_store_directory_as_source(prepared: tuple[Path, dict], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, manifest = prepared
    write_raw(tmp_path / "raw")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--root", str(tmp_path / "raw"), "--features", str(data_dir / "features"),
                              "--out", str(tmp_path / "again"), "--dictionary", str(data_dir / "dictionary.json"),
                              "--json"])
    assert command.run(args) == 0
    assert json.loads(capsys.readouterr().out) == {**manifest, "root": str((tmp_path / "raw").resolve())}
    assert (tmp_path / "again" / "features.json").is_file() and not (tmp_path / "again" / "features").exists()
    for split in ("train", "val", "test"):
        with np.load(data_dir / f"{split}.npz") as first, np.load(tmp_path / "again" / f"{split}.npz") as second:
            assert first.files == second.files
            for name in first.files:
                assert np.array_equal(first[name], second[name]), name
    assert torch.equal(GroundingDataset(tmp_path / "again", "train")[0]["features"],
                       GroundingDataset(data_dir, "train")[0]["features"])


def test_a_store_used_in_place_and_prepared_again_since_is_refused(tmp_path: Path) -> None:
    """dB reads dA/features in place; preparing dA again from a file with the boxes in another order makes dB's
    targets (matched against the old boxes) wrong: opening dB says so instead of using the new boxes."""
    features = write_raw(tmp_path / "raw")
    first, second = tmp_path / "dA", tmp_path / "dB"
    prepare_flickr30k(tmp_path / "raw", features, first, progress=False)
    prepare_flickr30k(tmp_path / "raw", [first / "features"], second, progress=False)
    assert len(GroundingDataset(second, "train")) > 0
    moved = tmp_path / "moved"  # a copy of a dataset keeps working: only sources outside it are stamped
    shutil.copytree(first, moved)
    reversed_rows = tmp_path / "reversed.tsv"
    lines = []
    for line in features[0].read_text().splitlines():
            fields = line.split("\t")
            boxes = np.frombuffer(base64.b64decode(fields[4]), np.float32).reshape(-1, 4)[::-1]
            features_ = np.frombuffer(base64.b64decode(fields[5]), np.float32).reshape(len(boxes), -1)[::-1]
            lines.append(tsv_line(int(fields[0]), int(fields[1]), int(fields[2]), boxes, features_))
    reversed_rows.write_text("\n".join(lines) + "\n")
    prepare_flickr30k(tmp_path / "raw", [reversed_rows], first, progress=False)
    with pytest.raises(DataError, match=r"features\.json.*source \S*dA/features changed since this dataset was "
                                        r"prepared \(\S*store\.json differs\): prepare it again"):
        GroundingDataset(second, "train")
    assert len(GroundingDataset(first, "train")) > 0 and len(GroundingDataset(moved, "train")) > 0


def test_the_references_dictionary_pickle_gives_its_token_ids(prepared, tmp_path) -> None:
    """``--dictionary dictionary.pkl``: the reference's [word2idx, idx2word], here ours reversed plus a word the
    captions lack; every caption is encoded with the reference's ids."""
    data_dir, _ = prepared
    ours = Dictionary.load(data_dir / "dictionary.json")
    idx2word = [*reversed(ours.tokens), "zeppelin"]
    (tmp_path / "dictionary.pkl").write_bytes(pickle.dumps([{w: i for i, w in enumerate(idx2word)}, idx2word], 3))
    write_raw(tmp_path / "raw")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--root", str(tmp_path / "raw"), "--features", str(data_dir / "features"),
                              "--out", str(tmp_path / "theirs"), "--dictionary", str(tmp_path / "dictionary.pkl")])
    assert command.run(args) == 0
    assert Dictionary.load(tmp_path / "theirs" / "dictionary.json").tokens == idx2word
    with np.load(data_dir / "train.npz") as first, np.load(tmp_path / "theirs" / "train.npz") as second:
        words = lambda tokens, table: [table[t] if t < len(table) else "<pad>" for t in tokens]  # noqa: E731
        for mine, theirs in zip(first["tokens"].tolist(), second["tokens"].tolist(), strict=True):
            assert words(theirs, idx2word) == words(mine, ours.tokens)
            assert theirs != mine


def test_glove_initialises_the_grounding_word_table(prepared, tmp_path, capsys) -> None:
    """--glove writes glove.npy (a GloVe row per token, zeros for the words GloVe lacks), and a grounding run's
    word table starts from it, as the reference's does."""

    data_dir, _ = prepared
    tokens = Dictionary.load(data_dir / "dictionary.json").tokens
    vectors = {token: [index + 0.5, -index, 2.0] for index, token in enumerate(tokens[:3])}
    (tmp_path / "glove.txt").write_text("zebra 9 9 9\n" + "".join(f"{word} {' '.join(map(str, v))}\n"
                                                               for word, v in vectors.items()))
    write_raw(tmp_path / "raw")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    arguments = ["--root", str(tmp_path / "raw"), "--features", str(data_dir / "features"), "--out"]
    with pytest.raises(DataError, match="nowhere.txt: field 'glove': GloVe file not found"):  # before any parsing
        command.run(parser.parse_args([*arguments, str(tmp_path / "out"), "--glove", str(tmp_path / "nowhere.txt")]))
    assert command.run(parser.parse_args([*arguments, str(tmp_path / "out"), "--glove", str(tmp_path / "glove.txt"),
                                          "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["glove"] is True
    table = np.load(tmp_path / "out" / "glove.npy")
    assert table.shape == (len(tokens), 3)
    for index, token in enumerate(tokens):
        np.testing.assert_array_equal(table[index], vectors.get(token, [0.0, 0.0, 0.0]))
    task = make_task("grounding", tmp_path / "out")
    config = preset("grounding", hidden_dim=8, word_dim=3, **task.model_sizes())
    model = initial_model(RunConfig("grounding", str(tmp_path / "out"), config, TrainConfig()), task)
    torch.testing.assert_close(model.word_embedding.table.weight[:len(tokens)], torch.from_numpy(table))


def test_a_split_with_nothing_to_score_is_refused(tmp_path: Path) -> None:
    """Image 303's car marked nobndbox: the test split keeps no caption; training or evaluating on it would fail
    only when used (after a whole epoch, for a val_split)."""
    images = {**IMAGES, 303: (64, 64, ["[/EN#7/vehicles A car] ."], [([7], None)], [(0, 0, 10, 10)])}
    features = write_raw(tmp_path / "raw", images)
    with pytest.raises(DataError, match="no caption of split 'test' has a phrase with ground-truth boxes") as error:
        prepare_flickr30k(tmp_path / "raw", features, tmp_path / "out", progress=False)
    assert error.value.path == str(tmp_path / "raw" / "test.txt")
    prepare_flickr30k(tmp_path / "raw", features, tmp_path / "out", splits=("train", "val"), progress=False)


def test_evaluating_a_split_left_without_ground_truth_names_its_file(prepared: tuple[Path, dict],
                                                                       tmp_path: Path) -> None:
    data_dir = tmp_path / "damaged"
    shutil.copytree(prepared[0], data_dir)
    with np.load(data_dir / "val.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["has_ground_truth"][:] = False
    np.savez(data_dir / "val.npz", **arrays)
    task = make_task("grounding", data_dir)
    config = preset("grounding", hidden_dim=8, word_dim=3, **task.model_sizes())
    model = initial_model(RunConfig("grounding", str(data_dir), config, TrainConfig()), task)
    with pytest.raises(DataError, match="split 'val' has no entity with a ground-truth box") as error:
        task.evaluate(model, "val", 4, torch.device("cpu"), "fp32")
    assert error.value.path == str(data_dir / "val.npz")


def test_features_from_a_pipe_are_checked_after_the_conversion(tmp_path: Path) -> None:
    """A pipe is read once, by the conversion; image 303's record left out, the error comes after it."""
    features = write_raw(tmp_path / "raw")
    lines = features[0].read_bytes().split(b"\r\n")
    pipe = tmp_path / "features.pipe"
    os.mkfifo(pipe)
    data = b"\r\n".join(line for line in lines if not line.startswith(b"303\t"))
    threading.Thread(target=pipe.write_bytes, args=(data,), daemon=True).start()
    with pytest.raises(DataError, match="1 images of the splits have no features .e.g. 303"):
        prepare_flickr30k(tmp_path / "raw", [pipe], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_an_image_outside_the_splits_may_be_in_two_files(tmp_path: Path) -> None:
    """Only the splits' images are converted, so only they must be held once (image 999 is in no split)."""
    features = write_raw(tmp_path / "raw")
    extra = tmp_path / "extra.tsv"
    extra.write_bytes(next(line for line in features[0].read_bytes().split(b"\r\n") if line.startswith(b"999\t"))
                      + b"\r\n")
    prepare_flickr30k(tmp_path / "raw", [*features, extra], tmp_path / "out", progress=False)
    lines = features[0].read_bytes().split(b"\r\n")
    extra.write_bytes(next(line for line in lines if line.startswith(b"303\t")) + b"\r\n")
    with pytest.raises(DataError, match=f"image 303 appears in more than one source: {features[0]}, {extra}"):
        prepare_flickr30k(tmp_path / "raw", [*features, extra], tmp_path / "again", progress=False)


def test_missing_features_are_found_before_the_conversion(tmp_path: Path) -> None:
    """The last record is damaged: had the TSV been converted first, its bad base64 would be the error."""
    features = write_raw(tmp_path / "raw")
    lines = features[0].read_bytes().split(b"\r\n")
    last = max(i for i, line in enumerate(lines) if line)
    lines[last] = lines[last][:-9] + b"*" + lines[last][-8:]
    features[0].write_bytes(b"\r\n".join(line for line in lines if not line.startswith(b"303\t")))
    with pytest.raises(DataError, match="1 images of the splits have no features .e.g. 303"):
        prepare_flickr30k(tmp_path / "raw", features, tmp_path / "out", progress=False)
    features[0].write_bytes(b"\r\n".join(lines))  # image 303 back: now the conversion finds the damage
    with pytest.raises(DataError, match="field 'features': bad base64"):
        prepare_flickr30k(tmp_path / "raw", features, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_errors_leave_no_output(tmp_path: Path) -> None:
    features = write_raw(tmp_path / "raw")
    lines = features[0].read_bytes().split(b"\r\n")
    features[0].write_bytes(b"\r\n".join(line for line in lines if not line.startswith(b"303\t")))
    with pytest.raises(DataError, match="1 images of the splits have no features .e.g. 303"):
        prepare_flickr30k(tmp_path / "raw", features, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()

    xml = tmp_path / "raw" / "Annotations" / "202.xml"
    xml.write_text(xml.read_text().replace("<ymin>0</ymin>", "<ymin>zero</ymin>"))
    with pytest.raises(DataError) as caught:
        prepare_flickr30k(tmp_path / "raw", features, tmp_path / "out", progress=False)
    assert caught.value.path == str(xml) and caught.value.field == "bndbox/ymin"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("scale", "extra_height", "field"), [(2, 0, "size/width"), (1, 1, "size/height")])
def test_an_annotation_of_another_image_size_than_the_features_is_refused(prepared: tuple[Path, dict],
                                                                         tmp_path: Path, scale: int,
                                                                         extra_height: int, field: str) -> None:
    """Ground-truth and detected boxes are both pixels: an XML <size> that is not the size the features were
    detected on (TSV image_w/image_h, a store's image sizes) would make every IoU wrong. Width and height are both
    compared: the features' width with one more pixel of height is refused too, naming ``size/height``."""
    data_dir, _ = prepared
    features = write_raw(tmp_path / "raw")
    width, height, _, objects, _ = IMAGES[202]
    given = (width * scale, height * scale + extra_height)
    (tmp_path / "raw" / "Annotations" / "202.xml").write_text(annotation_xml(*given, objects))
    for source in (features[0], data_dir / "features"):
        with pytest.raises(DataError, match=f"image size {given[0]}x{given[1]}, but the features of image 202 "
                                            f"were detected on {width}x{height}") as error:
            prepare_flickr30k(tmp_path / "raw", [source], tmp_path / "out", progress=False)
        assert error.value.path == str(tmp_path / "raw" / "Annotations" / "202.xml")
        assert error.value.field == field and not (tmp_path / "out").exists()


def test_split_lists_are_checked(tmp_path: Path) -> None:
    features = write_raw(tmp_path / "raw", splits={"train": [101, 202], "val": [202], "test": [303]})
    with pytest.raises(DataError, match="image 202 listed also in train.txt") as caught:
        prepare_flickr30k(tmp_path / "raw", features, tmp_path / "out", progress=False)
    assert caught.value.path == str(tmp_path / "raw" / "val.txt")
    (tmp_path / "raw" / "val.txt").write_text("202\nabc\n")
    with pytest.raises(DataError, match="expected an image id") as caught:
        prepare_flickr30k(tmp_path / "raw", features, tmp_path / "out", progress=False)
    assert caught.value.record == "line 2"


def test_dataset_refuses_other_directories(tmp_path: Path, prepared: tuple[Path, dict]) -> None:
    with pytest.raises(DataError, match="no manifest.json"):
        GroundingDataset(tmp_path, "train")
    (tmp_path / "manifest.json").write_text(json.dumps({"task": "vqa"}))
    with pytest.raises(DataError, match="not a grounding dataset"):
        GroundingDataset(tmp_path, "train")
    with pytest.raises(DataError, match="no split 'dev'"):
        GroundingDataset(prepared[0], "dev")


def test_a_rerun_reuses_the_finished_conversion_of_the_same_files_and_images(tmp_path: Path) -> None:
    """As `ban prepare vqa2` does: the same TSV files and the same wanted images are not converted again (the new
    dataset hard-links the previous one's store); other splits (other images) are."""
    features = write_raw(tmp_path / "raw")
    out = tmp_path / "out"
    first = prepare_flickr30k(tmp_path / "raw", features, out, progress=False)
    stored = out / "features" / "features.npy"
    stamp = stored.stat().st_mtime_ns
    items = [GroundingDataset(out, "train")[i]["targets"] for i in range(2)]
    assert prepare_flickr30k(tmp_path / "raw", features, out, progress=False) == first
    assert stored.stat().st_mtime_ns == stamp
    assert all(torch.equal(GroundingDataset(out, "train")[i]["targets"], items[i]) for i in range(2))
    converted = len(FeatureStore.open(out / "features"))
    prepare_flickr30k(tmp_path / "raw", features, out, splits=("train",), progress=False)
    assert len(FeatureStore.open(out / "features")) < converted  # fewer images kept: converted again


def test_a_dataset_prepared_by_an_earlier_version_still_loads(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    """Earlier versions kept the converted store itself in features/, with no features.json beside it."""
    data_dir = tmp_path / "earlier"
    shutil.copytree(prepared[0], data_dir)
    (data_dir / "features.json").unlink()
    manifest = json.loads((data_dir / "manifest.json").read_text())
    del manifest["features"]
    del manifest["entity_positions"]  # earlier versions had only ban's positions
    assert entity_positions_of(data_dir, manifest) == "tokens"
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    earlier, now = GroundingDataset(data_dir, "val"), GroundingDataset(prepared[0], "val")
    assert torch.equal(earlier[0]["features"], now[0]["features"])


def test_tsv_files_and_a_store_together_give_the_tsv_only_dataset(prepared: tuple[Path, dict],
                                                                  tmp_path: Path) -> None:
    """A mix of sources, as `ban prepare vqa2` takes it: image 303 from a store directory, the others from TSV."""
    data_dir, manifest = prepared
    features = write_raw(tmp_path / "raw")
    lines = features[0].read_bytes().split(b"\r\n")
    rest, alone = tmp_path / "rest.tsv", tmp_path / "alone.tsv"
    rest.write_bytes(b"\r\n".join(line for line in lines if not line.startswith(b"303\t")))
    alone.write_bytes(next(line for line in lines if line.startswith(b"303\t")) + b"\r\n")
    write_feature_store(iter_tsv_files([alone]), tmp_path / "store-303")
    mixed = prepare_flickr30k(tmp_path / "raw", [rest, tmp_path / "store-303"], tmp_path / "out", progress=False)
    assert mixed["splits"] == manifest["splits"]
    for split in ("train", "val", "test"):
        mine, theirs = GroundingDataset(tmp_path / "out", split), GroundingDataset(data_dir, split)
        for index in range(len(theirs)):
            for name, value in theirs[index].items():
                assert torch.equal(mine[index][name], value), (split, index, name)


def test_a_source_inside_the_output_is_refused(prepared: tuple[Path, dict]) -> None:
    data_dir, manifest = prepared
    with pytest.raises(DataError, match="inside --out"):
        prepare_flickr30k(data_dir.parent / "raw", [data_dir / "features"], data_dir, progress=False)
    assert json.loads((data_dir / "manifest.json").read_text()) == manifest


@pytest.mark.parametrize(("damage", "field", "message"), [
    (lambda a: a.update(entity_ids=a["entity_ids"][:, 0]), "entity_ids", "expected a 2-d array"),
    (lambda a: a.update(tokens=a["tokens"].astype(np.float32)), "tokens", "of kind 'iu', got float32"),
    (lambda a: a.pop("caption_index"), "caption_index", "got nothing"),
    (lambda a: a.update(image_id=a["image_id"][1:]), "image_id", "does not fit entity_ids'"),
    (lambda a: a.update(has_ground_truth=a["has_ground_truth"][:, :1]), "has_ground_truth", "does not fit"),
    (lambda a: a.update(positive_offsets=a["positive_offsets"][:-1]), "positive_offsets", "do not fit"),
    (lambda a: a.update(positive_offsets=np.r_[0, a["positive_offsets"][-1] + 1, a["positive_offsets"][2:]].astype(
        np.uint64)), "positive_offsets", "do not fit"),  # falling: unsigned differences would wrap
    (lambda a: a.update(positive_boxes=a["positive_boxes"] - 100), "positive_boxes", "negative box index"),
], ids=["entity-ids-1d", "tokens-float", "missing-array", "rows", "slots", "offsets", "unsigned-falling",
        "negative-box"])
def test_a_damaged_split_names_the_file_and_array(prepared: tuple[Path, dict], tmp_path: Path, damage, field,
                                                  message) -> None:
    data_dir = tmp_path / "damaged"
    shutil.copytree(prepared[0], data_dir)
    with np.load(data_dir / "train.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    damage(arrays)
    np.savez(data_dir / "train.npz", **arrays)
    with pytest.raises(DataError, match=message) as caught:
        GroundingDataset(data_dir, "train")
    assert caught.value.path == str(data_dir / "train.npz") and caught.value.field == field


@pytest.mark.parametrize("position", [-1, 10_000])
def test_entity_positions_outside_the_caption_are_refused(prepared: tuple[Path, dict], tmp_path: Path,
                                                          position: int) -> None:
    data_dir = tmp_path / "damaged"
    shutil.copytree(prepared[0], data_dir)
    with np.load(data_dir / "train.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["entity_positions"][1, 0] = position
    np.savez(data_dir / "train.npz", **arrays)
    with pytest.raises(DataError, match=f"position {position} of entity slot 0 is outside") as caught:
        GroundingDataset(data_dir, "train")
    assert caught.value.record == "sentence 1" and caught.value.field == "entity_positions"
