"""Parsers of the official Flickr30k Entities Sentences and Annotations files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ban.data.flickr30k_parse import parse_annotation_file, parse_caption, parse_sentences_file
from ban.data.flickr30k_prepare import read_split
from ban.data.tokenizer import tokenize
from ban.errors import DataError


def test_caption_phrases_and_plain_text() -> None:
    line = ("[/EN#18/people A man] with [/EN#0/notvisual nothing] and [/EN#19/people/other his  son] "
            "near [/EN#18/people him] .\n")
    caption = parse_caption(line)
    assert caption.text == "A man with nothing and his  son near him ."
    spans = [(p.entity_id, p.types, caption.text[p.start:p.end], p.is_visual) for p in caption.phrases]
    assert spans == [
        (18, ("people",), "A man", True),
        (0, ("notvisual",), "nothing", False),
        (19, ("people", "other"), "his  son", True),
        (18, ("people",), "him", True),
    ]


def test_caption_without_phrases_and_glued_suffix() -> None:
    assert parse_caption("Just words .").phrases == ()
    caption = parse_caption("[/EN#1/people The man]'s dog")
    assert caption.text == "The man's dog"
    assert caption.text[caption.phrases[0].start:caption.phrases[0].end] == "The man"


def references_text(line: str) -> str:
    """The authors' caption of a Sentences line: utils.remove_annotations(line.strip())."""
    return re.sub(r"\[[^ ]+ ", "", line.strip()).replace("]", "")


@pytest.mark.parametrize("line", [
    "[/EN#1/people A man] walks .",  # a phrase at the start
    "A dog chases [/EN#2/animals a cat]",  # … at the end
    "[/EN#3/people Two  men]   and  [/EN#4/people/other  a woman ]  talk .  ",  # spaces everywhere
    "  \t[/EN#5/people The man] 's hat and [/EN#6/people the woman]'s coat\t \r",  # 's after a phrase, glued too
    "[/EN#7/other a U.S. flag , torn] , [/EN#8/other it's (ok) !] ? [/EN#9/other --] [/EN#10/other ,]",  # punctuation
    "[/EN#0/notvisual Nothing] but [/EN#11/clothing/other a\tred\u00a0hat]\x0c.",  # other whitespace inside
    "[/EN#12/people man][/EN#13/people woman]",  # phrases side by side
    "No phrase at all , just words .",
    "",
])
def test_the_reference_text_is_the_references_regex_result(line: str) -> None:
    """Each phrase's words as written (spaces kept) and the caption ban splits for the reference's positions are
    the reference's own, to the byte."""
    caption = parse_caption(line)
    assert caption.reference_text == references_text(line)
    assert [phrase.written for phrase in caption.phrases] == [
        inside.split(" ", 1)[1] for inside in re.findall(r"\[(.*?)\]", line.strip())]


@pytest.mark.parametrize(
    ("line", "field", "column"),
    [
        ("A [/EN#x/people man] .", "phrase", 3),  # id is not a number: not phrase markup
        ("A [man] walks .", "phrase", 3),
        ("A [/EN#4/people man walks .", "phrase", 3),
        ("A man] walks .", "phrase", 6),
        ("A [/EN#4/robots man] .", "type", 3),
        ("A [/EN#4/people ] .", "phrase", 3),
    ],
)
def test_malformed_captions(line: str, field: str, column: int) -> None:
    with pytest.raises(DataError) as caught:
        parse_caption(line, path="Sentences/7.txt", line_number=2)
    assert caught.value.path == "Sentences/7.txt"
    assert caught.value.record == f"line 2, column {column}"
    assert caught.value.field == field


