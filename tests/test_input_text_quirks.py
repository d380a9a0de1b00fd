"""Text quirks of real input files, refused by name or read right: a lone UTF-16 surrogate escape in a JSON string;
a GloVe file compressed, with trailing spaces (fastText's ``.vec``) or with a byte-order mark; bottom-up TSV files
of two feature widths (where the width expected came from)."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_data_features import random_image, write_official_tsv
from test_data_vqa2 import TRAIN_ANNOTATIONS, TRAIN_QUESTIONS, write_annotations, write_questions

from ban.cli import main
from ban.data.features_tsv import iter_tsv_files, iter_tsv_records
from ban.data.glove import read_glove
from ban.data.jsonfile import read_json
from ban.errors import DataError

# --- 1. a lone surrogate escape in JSON ---------------------------------------------------------------------------


def _questions_with(path: Path, texts: list[str]) -> None:
    """An official questions file whose questions hold ``texts`` as written in the JSON (escapes kept)."""
    records = [{"image_id": 1, "question": f"@{number}", "question_id": number} for number in range(len(texts))]
    text = json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "train2014",
                       "questions": records})
    for number, question in enumerate(texts):
        text = text.replace(f'"@{number}"', f'"{question}"')
    path.write_text(text)


@pytest.mark.parametrize(
    ("texts", "field", "surrogate"),
    [
        # a valid pair (an emoji, hex in either case) before it is read, not refused
        ([r"a \ud83d\ude00", r"b \uD83D\uDE00", r"what \ud800?"], "questions[2].question", r"\ud800"),
        ([r"what \uDBFF"], "questions[0].question", r"\udbff"),  # upper-case hex
        ([r"what \udc00 is it"], "questions[0].question", r"\udc00"),  # a low one alone
        ([r"\udc00\ud800"], "questions[0].question", r"\udc00"),  # a pair in the wrong order
        ([r"\ud800\ud800\udc00"], "questions[0].question", r"\ud800"),  # a high one, then a pair
        # text after an escaped backslash is no escape: "\\ud800" is the six characters \ud800, read as is
        ([r"\\ud800", r"\\ud800\udc00"], "questions[1].question", r"\udc00"),
        ([r"\ud800\\udc00"], "questions[0].question", r"\ud800"),
    ],
)
def test_a_lone_surrogate_in_a_json_string_is_refused_where_it_is(tmp_path, texts, field, surrogate) -> None:
    path = tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json"
    _questions_with(path, texts)
    with pytest.raises(DataError) as error:
        read_json(path)
    assert str(error.value) == f"{path}: field '{field}': not valid Unicode: a lone surrogate ({surrogate})"
    assert (error.value.path, error.value.field) == (str(path), field)


def test_a_lone_surrogate_in_a_key_or_a_bare_string_is_refused(tmp_path) -> None:
    path = tmp_path / "results.json"
    path.write_text(r'[{"answer": "yes", "question_id": 1}, {"answer": "no", "what \ud800": 2}]')
    with pytest.raises(DataError) as error:
        read_json(path)
    assert (error.value.field, error.value.message) == (r"[1].what \ud800", r"not valid Unicode: a lone surrogate "
                                                                            r"(\ud800)")
    path.write_text(r'"\ud800"')  # a file of one string: the file is all there is to name
    with pytest.raises(DataError) as error:
        read_json(path)
    assert str(error.value) == rf"{path}: not valid Unicode: a lone surrogate (\ud800)"


def test_ban_prepare_refuses_a_question_with_a_lone_surrogate_by_name(tmp_path, capsys) -> None:
    """It used to be accepted, then `ban prepare` died on a UnicodeEncodeError writing the dictionary."""
    root = tmp_path / "raw"
    root.mkdir()
    questions = [dict(record) for record in TRAIN_QUESTIONS]
    questions[2]["question"] = "How many dogs \ud800 are there?"  # json.dumps writes it as the escape \ud800
    write_questions(root / "v2_OpenEnded_mscoco_train2014_questions.json", "train2014", questions)
    write_annotations(root / "v2_mscoco_train2014_annotations.json", "train2014", TRAIN_ANNOTATIONS)
    rng = np.random.default_rng(0)
    write_official_tsv(tmp_path / "trainval.tsv", [random_image(rng, image_id, 4, 8) for image_id in (1, 2, 3)])
    code = main(["prepare", "vqa2", "--root", str(root), "--features", str(tmp_path / "trainval.tsv"),
                 "--out", str(tmp_path / "data"), "--min-answer-count", "1"])
    assert code == 2
    assert capsys.readouterr().err == (f"ban prepare: error: {root / 'v2_OpenEnded_mscoco_train2014_questions.json'}: "
                                       "field 'questions[2].question': not valid Unicode: a lone surrogate (\\ud800)\n")
    assert not (tmp_path / "data").exists()


# --- 2. GloVe files: compressed, trailing spaces, a byte-order mark -----------------------------------------------

GLOVE = "the 0.5 -1 2\ncat 1 0 0.25\ndog -2 3 1\n"


def test_a_compressed_glove_file_is_named_as_such(tmp_path) -> None:
    (tmp_path / "glove.6B.3d.txt.gz").write_bytes(gzip.compress(GLOVE.encode()))
    with zipfile.ZipFile(tmp_path / "glove.6B.zip", "w") as archive:  # as Stanford distributes the files
        archive.writestr("glove.6B.3d.txt", GLOVE)
    for name, message in (("glove.6B.3d.txt.gz", "a gzip-compressed file: decompress it first (gunzip)"),
                          ("glove.6B.zip", "a zip archive: extract its GloVe .txt files first (unzip)")):
        with pytest.raises(DataError) as error:
            read_glove(tmp_path / name, ["cat"], progress=False)
        assert str(error.value) == f"{tmp_path / name}: {message}"


@pytest.mark.parametrize("header", ["", "3 3 \n"])
@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_trailing_spaces_are_accepted(tmp_path, header, line_end) -> None:
    """fastText's .vec files end every line, the header too, with a space."""
    glove = tmp_path / "wiki.en.vec"
    glove.write_bytes((header + GLOVE.replace("\n", " \n")).replace("\n", line_end).encode())
    vectors, found = read_glove(glove, ["cat", "the", "zebra"], progress=False)
    assert found == 2 and vectors.tolist() == [[1, 0, 0.25], [0.5, -1, 2], [0, 0, 0]]


