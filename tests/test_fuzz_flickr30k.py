"""Property-based tests of the Flickr30k Entities readers: Sentences lines (round trip of random captions and
random garbage) and Annotations XML (random corruptions). Bad input gives a DataError naming the file; what is
accepted is what the file says.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ban.data.flickr30k_parse import KNOWN_TYPES, parse_annotation_file, parse_caption, parse_sentences_file
from ban.errors import DataError

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
PLAIN = st.text(st.characters(blacklist_characters="[]\r\n\x1c\x1d\x1e\x85\u2028\u2029", blacklist_categories=["Cs"]),
                max_size=12)
WORDS = PLAIN.filter(lambda text: text.strip())
PHRASE = st.tuples(st.integers(0, 10**6), st.lists(st.sampled_from(sorted(KNOWN_TYPES)), min_size=1, max_size=3),
                   WORDS)


@FUZZ
@given(st.lists(st.one_of(PLAIN, PHRASE), max_size=6))
def test_random_captions_round_trip(segments):
    line, text, phrases = "", "", []
    for segment in segments:
        if isinstance(segment, str):
            line += segment
            text += segment
        else:
            entity_id, types, words = segment
            line += f"[/EN#{entity_id}/{'/'.join(types)} {words}]"
            phrases.append((entity_id, tuple(types), words.strip()))
            text += words.strip()
    caption = parse_caption(line)
    assert caption.text == text
    assert [(p.entity_id, p.types, caption.text[p.start:p.end]) for p in caption.phrases] == phrases


@FUZZ
@given(st.lists(st.one_of(PLAIN, PHRASE), max_size=6), st.text(" \t\x0b\x0c\xa0\u3000", max_size=3),
       st.text(" \t\x0b\x0c\xa0\u3000", max_size=3))
def test_the_reference_text_is_the_references_regex_result(segments, lead, trail):
    """The text ban splits for --entity-positions reference is utils.remove_annotations(line.strip()) of the
    authors' code, and each phrase's written words are what their code splits, for any line ban accepts."""
    line = lead + "".join(segment if isinstance(segment, str) else
                          f"[/EN#{segment[0]}/{'/'.join(segment[1])} {segment[2]}]" for segment in segments) + trail
    caption = parse_caption(line)
    assert caption.reference_text == re.sub(r"\[[^ ]+ ", "", line.strip()).replace("]", "")
    assert [phrase.written for phrase in caption.phrases] == [
        inside.split(" ", 1)[1] for inside in re.findall(r"\[(.*?)\]", line.strip())]


@FUZZ
@given(st.text(st.sampled_from("[]/EN#0123 peopl\u00e9xa"), max_size=40))
def test_random_markup_is_parsed_or_refused(line):
    try:
        caption = parse_caption(line, path="s.txt", line_number=3)
    except DataError as error:
        assert "s.txt" in str(error) and "line 3" in str(error)
        return
    assert "[" not in caption.text and "]" not in caption.text
    assert len(caption.phrases) == line.count("[")
    assert caption.reference_text == re.sub(r"\[[^ ]+ ", "", line.strip()).replace("]", "")


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_sentences_files(data, tmp_path):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "1000.txt"
    path.write_bytes(data)
    try:
        captions = parse_sentences_file(path)
    except DataError as error:
        assert "1000.txt" in str(error)
        return
    # lines as the reference's text-mode read gives them: ended by \n, \r\n or \r only (not by the other
    # characters str.splitlines() cuts at, e.g. \x0b)
    lines = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    assert len(captions) == sum(1 for line in lines if line.strip())


XML = """<annotation>
  <filename>1000.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object><name>5</name><name>6</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>110</xmax><ymax>220</ymax></bndbox></object>
  <object><name>7</name><nobndbox>1</nobndbox></object>
  <object><name>8</name><scene>1</scene><nobndbox>0</nobndbox></object>
  <object><name>5</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object>
</annotation>
"""
REPLACEMENTS = ["", "x", "-1", "1e3", "nan", "inf", "-inf", "0x10", " 7 ", "1.5", "99999999999999999999", "&amp;",
                "<", "</name>", "<name/>", "<!ENTITY a 'b'>", "&a;", "]]>", "\x00", "<bndbox/>"]


@st.composite
def corrupted_xml(draw: st.DrawFn) -> bytes:
    text = XML
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "cut", "flip", "swap-tag"]))
        at = draw(st.integers(0, max(len(text) - 1, 0)))
        if kind == "replace":
            end = at + draw(st.integers(0, 6))
            text = text[:at] + draw(st.sampled_from(REPLACEMENTS)) + text[end:]
        elif kind == "cut":
            text = text[:at]
        elif kind == "flip" and text:
            text = text[:at] + chr(ord(text[at]) ^ draw(st.integers(1, 127))) + text[at + 1:]
        else:
            text = text.replace(draw(st.sampled_from(["xmin", "name", "bndbox", "object", "size", "width"])),
                                draw(st.sampled_from(["xmax", "nom", "box", "obj", "sise", "height"])), 1)
    return text.encode("utf-8", errors="surrogatepass")


@FUZZ
@given(data=corrupted_xml())
def test_corrupted_annotation_xml(data, tmp_path):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "1000.xml"
    path.write_bytes(data)
    try:
        annotation = parse_annotation_file(path)
    except DataError as error:
        assert "1000.xml" in str(error)
        return
    for entity_id, boxes in annotation.boxes.items():
        assert isinstance(entity_id, int)
        for box in boxes:
            assert all(math.isfinite(value) for value in box), box  # a NaN corner would match nothing, silently
            assert box[2] >= box[0] and box[3] >= box[1]
    assert annotation.width > 0 and annotation.height > 0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999"])
@pytest.mark.parametrize("corner", ["xmin", "ymin", "xmax", "ymax"])
def test_non_finite_box_corners_are_refused(corner, value, tmp_path):
    path = tmp_path / "1000.xml"
    path.write_text(re.sub(f"<{corner}>[0-9]+</{corner}>", f"<{corner}>{value}</{corner}>", XML), encoding="utf-8")
    with pytest.raises(DataError, match=f"1000.xml.*bndbox/{corner}"):
        parse_annotation_file(path)
