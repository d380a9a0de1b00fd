"""Parsers of the official Flickr30k Entities files.

- ``Sentences/<image>.txt``: one caption a line; each phrase is written ``[/EN#<id>/<type>[/<type>…] words]``
  (id 0 with type ``notvisual`` marks phrases that refer to nothing in the image). The same entity id may
  mark several phrases of a caption (``a man … his``).
- ``Annotations/<image>.xml`` (PASCAL-VOC style): ``<size>`` with ``<width>``/``<height>``, then ``<object>``
  elements, each with one or more ``<name>ENTITY_ID</name>`` and either a ``<bndbox>`` (``xmin``, ``ymin``,
  ``xmax``, ``ymax``: 1-based pixel corners, used as they are, like the reference; each must be finite and within
  ±:data:`~ban.data.features.VALUE_LIMIT`, as detected boxes must, while corners a little past the image are kept)
  or the 0/1 flags ``<nobndbox>`` and ``<scene>`` (scene entities). An entity may have several boxes (several
  objects name it) and a box may belong to several entities. Entities named by no box-carrying object have no
  ground truth.

Each caption also keeps the reference's own view of its line (:attr:`Caption.reference_text`, the words of
each phrase as written in :attr:`Phrase.written`), which ``ban prepare flickr30k --entity-positions reference``
splits on single spaces as the authors' code did.

XML is read with :mod:`defusedxml` (no DTDs, no entity expansion). Malformed input raises
:class:`~ban.errors.DataError` naming the file, the line or element, and the field.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from dataclasses import dataclass, field

import defusedxml
import defusedxml.ElementTree as SafeElementTree

from ban.data.features import VALUE_LIMIT
from ban.data.textfile import read_text
from ban.errors import DataError

ENTITY_TYPES: tuple[str, ...] = (
    "people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other",
)
NOT_VISUAL = "notvisual"
KNOWN_TYPES = frozenset(ENTITY_TYPES) | {NOT_VISUAL}


def type_bits(types: Iterable[str]) -> int:
    """The bit set of a phrase's types: ``type_bits(["people", "other"]) == 0b10000001``; unknown names raise
    ``KeyError``."""
    bits = 0
    for name in types:
        if name not in ENTITY_TYPES:
            raise KeyError(f"unknown entity type {name!r}; known: {', '.join(ENTITY_TYPES)}")
        bits |= 1 << ENTITY_TYPES.index(name)
    return bits

# "[/EN#123/people/other A young man]": id, "/people/other", the phrase's words.
_PHRASE = re.compile(r"\[/EN#(\d+)((?:/[^\s/\]]+)+) ([^\[\]]*)\]")


@dataclass(frozen=True)
class Phrase:
    """One marked phrase of a caption: ``text[start:end]`` of :attr:`Caption.text` is its words; ``written`` is
    them exactly as the line has them between the type and ``]`` (spaces kept), the phrase the reference splits
    on single spaces and searches."""

    entity_id: int
    types: tuple[str, ...]
    start: int
    end: int
    written: str = ""

    @property
    def is_visual(self) -> bool:
        """False for the non-visual phrases (entity id 0 / type ``notvisual``), which are never grounded."""
        return self.entity_id != 0 and NOT_VISUAL not in self.types


@dataclass(frozen=True)
class Caption:
    """A caption with its markup removed (``text``: each phrase's words stripped of the spaces around them) and
    its phrases in order. ``reference_text`` is the line as the reference's ``remove_annotations(line.strip())``
    gives it, ``re.sub(r'\\[[^ ]+ ', '', s).replace(']', '')``: the line's ends stripped of whitespace, each
    phrase's ``[/EN#<id>/<type> `` and ``]`` removed, nothing else touched (it differs from ``text`` only in the
    whitespace at a phrase's edges and the line's ends). ``line_number`` is the caption's line in its Sentences
    file (1-based)."""

    text: str
    phrases: tuple[Phrase, ...]
    reference_text: str = ""
    line_number: int = 0


@dataclass
class ImageAnnotation:
    """The boxes of one image: entity id → its ground-truth boxes ``(x1, y1, x2, y2)`` in pixels; the ids
    flagged ``nobndbox`` and ``scene``."""

    width: int
    height: int
    boxes: dict[int, list[tuple[float, float, float, float]]] = field(default_factory=dict)
    no_box: set[int] = field(default_factory=set)
    scene: set[int] = field(default_factory=set)


def parse_caption(line: str, *, path: str | os.PathLike[str] | None = None, line_number: int = 0) -> Caption:
    """Parse one line of a Sentences file.

    >>> caption = parse_caption("[/EN#18/people A man] wears [/EN#20/clothing/other a hat] .")
    >>> caption.text
    'A man wears a hat .'
    >>> [(p.entity_id, p.types, caption.text[p.start:p.end]) for p in caption.phrases]
    [(18, ('people',), 'A man'), (20, ('clothing', 'other'), 'a hat')]
    """
    pieces: list[str] = []
    phrases: list[Phrase] = []
    length = 0
    cursor = 0
    for match in _PHRASE.finditer(line):
        plain = line[cursor:match.start()]
        _check_plain(plain, path, line_number, cursor)
        words = match.group(3).strip()
        types = tuple(match.group(2).split("/")[1:])
        unknown = [name for name in types if name not in KNOWN_TYPES]
        if unknown:
            raise DataError(
                f"unknown entity type {unknown[0]!r} (known: {', '.join(sorted(KNOWN_TYPES))})",
                path=path, record=f"line {line_number}, column {match.start() + 1}", field="type",
            )
        if not words:
            raise DataError("phrase has no words", path=path,
                            record=f"line {line_number}, column {match.start() + 1}", field="phrase")
        if len(match.group(1)) > 18:  # the prepared arrays hold entity ids as 64-bit integers
            raise DataError(f"entity id of {len(match.group(1))} digits (at most 18)", path=path,
                            record=f"line {line_number}, column {match.start() + 1}", field="entity_id")
        pieces.append(plain)
        length += len(plain)
        phrases.append(Phrase(int(match.group(1)), types, length, length + len(words), match.group(3)))
        pieces.append(words)
        length += len(words)
        cursor = match.end()
    rest = line[cursor:].rstrip("\r\n")
    _check_plain(rest, path, line_number, cursor)
    pieces.append(rest)
    # the line's ends stripped first (as the reference strips each line it reads), then each phrase's markup
    # replaced by its words as written; only whitespace is stripped, never markup, so the phrases are the same
    reference_text = _PHRASE.sub(lambda found: found.group(3), line.strip())
    return Caption("".join(pieces), tuple(phrases), reference_text, line_number)


def _check_plain(text: str, path: str | os.PathLike[str] | None, line_number: int, offset: int) -> None:
    """Text outside phrases must not contain brackets (a bracket there is broken phrase markup)."""
    bad = re.search(r"[\[\]]", text)
    if bad is not None:
        raise DataError(
            "malformed phrase markup: expected [/EN#<id>/<type> words]", path=path,
            record=f"line {line_number}, column {offset + bad.start() + 1}", field="phrase",
        )


def parse_sentences_file(path: str | os.PathLike[str]) -> list[Caption]:
    """All captions of a ``Sentences/<image>.txt`` file, in line order (blank lines are skipped). Lines end at
    ``\n``, ``\r\n`` or ``\r`` only, as the reference reads the files (``str.splitlines`` would also cut at form
    feeds, ``\x1c``–``\x1e``, U+0085, U+2028 and U+2029). A file without a caption is a :class:`DataError`: every
    image of Flickr30k Entities has five, so it is a damaged or truncated copy (its image would drop out silently).
    """
    text = read_text(path, missing="captions file not found")
    captions = [
        parse_caption(line, path=path, line_number=number)
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]
    if not captions:
        raise DataError("no caption (every Flickr30k Entities image has five): a damaged copy?", path=path)
    return captions


def parse_annotation_file(path: str | os.PathLike[str]) -> ImageAnnotation:
    """The boxes of a ``Annotations/<image>.xml`` file (see the module docstring)."""
    try:
        root = SafeElementTree.parse(os.fspath(path)).getroot()
    except FileNotFoundError:
        raise DataError("annotation file not found", path=path) from None
    except defusedxml.DefusedXmlException as error:
        raise DataError(f"forbidden XML construct ({error.__class__.__name__}): DTDs and entities are "
                        "not allowed", path=path) from None
    except ElementTree.ParseError as error:
        raise DataError(f"not well-formed XML ({error})", path=path) from None
    except (LookupError, ValueError) as error:  # an encoding the XML declaration names that expat cannot read
        raise DataError(f"unsupported XML encoding ({error})", path=path) from None
    except OSError as error:  # a directory, a symlink loop
        raise DataError(f"cannot read ({error.strerror or error})", path=path) from None
    if root.tag != "annotation":
        raise DataError(f"root element is <{root.tag}>, expected <annotation>", path=path)
    annotation = ImageAnnotation(
        width=_size(root, "size/width", path), height=_size(root, "size/height", path)
    )
    for index, element in enumerate(root.findall("object"), start=1):
        where = f"<object> #{index}"
        names = element.findall("name")
        if not names:
            raise DataError("object has no <name>", path=path, record=where, field="name")
        entity_ids = [_integer(name, None, path, where, "name") for name in names]
        box = element.find("bndbox")
        if box is not None and len(box):
            coordinates = tuple(_number(box, tag, path, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
            if coordinates[2] < coordinates[0] or coordinates[3] < coordinates[1]:
                raise DataError(f"box {list(coordinates)} has max < min", path=path, record=where,
                                field="bndbox")
            for entity_id in entity_ids:
                annotation.boxes.setdefault(entity_id, []).append(coordinates)
        else:
            if _flag(element, "nobndbox"):
                annotation.no_box.update(entity_ids)
            if _flag(element, "scene"):
                annotation.scene.update(entity_ids)
    return annotation


def _text(element: ElementTree.Element, tag: str | None, path: str | os.PathLike[str], where: str,
          field_name: str) -> str:
    """Stripped text of ``element`` (``tag`` None) or of its child ``tag``; it must not be empty."""
    child = element if tag is None else element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError("missing or empty", path=path, record=where, field=field_name)
    return child.text.strip()


def _integer(element: ElementTree.Element, tag: str | None, path: str | os.PathLike[str], where: str,
             field_name: str | None = None) -> int:
    field_name = field_name or tag or element.tag
    text = _text(element, tag, path, where, field_name)
    try:
        return int(text)
    except ValueError:
        raise DataError(f"expected an integer, got {text!r}", path=path, record=where,
                        field=field_name) from None


def _size(root: ElementTree.Element, tag: str, path: str | os.PathLike[str]) -> int:
    value = _integer(root, tag, path, "size")
    if value <= 0:
        raise DataError(f"expected a positive image size, got {value}", path=path, record="size", field=tag)
    return value


def _number(box: ElementTree.Element, tag: str, path: str | os.PathLike[str], where: str) -> float:
    text = _text(box, tag, path, where, f"bndbox/{tag}")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"expected a number, got {text!r}", path=path, record=where,
                        field=f"bndbox/{tag}") from None
    if not math.isfinite(value):  # a NaN corner would silently match no detected box
        raise DataError(f"expected a finite number, got {text!r}", path=path, record=where, field=f"bndbox/{tag}")
    if abs(value) > VALUE_LIMIT:  # the limit of detected boxes: a corner this far out is a damaged file
        raise DataError(f"expected a pixel corner within ±{VALUE_LIMIT:g}, got {text!r}", path=path, record=where,
                        field=f"bndbox/{tag}")
    return value


def _flag(element: ElementTree.Element, tag: str) -> bool:
    child = element.find(tag)
    return child is not None and (child.text or "").strip() == "1"
