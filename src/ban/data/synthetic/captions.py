"""Flickr30k-Entities-style captions: sentences whose phrases name entities, and the entities' boxes.

Phrases are written `[/EN#<id>/<type> words]`. An entity is one object, a group of objects (one entity with
several boxes; each of those boxes also carries its object's own entity when that is mentioned), a part of an
object (its top, bottom, left or right half), the scene (no box, flagged `scene`) or something not visible
(no box, flagged `nobndbox`). The same object keeps its entity id in all five captions of an image.

The shapes stand in for Flickr30k categories so that every entity type occurs: cube → vehicles, sphere →
animals, cylinder → instruments, cone → people, ring → clothing; object parts are bodyparts, groups of mixed
shapes are other.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ban.data.synthetic.questions import combination_counts, decode_combination, matches, noun_phrase
from ban.data.synthetic.scenes import ATTRIBUTE_NAMES, COLOR, SHAPE, SIZE, Scene

SHAPE_TYPES: tuple[str, ...] = ("vehicles", "animals", "instruments", "people", "clothing")
CAPTIONS_PER_IMAGE = 5
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven")
PARTS = ("top", "bottom", "left side", "right side")
SCENE_PHRASES = ("a gray floor", "a plain background", "an empty room", "a flat table")
HIDDEN_PHRASES = (("people", "the photographer"), ("other", "a lamp"), ("other", "the camera"))
GROUP_FILTERS: tuple[tuple[int, ...], ...] = ((COLOR,), (SHAPE,), (SIZE, SHAPE), (COLOR, SHAPE))


@dataclass
class Entity:
    """A mentioned entity. `boxes` are integer pixel boxes (x1, y1, x2, y2), 1-based as in the XML."""

    entity_id: int
    entity_type: str
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    objects: tuple[int, ...] = ()
    scene: bool = False
    hidden: bool = False


@dataclass
class ImageCaptions:
    """Five caption lines in the Sentences format, and every entity they mention (in id order)."""

    sentences: list[str]
    entities: list[Entity]


def xml_box(box: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel box `[4]` (0-based floats) → 1-based integer corners as Flickr30k Entities writes them."""
    x1, y1, x2, y2 = (int(round(float(v))) + 1 for v in box)
    return x1, y1, x2, y2


class _Mentions:
    """Creates entities on first mention and reuses them afterwards."""

    def __init__(self, rng: np.random.Generator, scene: Scene, first_id: int) -> None:
        self.rng, self.scene, self.next_id = rng, scene, first_id
        self.entities: dict[object, Entity] = {}

    def _entity(self, key: object, entity_type: str, **kwargs: object) -> Entity:
        if key not in self.entities:
            self.entities[key] = Entity(self.next_id, entity_type, **kwargs)  # type: ignore[arg-type]
            self.next_id += 1
        return self.entities[key]

    def _phrase(self, entity: Entity, words: str) -> str:
        return f"[/EN#{entity.entity_id}/{entity.entity_type} {words}]"

    def object(self, index: int, definite: bool) -> str:
        attributes = self.scene.attributes[index]
        columns = tuple(c for c in range(len(ATTRIBUTE_NAMES)) if c == SHAPE or self.rng.random() < 0.5)
        words = noun_phrase(columns, tuple(int(attributes[c]) for c in columns))
        article = "the" if definite else ("an" if words[0] in "aeiou" else "a")
        entity = self._entity(
            ("object", index), SHAPE_TYPES[attributes[SHAPE]],
            boxes=[xml_box(self.scene.boxes[index])], objects=(index,),
        )  # fmt: skip
        return self._phrase(entity, f"{article} {words}")

    def group(self) -> str | None:
        """A phrase for two or more objects sharing some attributes, e.g. 'three red cubes'."""
        for choice in self.rng.permutation(len(GROUP_FILTERS)):
            columns = GROUP_FILTERS[choice]
            counts = combination_counts(self.scene.attributes, columns)
            codes = np.flatnonzero(counts >= 2)
            if len(codes) == 0:
                continue
            values = decode_combination(int(codes[int(self.rng.integers(len(codes)))]), columns)
            members = tuple(int(i) for i in np.flatnonzero(matches(self.scene.attributes, columns, values)))
            shapes = set(self.scene.attributes[list(members), SHAPE].tolist())
            entity_type = SHAPE_TYPES[shapes.pop()] if len(shapes) == 1 else "other"
            entity = self._entity(
                ("group", columns, values), entity_type,
                boxes=[xml_box(self.scene.boxes[i]) for i in members], objects=members,
            )  # fmt: skip
            return self._phrase(entity, f"{COUNT_WORDS[len(members)]} {noun_phrase(columns, values, plural=True)}")
        return None

    def part(self, index: int) -> str:
        side = int(self.rng.integers(len(PARTS)))
        x1, y1, x2, y2 = self.scene.boxes[index]
        half = [(x1, y1, x2, (y1 + y2) / 2), (x1, (y1 + y2) / 2, x2, y2), (x1, y1, (x1 + x2) / 2, y2),
                ((x1 + x2) / 2, y1, x2, y2)][side]  # fmt: skip
        shape_words = noun_phrase((SHAPE,), (int(self.scene.attributes[index, SHAPE]),))
        color = noun_phrase((COLOR,), (int(self.scene.attributes[index, COLOR]),)).split()[0]
        entity = self._entity(("part", index, side), "bodyparts", boxes=[xml_box(np.array(half))])
        return self._phrase(entity, f"the {PARTS[side]} of the {color} {shape_words}")

    def scene_phrase(self) -> str:
        words = SCENE_PHRASES[int(self.rng.integers(len(SCENE_PHRASES)))]
        return self._phrase(self._entity(("scene", words), "scene", scene=True), words)

    def hidden(self) -> str:
        entity_type, words = HIDDEN_PHRASES[int(self.rng.integers(len(HIDDEN_PHRASES)))]
        return self._phrase(self._entity(("hidden", words), entity_type, hidden=True), words)