def test_sentences_file(tmp_path: Path) -> None:
    path = tmp_path / "7.txt"
    path.write_text("[/EN#1/people A man] runs .\n\n[/EN#2/animals A dog] barks .\n", encoding="utf-8")
    captions = parse_sentences_file(path)
    assert [caption.text for caption in captions] == ["A man runs .", "A dog barks ."]
    path.write_text("ok .\n[broken\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        parse_sentences_file(path)
    with pytest.raises(DataError, match="not found"):
        parse_sentences_file(tmp_path / "missing.txt")
    for empty in ("", "\n \n"):  # an empty or blank copy: its image dropped out of the split silently
        path.write_text(empty, encoding="utf-8")
        with pytest.raises(DataError, match=r"7\.txt: no caption \(every Flickr30k Entities image has five\)"):
            parse_sentences_file(path)
    path.write_bytes("[/EN#1/people A man] walks \x0c.\r\nA \u2028woman sits .\r\n".encode())
    assert [caption.text for caption in parse_sentences_file(path)] == ["A man walks \x0c.", "A \u2028woman sits ."]


def test_a_byte_order_mark_is_not_part_of_the_first_word(tmp_path: Path) -> None:
    """A Sentences file or split list saved by a Windows editor starts with U+FEFF: not text, dropped."""
    path = tmp_path / "7.txt"
    path.write_bytes(b"\xef\xbb\xbfa [/EN#1/people man] runs .\r\n")
    caption, = parse_sentences_file(path)
    assert caption.text == "a man runs ." and tokenize(caption.text)[0] == "a"
    assert caption.phrases[0].start == 2
    (tmp_path / "train.txt").write_bytes(b"\xef\xbb\xbf101\n202\n")
    assert read_split(tmp_path / "train.txt") == [101, 202]


ANNOTATION = """<annotation>
  <filename>7.jpg</filename>
  <size><width>500</width><height>333</height><depth>3</depth></size>
  <object><name>1</name><name>2</name>
    <bndbox><xmin>10</xmin><ymin>20</ymin><xmax>110</xmax><ymax>220</ymax></bndbox></object>
  <object><name>1</name>
    <bndbox><xmin>300</xmin><ymin>30</ymin><xmax>400</xmax><ymax>130</ymax></bndbox></object>
  <object><name>3</name><nobndbox>0</nobndbox><scene>1</scene></object>
  <object><name>4</name><nobndbox>1</nobndbox><scene>0</scene></object>
</annotation>
"""


def test_annotation_file(tmp_path: Path) -> None:
    path = tmp_path / "7.xml"
    path.write_text(ANNOTATION, encoding="utf-8")
    annotation = parse_annotation_file(path)
    assert (annotation.width, annotation.height) == (500, 333)
    assert annotation.boxes == {
        1: [(10.0, 20.0, 110.0, 220.0), (300.0, 30.0, 400.0, 130.0)],
        2: [(10.0, 20.0, 110.0, 220.0)],
    }
    assert annotation.scene == {3}
    assert annotation.no_box == {4}


@pytest.mark.parametrize(
    ("broken", "record", "field", "message"),
    [
        (ANNOTATION.replace("<xmin>10</xmin>", ""), "<object> #1", "bndbox/xmin", "missing"),
        (ANNOTATION.replace("<xmin>300</xmin>", "<xmin>3x0</xmin>"), "<object> #2", "bndbox/xmin", "number"),
        (ANNOTATION.replace("<xmax>400</xmax>", "<xmax>200</xmax>"), "<object> #2", "bndbox", "max < min"),
        (ANNOTATION.replace("<name>3</name>", ""), "<object> #3", "name", "no <name>"),
        (ANNOTATION.replace("<name>4</name>", "<name>four</name>"), "<object> #4", "name", "integer"),
        (ANNOTATION.replace("<height>333</height>", ""), "size", "size/height", "missing"),
        (ANNOTATION.replace("</annotation>", ""), None, None, "not well-formed"),
        (ANNOTATION.replace("annotation>", "notes>"), None, None, "expected <annotation>"),
    ],
)
def test_malformed_annotation_names_file_element_and_field(
    tmp_path: Path, broken: str, record: str | None, field: str | None, message: str
) -> None:
    path = tmp_path / "7.xml"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(DataError, match=message) as caught:
        parse_annotation_file(path)
    assert caught.value.path == str(path)
    assert caught.value.record == record
    assert caught.value.field == field


def test_entity_expansion_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.xml"
    path.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n'
        "<annotation><size><width>&b;</width><height>1</height></size></annotation>\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match="forbidden XML construct") as caught:
        parse_annotation_file(path)
    assert caught.value.path == str(path)
    with pytest.raises(DataError, match="not found"):
        parse_annotation_file(tmp_path / "missing.xml")
