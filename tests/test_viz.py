"""`ban visualize` and the pictures behind it, on synthetic scenes generated and prepared by the test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ban.cli import main
from ban.data.dictionary import Dictionary
from ban.data.features import FeatureStore
from ban.data.flickr30k_parse import parse_sentences_file
from ban.data.flickr30k_prepare import prepare_flickr30k
from ban.data.synthetic import generate
from ban.data.tokenizer import tokenize
from ban.data.vqa2 import prepare_vqa2
from ban.engine.checkpoint import save_checkpoint
from ban.engine.config import TrainConfig
from ban.engine.run import CHECKPOINT_FILE, RunConfig, fingerprint, load_run, start_run
from ban.engine.tasks import make_task
from ban.models import build_model, preset
from ban.viz.attention import AttentionExample, attention_figure, box_weights
from ban.viz.boxes import (
    box_opacities,
    draw_colored_boxes,
    draw_weighted_boxes,
    find_coco_image,
    find_plain_image,
    image_size_from_boxes,
)
from ban.viz.figures import save_png
from ban.viz.grounding import GroundingExample, GroundingPictures, grounding_figure, phrase_color
from ban.viz.report import REPORT_DIR, write_report_pictures
from ban.viz.vqa import VQAPictures, choose_indices


def make_run(run_dir: Path, task_name: str, data_dir: Path, **model: object) -> Path:
    """A run dir holding a freshly initialised model (a run saved before its first step)."""
    task = make_task(task_name, data_dir)
    name = "grounding" if task_name == "grounding" else "tiny"
    config = preset(name, **task.model_sizes(), hidden_dim=24, word_dim=16, **model)
    run = RunConfig(task_name, str(data_dir), config, TrainConfig(epochs=1), fingerprint(data_dir))
    start_run(run_dir, run, resume=False)
    torch.manual_seed(3)
    save_checkpoint(run_dir / CHECKPOINT_FILE, build_model(config), None, {"epoch": 0, "history": []})
    return run_dir


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic scenes (raw/ with images) and the VQA and Flickr30k datasets prepared from them."""
    root = tmp_path_factory.mktemp("scenes")
    raw = root / "raw"
    generate(raw, seed=5, num_images=12, feature_dim=16, flickr_images=10, workers=1, progress=False)
    prepare_vqa2(raw / "vqa", sorted((raw / "features").glob("*.tsv")), root / "prepared", min_answer_count=1,
                 progress=False)
    prepare_flickr30k(raw / "flickr30k", [raw / "flickr30k" / "features.tsv"], root / "flickr", progress=False)
    return {"root": root, "raw": raw, "vqa": root / "prepared", "flickr": root / "flickr"}


@pytest.fixture(scope="module")
def vqa_run(scenes: dict[str, Path]) -> Path:
    return make_run(scenes["root"] / "run-ban", "vqa", scenes["vqa"], num_glimpses=2, use_counting=True)


def assert_real_picture(path: Path, min_size: tuple[int, int] = (300, 300)) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10.0  # not a blank page


def val_rows(data_dir: Path) -> dict[str, np.ndarray]:
    with np.load(data_dir / "val.npz") as arrays:
        return {name: arrays[name] for name in ("question_id", "image_id", "tokens")}


def test_visualize_writes_one_png_per_question_on_the_scene_images(vqa_run: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["visualize", str(vqa_run), "--num", "2", "--out", str(tmp_path)]) == 0
    rows = val_rows(load_run(vqa_run).data_dir)
    expected = [tmp_path / f"q{qid}.png" for qid in rows["question_id"][:2].tolist()]
    assert sorted(tmp_path.glob("*.png")) == sorted(expected)
    for path in expected:
        assert_real_picture(path)
    assert "blank canvas" not in capsys.readouterr().out  # the synthetic images were found next to the data