def _capitalise(sentence: str) -> str:
    """Capitalise the first word, also when the sentence starts with a phrase bracket."""
    if sentence.startswith("[/EN#"):
        head, _, rest = sentence.partition(" ")
        return f"{head} {rest[0].upper()}{rest[1:]}"
    return sentence[0].upper() + sentence[1:]


def _sentence(rng: np.random.Generator, scene: Scene, mentions: _Mentions) -> str:
    pair = rng.choice(scene.num_objects, size=2, replace=False)
    first, second = (int(i) for i in pair[np.argsort(scene.centers[pair, 0])])
    kind = int(rng.integers(5))
    if kind == 0:
        return f"{mentions.object(first, False)} is left of {mentions.object(second, False)} ."
    if kind == 1:
        place = mentions.scene_phrase()
        return f"{mentions.object(first, False)} stands next to {mentions.object(second, True)} on {place} ."
    if kind == 2:
        group = mentions.group()
        if group is not None:
            return f"{group} lie on {mentions.scene_phrase()} ."
    if kind == 3:
        return f"{mentions.object(first, False)} is seen by {mentions.hidden()} ."
    return f"Light falls on {mentions.part(second)} next to {mentions.object(first, False)} ."


def sample_captions(rng: np.random.Generator, scene: Scene, first_entity_id: int) -> ImageCaptions:
    """Five captions for `scene`; entity ids count up from `first_entity_id`."""
    mentions = _Mentions(rng, scene, first_entity_id)
    sentences = [_capitalise(_sentence(rng, scene, mentions)) for _ in range(CAPTIONS_PER_IMAGE)]
    entities = sorted(mentions.entities.values(), key=lambda entity: entity.entity_id)
    return ImageCaptions(sentences=sentences, entities=entities)


def xml_objects(captions: ImageCaptions) -> list[tuple[list[int], tuple[int, int, int, int] | None, Entity]]:
    """The `<object>` elements of the Annotations XML: (entity ids, box or None, owning entity).

    A box shared by several entities (an object and the groups it belongs to) is one element with several
    `<name>`s, as in Flickr30k Entities; entities without a box get one element each with their flags.
    """
    by_box: dict[tuple[int, int, int, int], list[int]] = {}
    owner: dict[tuple[int, int, int, int], Entity] = {}
    elements: list[tuple[list[int], tuple[int, int, int, int] | None, Entity]] = []
    for entity in captions.entities:
        if not entity.boxes:
            elements.append(([entity.entity_id], None, entity))
        for box in entity.boxes:
            by_box.setdefault(box, []).append(entity.entity_id)
            owner.setdefault(box, entity)
    boxed = [(ids, box, owner[box]) for box, ids in by_box.items()]
    return list(itertools.chain(boxed, elements))