@pytest.mark.parametrize("header", ["", "3 3\n"])
def test_a_byte_order_mark_is_skipped(tmp_path, header) -> None:
    """As Windows editors write one: the first word is read with its vector (it was lost), a header skipped."""
    glove = tmp_path / "glove.txt"
    glove.write_text(header + GLOVE, encoding="utf-8-sig")
    vectors, found = read_glove(glove, ["the", "dog"], progress=False)
    assert found == 2 and vectors.tolist() == [[0.5, -1, 2], [-2, 3, 1]]


# --- 3. TSV feature files of two widths ----------------------------------------------------------------------------


def test_a_tsv_file_of_another_width_names_the_record_read_first(tmp_path) -> None:
    rng = np.random.default_rng(0)
    write_official_tsv(tmp_path / "a.tsv", [random_image(rng, 7, 3, 32), random_image(rng, 8, 2, 32)])
    write_official_tsv(tmp_path / "b.tsv", [random_image(rng, 9, 3, 16)])
    with pytest.raises(DataError) as error:
        list(iter_tsv_files([tmp_path / "a.tsv", tmp_path / "b.tsv"], progress=False))
    assert str(error.value) == (f"{tmp_path / 'b.tsv'}: record line 1 (image_id=9): field 'features': feature width "
                                f"16 (= 48 floats / 3 boxes), expected 32, the width of the first record "
                                f"({tmp_path / 'a.tsv'}: line 1, image_id=7)")


def test_a_record_of_another_width_than_the_one_given_says_so(tmp_path) -> None:
    rng = np.random.default_rng(0)
    write_official_tsv(tmp_path / "a.tsv", [random_image(rng, 7, 3, 16)])
    for read in (lambda: iter_tsv_files([tmp_path / "a.tsv"], feature_dim=32, progress=False),
                 lambda: iter_tsv_records(tmp_path / "a.tsv", feature_dim=32)):
        with pytest.raises(DataError) as error:
            list(read())
        assert error.value.message == ("feature width 16 (= 48 floats / 3 boxes), expected 32, the width given "
                                       "(--feature-dim, or that of the other feature sources)")