def test_heatmaps_are_the_models_attention_for_that_question(vqa_run: Path, scenes: dict[str, Path]) -> None:
    loaded = load_run(vqa_run)
    rows = val_rows(scenes["vqa"])
    index = 3
    pictures = VQAPictures(loaded.model, scenes["vqa"], "val", scenes["raw"] / "images")
    example = pictures.example(index)
    # Independent recomputation: the question's tokens and its image's regions read straight from the files.
    features, spatial, _ = FeatureStore.open(scenes["vqa"]).get(int(rows["image_id"][index]))
    tokens = torch.from_numpy(rows["tokens"][index].astype(np.int64))[None]
    with torch.no_grad():
        attention = loaded.model(torch.from_numpy(features)[None], torch.from_numpy(spatial)[None], tokens).attention
    attention = attention[0].numpy()  # [G, N, L]
    figure = attention_figure(example)
    plotted = [axes.images[0].get_array() for axes in figure.axes if axes.get_xlabel() == "box"]
    assert len(plotted) == 2  # one heatmap per glimpse
    for glimpse, heat in enumerate(plotted):
        np.testing.assert_allclose(np.asarray(heat), attention[glimpse].T, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(box_weights(example.attention), attention.sum(axis=2), rtol=1e-5, atol=1e-7)
    question = json.loads((scenes["vqa"] / "val_questions.json").read_text())["questions"][index]
    assert question["question_id"] == example.question_id == int(rows["question_id"][index])
    words = tokenize(question["question"])
    assert example.words == words + ["<pad>"] * (14 - len(words))
    heat_axes = [axes for axes in figure.axes if axes.get_xlabel() == "box"][0]
    assert [label.get_text() for label in heat_axes.get_yticklabels()] == example.words
    assert example.image_found
    with Image.open(find_coco_image(scenes["raw"] / "images", "val2014", example.image_id)) as image:
        assert example.image.size == image.size


def test_ground_truth_and_prediction_in_the_title(vqa_run: Path, scenes: dict[str, Path]) -> None:
    loaded = load_run(vqa_run)
    example = VQAPictures(loaded.model, scenes["vqa"], "val", None).example(0)
    annotation = json.loads((scenes["vqa"] / "val_annotations.json").read_text())["annotations"][0]
    assert sorted(example.answers) == sorted(a["answer"] for a in annotation["answers"])
    answers = json.loads((scenes["vqa"] / "answers.json").read_text())
    rows = val_rows(scenes["vqa"])
    features, spatial, _ = FeatureStore.open(scenes["vqa"]).get(int(rows["image_id"][0]))
    with torch.no_grad():
        logits = loaded.model(torch.from_numpy(features)[None], torch.from_numpy(spatial)[None],
                              torch.from_numpy(rows["tokens"][0].astype(np.int64))[None]).logits
    assert example.predicted == answers[int(logits.argmax())]
    title = attention_figure(example)._suptitle.get_text()
    assert f"predicted: {example.predicted}" in title and annotation["multiple_choice_answer"] in title


def test_without_an_image_the_boxes_go_on_a_blank_canvas_of_the_image_size(vqa_run: Path, scenes: dict[str, Path],
                                                                          tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "no-images"
    empty.mkdir()
    assert main(["visualize", str(vqa_run), "--num", "1", "--images", str(empty), "--out", str(tmp_path)]) == 0
    assert "blank canvas" in capsys.readouterr().out
    loaded = load_run(vqa_run)
    example = VQAPictures(loaded.model, scenes["vqa"], "val", empty).example(0)
    assert not example.image_found
    with Image.open(find_coco_image(scenes["raw"] / "images", "val2014", example.image_id)) as real:
        assert example.image.size == real.size
    assert len(np.unique(np.asarray(example.image).reshape(-1, 3), axis=0)) == 1
    assert_real_picture(next(tmp_path.glob("q*.png")))


@pytest.mark.parametrize("content", [b"not an image", "half a file"])
def test_an_unreadable_image_file_is_a_clear_error(vqa_run: Path, scenes: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str], content: bytes | str) -> None:
    rows = val_rows(scenes["vqa"])
    images = tmp_path / "images"
    images.mkdir()
    real = find_coco_image(scenes["raw"] / "images", "val2014", int(rows["image_id"][0]))
    assert real is not None
    name = real.name
    if content == "half a file":
        content = real.read_bytes()[: real.stat().st_size // 2]
    (images / name).write_bytes(content)
    command = ["visualize", str(vqa_run), "--questions", str(rows["question_id"][0]), "--images", str(images)]
    assert main([*command, "--out", str(tmp_path / "out")]) == 2
    assert f"{images / name}: cannot read the image" in capsys.readouterr().err


def test_chosen_question_ids_and_random_choice(vqa_run: Path, scenes: dict[str, Path], tmp_path: Path) -> None:
    qids = val_rows(scenes["vqa"])["question_id"].tolist()
    assert main(["visualize", str(vqa_run), "--questions", str(qids[-1]), "--out", str(tmp_path / "a")]) == 0
    assert [p.name for p in (tmp_path / "a").glob("*.png")] == [f"q{qids[-1]}.png"]
    assert len(qids) >= 8  # enough questions that the random pairs below are not the first two

    def drawn_names(name: str, *options: str) -> set[str]:
        assert main(["visualize", str(vqa_run), "--num", "2", *options, "--out", str(tmp_path / name)]) == 0
        return {p.name for p in (tmp_path / name).iterdir()}

    first = drawn_names("first")
    assert first == {f"q{qids[0]}.png", f"q{qids[1]}.png"}
    seven, seven_again, eight = (drawn_names("b", "--random", "--seed", "7"),
                                 drawn_names("c", "--random", "--seed", "7"),
                                 drawn_names("d", "--random", "--seed", "8"))
    assert seven == seven_again and len(seven) == 2  # the same seed draws the same questions
    assert seven != first and eight != first and seven != eight  # drawn, not the first ones; the seed matters
    assert choose_indices(np.array(qids), [qids[4], qids[1]], 1, False, 0, tmp_path) == [4, 1]
    assert choose_indices(np.array(qids), None, 3, False, 0, tmp_path) == [0, 1, 2]
    drawn = choose_indices(np.array(qids), None, 2, True, 7, tmp_path)
    assert seven == {f"q{qids[i]}.png" for i in drawn}
    assert drawn == sorted(set(drawn)) and len(drawn) == 2 and all(0 <= i < len(qids) for i in drawn)
    assert drawn == choose_indices(np.array(qids), None, 2, True, 7, tmp_path)
    assert drawn != choose_indices(np.array(qids), None, 2, True, 8, tmp_path)
    picks = {tuple(choose_indices(np.array(qids), None, 2, True, seed, tmp_path)) for seed in range(20)}
    assert len(picks) > 5 and max(max(pick) for pick in picks) >= len(qids) // 2  # spread over the split
    assert choose_indices(np.array(qids), None, 99, True, 7, tmp_path) == list(range(len(qids)))  # all there are


def with_tokens(npz: Path, row: int, tokens: list[int]) -> None:
    """Rewrite the token row ``row`` of a prepared split's ``.npz`` to ``tokens``."""
    with np.load(npz) as arrays:
        content = {name: arrays[name] for name in arrays.files}
    content["tokens"][row, : len(tokens)] = tokens
    np.savez(npz, **content)


def test_a_word_the_dictionary_does_not_know_is_labelled_with_what_the_model_read(
        vqa_run: Path, scenes: dict[str, Path], tmp_path: Path) -> None:
    data = shutil.copytree(scenes["vqa"], tmp_path / "prepared")
    content = json.loads((data / "val_questions.json").read_text())
    content["questions"][0]["question"] = "Are there any zebraish blue objects?"
    (data / "val_questions.json").write_text(json.dumps(content))
    dictionary = Dictionary.load(data / "dictionary.json")
    encoded = dictionary.encode("Are there any zebraish blue objects?")  # as `ban prepare` encodes it
    assert encoded[3] == dictionary.unknown_index and "zebraish" not in dictionary
    with_tokens(data / "val.npz", 0, encoded)
    pictures = VQAPictures(load_run(vqa_run).model, data, "val", None)
    unknown = dictionary.tokens[-1]  # what the model reads for a word the dictionary does not know
    path, example = pictures.write(0, tmp_path / "out")
    assert example.words[:7] == ["are", "there", "any", f"zebraish→{unknown}", "blue", "objects", "<pad>"]
    heat_axes = [axes for axes in attention_figure(example).axes if axes.get_xlabel() == "box"][0]
    assert [label.get_text() for label in heat_axes.get_yticklabels()] == example.words
    assert_real_picture(path)


def test_unknown_question_id_is_a_clear_error(vqa_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["visualize", str(vqa_run), "--questions", "999999999"]) == 2
    assert "999999999" in capsys.readouterr().err


def test_unitary_attention_has_one_question_row(scenes: dict[str, Path], tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run-unitary", "vqa", scenes["vqa"], attention="unitary", num_glimpses=2)
    example = VQAPictures(load_run(run_dir).model, scenes["vqa"], "val", None).example(0)
    assert example.words == ["(question)"] and example.attention.shape[::2] == (2, 1)
    np.testing.assert_allclose(example.attention.sum(axis=(1, 2)), [1.0, 1.0], rtol=1e-5)


def test_report_pictures_for_the_trainer(vqa_run: Path) -> None:
    loaded = load_run(vqa_run)
    loaded.model.train()  # as at the end of training
    paths = write_report_pictures(vqa_run, loaded.model, loaded.config, num=2)
    assert loaded.model.training  # the pictures' eval mode does not leak into the caller's model
    assert len(paths) == 2 and all(path.parent == vqa_run / REPORT_DIR for path in paths)
    for path in paths:
        assert_real_picture(path)


def test_a_report_picture_on_an_unreadable_image_is_skipped(scenes: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The end of a finished training is not failed by a damaged file in the image folder found for it."""
    data = tmp_path / "prepared"
    shutil.copytree(scenes["vqa"], data)
    images = shutil.copytree(scenes["raw"] / "images", tmp_path / "images")  # DATA/../images: found first
    for image in images.iterdir():
        image.write_bytes(b"damaged")
    run_dir = make_run(tmp_path / "run", "vqa", data, num_glimpses=2)
    loaded = load_run(run_dir)
    assert write_report_pictures(run_dir, loaded.model, loaded.config, num=2) == []
    assert capsys.readouterr().err.count("attention picture skipped: ") == 2


def test_labels_of_phrases_sharing_a_box_do_not_cover_each_other() -> None:
    image, boxes = Image.new("RGB", (480, 320), (255, 255, 255)), np.array([[0.2, 0.2, 0.8, 0.8]] * 2)
    colors = [(200, 30, 30), (30, 30, 200)]

    def pixels(labels: list[str]) -> np.ndarray:
        return np.asarray(draw_colored_boxes(image, boxes, colors, labels), dtype=np.int16)

    bare, alone, together = pixels(["", ""]), pixels(["12", ""]), pixels(["12", "34"])
    first = np.abs(alone - bare).sum(-1) > 0
    assert first.any()  # the second (inset) box painted over the first label
    assert np.array_equal(together[first], alone[first])  # "12" whole next to "34"
    assert (np.abs(together - alone).sum(-1) > 0).any()  # and "34" drawn


QUADRANT_BOXES = np.array([[0.05, 0.1, 0.45, 0.45], [0.55, 0.1, 0.95, 0.45], [0.05, 0.55, 0.45, 0.9],
                           [0.55, 0.55, 0.95, 0.9]])  # four disjoint boxes, one per quarter of the image


def test_box_opacity_follows_the_attention() -> None:
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    boxes = QUADRANT_BOXES
    weights = np.array([0.55, 0.35, 0.05, 0.05])
    drawn = np.asarray(draw_weighted_boxes(image, boxes, weights), dtype=float)
    strong, weak = drawn[27, 50], drawn[27, 150]  # the centres of the two most attended boxes
    assert (255 - strong[1]) > 3 * (255 - weak[1]) > 0  # the most attended box is filled much more strongly
    inverted = boxes[:, [2, 3, 0, 1]]  # corners given the wrong way round still draw the same box
    np.testing.assert_array_equal(np.asarray(draw_weighted_boxes(image, inverted, weights)), drawn)


def grid_boxes(count: int) -> np.ndarray:
    """``count`` normalised boxes side by side in rows of 6 (disjoint, so each box's centre shows only it)."""
    rows = -(-count // 6)
    return np.array([[(i % 6) / 6 + 0.01, (i // 6) / rows + 0.01, (i % 6 + 1) / 6 - 0.01,
                      (i // 6 + 1) / rows - 0.01] for i in range(count)])


def test_near_uniform_attention_is_drawn_faint_and_peaked_attention_strong(tmp_path: Path) -> None:
    """Opacity follows the weight above the even share: a unitary run's attention of 0.042–0.044 on every one of
    24 boxes no longer paints the whole scene (≥ 95 % opaque with weight / max), a box singled out stays opaque."""
    near_uniform = np.random.default_rng(0).uniform(0.042, 0.044, 24)
    near_uniform /= near_uniform.sum()
    opacities = box_opacities(near_uniform)
    assert opacities.max() < 0.15 and opacities.max() - opacities.min() < 0.07
    peaked = np.full(24, 0.4 / 23)
    peaked[5] = 0.6
    opacities = box_opacities(peaked)
    assert int(opacities.argmax()) == 5 and opacities[5] == pytest.approx(1.0) and np.delete(opacities, 5).max() < 0.1
    spread = np.array([0.3, 0.25, 0.2, 0.1, 0.05, 0.05, 0.05])  # ordered weights give ordered opacities
    assert np.all(np.diff(box_opacities(spread)) <= 0) and box_opacities(spread)[0] == pytest.approx(1.0)
    # A real picture of the near-uniform attention: the boxes leave the white scene visible, and the box
    # panel's title gives the scale.
    boxes, white = grid_boxes(24), Image.new("RGB", (480, 320), (255, 255, 255))
    covered = np.asarray(draw_weighted_boxes(white, boxes, near_uniform), dtype=float)
    centres = [(int((y1 + y2) / 2 * 320), int((x1 + x2) / 2 * 480)) for x1, y1, x2, y2 in boxes]
    assert min(covered[y, x, 1] for y, x in centres) > 240  # the fills are faint (weight / max: about 165)
    example = AttentionExample(1, 2, "what is it?", ["(question)"], near_uniform[None, :, None], boxes, "ring", [],
                               white, True)
    figure = attention_figure(example)
    title = figure.axes[0].get_title()
    assert f"weights {near_uniform.min():.3g}–{near_uniform.max():.3g}, even share {1 / 24:.3g}" in title
    assert_real_picture(save_png(figure, tmp_path / "uniform.png"))


def test_image_size_from_boxes_and_coco_names(tmp_path: Path) -> None:
    pixel = np.array([[10.0, 20.0, 110.0, 70.0], [0.0, 0.0, 640.0, 480.0]])
    spatial = np.array([[10 / 640, 20 / 480, 110 / 640, 70 / 480, 100 / 640, 50 / 480], [0, 0, 1, 1, 1, 1]])
    assert image_size_from_boxes(pixel, spatial) == (640, 480)
    (tmp_path / "val2014").mkdir()
    target = tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"
    Image.new("RGB", (4, 4)).save(target)
    assert find_coco_image(tmp_path, "val2014", 42) == target
    assert find_coco_image(tmp_path, "val2014", 43) is None


def test_grounding_picture_has_one_legend_entry_per_phrase(scenes: dict[str, Path], tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run-grounding", "grounding", scenes["flickr"])
    images = scenes["raw"] / "flickr30k" / "images"
    assert main(["visualize", str(run_dir), "--captions", "0", "2", "--images", str(images), "--out",
                 str(tmp_path / "out")]) == 0
    pictures = sorted((tmp_path / "out").glob("caption*.png"))
    assert len(pictures) == 2
    for path in pictures:
        assert_real_picture(path)
    loaded = load_run(run_dir)
    example = GroundingPictures(loaded.model, scenes["flickr"], "val", images).example(2)
    with np.load(scenes["flickr"] / "val.npz") as arrays:
        used = arrays["entity_ids"][2] > 0
        positions, image_id = arrays["entity_positions"][2][used], int(arrays["image_id"][2])
        caption_index, tokens = int(arrays["caption_index"][2]), arrays["tokens"][2]
    caption = parse_sentences_file(scenes["raw"] / "flickr30k" / "Sentences" / f"{image_id}.txt")[caption_index]
    phrases = [caption.text[p.start:p.end] for p in caption.phrases if p.is_visual]
    assert example.phrases == phrases[: int(used.sum())] and example.caption == caption.text
    features, spatial, _ = FeatureStore.open(scenes["flickr"] / "features").get(image_id)
    with torch.no_grad():
        logits = loaded.model(torch.from_numpy(features)[None], torch.from_numpy(spatial)[None],
                              torch.from_numpy(tokens)[None], torch.from_numpy(positions)[None]).logits
    np.testing.assert_array_equal(example.top_boxes, logits[0, 0].argmax(dim=0).numpy())
    legend = grounding_figure(example).legends[0]
    texts = [text.get_text() for text in legend.get_texts()]
    assert len(texts) == len(phrases[: int(used.sum())])
    assert all(phrase in text for phrase, text in zip(example.phrases, texts, strict=True))


def test_phrase_texts_come_from_the_raw_folder_the_dataset_was_prepared_from(scenes: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    """Images elsewhere (a copy without Sentences/ beside it) or none at all: the phrase texts come from the
    Sentences/ of the manifest's root, the folder `ban prepare flickr30k --root` read; a dataset prepared before
    the root was recorded names the phrases by their last words, as the model read them."""
    images = shutil.copytree(scenes["raw"] / "flickr30k" / "images", tmp_path / "pictures" / "flickr")
    model = load_run(make_run(tmp_path / "run-grounding", "grounding", scenes["flickr"])).model
    with np.load(scenes["flickr"] / "val.npz") as arrays:
        used = arrays["entity_ids"][2] > 0
        positions, image_id = arrays["entity_positions"][2][used], int(arrays["image_id"][2])
        caption_index, tokens = int(arrays["caption_index"][2]), arrays["tokens"][2]
    caption = parse_sentences_file(scenes["raw"] / "flickr30k" / "Sentences" / f"{image_id}.txt")[caption_index]
    phrases = [caption.text[p.start:p.end] for p in caption.phrases if p.is_visual][: int(used.sum())]
    for image_dir in (images, None):
        example = GroundingPictures(model, scenes["flickr"], "val", image_dir).example(2)
        assert (example.caption, example.phrases) == (caption.text, phrases)
    data = shutil.copytree(scenes["flickr"], tmp_path / "flickr")
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["root"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    dictionary = json.loads((data / "dictionary.json").read_text())["tokens"]
    unnamed = GroundingPictures(model, data, "val", images).example(2)  # no Sentences/ to read
    assert unnamed.phrases == [f"…{dictionary[tokens[p]]}" for p in positions]


def resized_copy(source: Path, target: Path, size: tuple[int, int]) -> Path:
    """A real picture of ``size`` = (width, height) at ``target``: the one in ``source`` resized."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.convert("RGB").resize(size).save(target)
    return target


def test_an_image_file_of_another_size_is_not_drawn_under_the_boxes(vqa_run: Path, scenes: dict[str, Path],
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The image folder's file is not the picture the features were detected on (a regenerated raw folder,
    --images pointing at other pictures): its size says so; the boxes go on the blank canvas, with a line on
    stderr naming the file and both sizes."""
    rows = val_rows(scenes["vqa"])
    image_id, question_id = int(rows["image_id"][0]), int(rows["question_id"][0])
    real = find_coco_image(scenes["raw"] / "images", "val2014", image_id)
    width, height = FeatureStore.open(scenes["vqa"]).image_size(image_id)
    with Image.open(real) as image:
        assert image.size == (width, height)  # the scene's own picture: the size the features were detected on
    other = resized_copy(real, tmp_path / "images" / real.name, (width + 40, height // 2))
    command = ["visualize", str(vqa_run), "--questions", str(question_id), "--images", str(other.parent)]
    assert main([*command, "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert (f"{other}: the image is {width + 40}×{height // 2} pixels but its features were detected on a "
            f"{width}×{height} image" in captured.err)
    assert "blank canvas" in captured.out
    example = VQAPictures(load_run(vqa_run).model, scenes["vqa"], "val", other.parent).example(0)
    assert not example.image_found and len(np.unique(np.asarray(example.image).reshape(-1, 3), axis=0)) == 1
    assert_real_picture(tmp_path / "out" / f"q{question_id}.png")
    with np.load(scenes["flickr"] / "val.npz") as arrays:  # grounding pictures check their images alike
        flickr_id = int(arrays["image_id"][0])
    flickr_images = scenes["raw"] / "flickr30k" / "images"
    resized_copy(find_plain_image(flickr_images, flickr_id), tmp_path / "flickr" / f"{flickr_id}.png", (64, 48))
    model = load_run(make_run(tmp_path / "run-grounding", "grounding", scenes["flickr"])).model
    assert not GroundingPictures(model, scenes["flickr"], "val", tmp_path / "flickr").example(0).image_found
    assert f"{tmp_path / 'flickr' / f'{flickr_id}.png'}: the image is 64×48 pixels" in capsys.readouterr().err
    assert GroundingPictures(model, scenes["flickr"], "val", flickr_images).example(0).image_found


def test_a_phrase_word_the_dictionary_does_not_know_is_named_with_what_the_model_read(
        scenes: dict[str, Path], tmp_path: Path) -> None:
    data = shutil.copytree(scenes["flickr"], tmp_path / "flickr")
    sentences = shutil.copytree(scenes["raw"] / "flickr30k" / "Sentences", tmp_path / "raw" / "Sentences")
    with np.load(data / "val.npz") as arrays:
        image_id, caption_index = int(arrays["image_id"][2]), int(arrays["caption_index"][2])
        tokens = arrays["tokens"][2]
    path = sentences / f"{image_id}.txt"
    caption = parse_sentences_file(path)[caption_index]
    phrase = next(p for p in caption.phrases if p.is_visual)
    text = caption.text[phrase.start:phrase.end]
    changed = text.rsplit(" ", 1)[0] + " zebraish"  # the phrase's last word, where the model reads the phrase
    lines = [line for line in path.read_text().split("\n") if line.strip()]
    lines[caption_index] = lines[caption_index].replace(f" {text}]", f" {changed}]", 1)
    path.write_text("\n".join(lines) + "\n")
    dictionary = Dictionary.load(data / "dictionary.json")
    position = len(tokenize(caption.text[: phrase.end])) - 1
    with_tokens(data / "val.npz", 2, [*tokens[:position], dictionary.index_of("zebraish")])
    run_dir = make_run(tmp_path / "run-grounding", "grounding", data)
    example = GroundingPictures(load_run(run_dir).model, data, "val", tmp_path / "raw" / "images").example(2)
    assert example.phrases[0] == f"{changed} (zebraish→{dictionary.tokens[-1]})"
    assert example.phrases[1:] and all("→" not in phrase for phrase in example.phrases[1:])
    assert_real_picture(save_png(grounding_figure(example), tmp_path / "grounding.png"))


def test_a_reference_positions_dataset_labels_its_tokenless_phrase_slots(scenes: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """`--entity-positions reference` keeps a visual phrase without tokens (`[… ,]`) as a slot: the legend
    labels every slot with its own phrase, not the next one's."""
    raw = shutil.copytree(scenes["raw"] / "flickr30k", tmp_path / "raw")
    with np.load(scenes["flickr"] / "val.npz") as arrays:
        image_id, caption_index = int(arrays["image_id"][0]), int(arrays["caption_index"][0])
    path = raw / "Sentences" / f"{image_id}.txt"
    lines = [line for line in path.read_text().split("\n") if line.strip()]
    first = next(p for p in parse_sentences_file(path)[caption_index].phrases if p.is_visual)
    lines[caption_index] = f"[/EN#{first.entity_id}/other ,] {lines[caption_index]}"
    path.write_text("\n".join(lines) + "\n")
    data = tmp_path / "flickr"
    prepare_flickr30k(raw, [raw / "features.tsv"], data, entity_positions="reference", progress=False)
    with np.load(data / "val.npz") as arrays:
        row = int(np.flatnonzero((arrays["image_id"] == image_id) & (arrays["caption_index"] == caption_index))[0])
    caption = parse_sentences_file(path)[caption_index]
    visual = [caption.text[p.start:p.end] for p in caption.phrases if p.is_visual]
    assert visual[0] == ","
    run_dir = make_run(tmp_path / "run-grounding", "grounding", data)
    example = GroundingPictures(load_run(run_dir).model, data, "val", raw / "images").example(row)
    assert example.phrases == visual[: len(example.phrases)] and len(example.phrases) >= 2


def test_the_title_counts_answers_as_the_metric_compares_them() -> None:
    from ban.viz.attention import answer_summary

    assert answer_summary(["0"] * 6 + ["none", "none", "1", "0."]) == "0 (×7), none (×2), 1 (×1)"
    assert answer_summary(["0."] * 10) == "0. (×10)"  # unanimous answers are compared as given
    assert answer_summary([]) == "(no annotations for this split)"


def test_a_vqa_run_needs_nothing_of_the_grounding_readers(monkeypatch):
    """The GPU machine's image has no defusedxml: a VQA run's end-of-training pictures must not import the
    Flickr30k XML readers (they made every `ban train` there fail after training)."""
    import importlib
    import sys

    for name in ("ban.viz.report", "ban.viz.grounding", "ban.data.flickr30k_parse", "defusedxml",
                 "defusedxml.ElementTree"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "defusedxml", None)  # an import of it raises ImportError
    report = importlib.import_module("ban.viz.report")
    assert callable(report.write_report_pictures) and "ban.viz.grounding" not in sys.modules


def test_the_images_beside_the_raw_files_are_found_wherever_the_dataset_lies(scenes: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    # prepared away from the scenes (`ban prepare vqa2 --root scenes/vqa … --out data/vqa`): the manifest's root
    # leads to scenes/images and scenes/flickr30k/images, which no folder near the dataset holds
    from ban.viz.report import default_image_dir

    elsewhere = {task: tmp_path / "data" / task for task in ("vqa", "grounding")}
    for task, source in (("vqa", scenes["vqa"]), ("grounding", scenes["flickr"])):
        shutil.copytree(source, elsewhere[task])
    assert default_image_dir(elsewhere["vqa"], "vqa") == scenes["raw"].resolve() / "images"
    assert default_image_dir(elsewhere["grounding"], "grounding") == scenes["raw"].resolve() / "flickr30k" / "images"
    manifest = json.loads((elsewhere["vqa"] / "manifest.json").read_text())
    del manifest["root"]  # prepared before the root was recorded: nothing found, as before
    (elsewhere["vqa"] / "manifest.json").write_text(json.dumps(manifest))
    assert default_image_dir(elsewhere["vqa"], "vqa") is None


def test_a_box_is_outlined_on_the_pixels_its_normalised_corners_name() -> None:
    """Box [0.25, 0.2, 0.5, 0.6] on a 200×100 image: corners × (width, height) = pixels (50, 20)–(100, 60); the
    outline starts on that column and row (Pillow draws it inward from the corners), the pixels just outside stay
    white. Both drawings: the weighted one (weight 1 against 0: fully opaque) and the coloured one."""
    white, box = Image.new("RGB", (200, 100), (255, 255, 255)), [0.25, 0.2, 0.5, 0.6]
    weighted = np.asarray(draw_weighted_boxes(white, np.array([box, [0.9, 0.9, 0.95, 0.95]]), np.array([1.0, 0.0])))
    colored = np.asarray(draw_colored_boxes(white, np.array([box]), [(40, 90, 200)]))
    for drawn, color in ((weighted, (230, 30, 30)), (colored, (40, 90, 200))):
        for y, x in ((40, 50), (20, 75), (40, 100), (60, 75)):  # left, top, right and bottom edge
            assert tuple(drawn[y, x]) == color
        for y, x in ((40, 47), (40, 49), (18, 75), (19, 75), (40, 101), (40, 103), (61, 75), (63, 75)):
            assert tuple(drawn[y, x]) == (255, 255, 255)


def test_each_glimpse_panel_shows_that_glimpses_attention() -> None:
    """Glimpse 1 attends box 0, glimpse 2 box 3 (0.7 against 0.1 each): by ``box_opacities`` the attended box is
    fully opaque, its fill 110/255 of red (green 255 − 225 × 110/255 ≈ 158), the others at the even share or below
    get no fill (int(110 × 0.08²) = 0), so each panel's strong fill sits on its own glimpse's box."""
    boxes = QUADRANT_BOXES
    attention = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])[:, :, None]  # [G, N, L = 1]
    white = Image.new("RGB", (480, 320), (255, 255, 255))
    example = AttentionExample(1, 2, "where is it?", ["(question)"], attention, boxes, "left", [], white, True)
    panels = [np.asarray(axes.images[0].get_array()) for axes in attention_figure(example).axes
              if "attention per box" in axes.get_title()]
    centres = [(int((y1 + y2) / 2 * 320), int((x1 + x2) / 2 * 480)) for x1, y1, x2, y2 in boxes]
    assert len(panels) == 2
    for panel, attended in zip(panels, (0, 3), strict=True):
        greens = [int(panel[y, x, 1]) for y, x in centres]
        assert greens[attended] == pytest.approx(158, abs=1)
        assert all(green == 255 for box, green in enumerate(greens) if box != attended)


def test_each_phrase_is_drawn_and_named_with_its_own_top_box() -> None:
    """Scores make box 3 the top box of phrase 1 and box 2 that of phrase 2: phrase k's colour ``phrase_color(k)``
    outlines its top box (opaque from the corner pixel (264, 176) of box 3 = 0.55 × (480, 320)) over a fill of
    alpha 50 (white + (colour − 255) × 50/255 at the centre), boxes 0 and 1 stay white, and the legend reads
    ``"<k>. <phrase>  (box <top box>)"``."""
    boxes = QUADRANT_BOXES
    scores = np.array([[0.1, 0.2], [0.3, -1.0], [0.2, 2.0], [1.5, 0.4]])  # [N = 4 boxes, E = 2 phrases]
    white = Image.new("RGB", (480, 320), (255, 255, 255))
    example = GroundingExample(7, "a dog chases a ball", ["a dog", "a ball"], scores, boxes, white, True)
    figure = grounding_figure(example)
    drawn = np.asarray(figure.axes[0].images[0].get_array(), dtype=int)
    centres = [(int((y1 + y2) / 2 * 320), int((x1 + x2) / 2 * 480)) for x1, y1, x2, y2 in boxes]
    for phrase, top in ((0, 3), (1, 2)):
        color = np.array(phrase_color(phrase))
        np.testing.assert_allclose(drawn[centres[top]], 255 + (color - 255) * 50 / 255, atol=1)
    assert tuple(drawn[250, 264]) == tuple(drawn[176, 300]) == phrase_color(0)  # box 3's left and top edges
    assert all(tuple(drawn[centres[box]]) == (255, 255, 255) for box in (0, 1))
    texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert texts == ["1. a dog  (box 3)", "2. a ball  (box 2)"]


def test_the_number_of_a_box_barely_attended_can_still_be_read() -> None:
    """Box 1 has weight 0 (drawn at the faintest opacity, 0.08) but its label is written at opacity 0.6 or more,
    after every box: its black outline darkens the white image to 255 × 0.4 = 102 or below somewhere near the
    box's top-left corner (at 0.08 it would stay above 230)."""
    white = Image.new("RGB", (240, 240), (255, 255, 255))
    boxes = np.array([[0.05, 0.05, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]])
    drawn = np.asarray(draw_weighted_boxes(white, boxes, np.array([1.0, 0.0]), labels=["0", "1"]), dtype=int)
    label_area = drawn[122:140, 122:140]  # the box's corner is at (120, 120)
    assert label_area.min() <= 102
