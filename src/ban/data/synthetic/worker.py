"""Generation of one image's data (run in worker processes): scene, boxes, features, questions or captions.

Every image has its own random streams, derived from (seed, image index, stream), so an image's data does not
depend on how the work is split into chunks or processes, and changing the feature width changes the
features only.
"""

from __future__ import annotations

import functools
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ban.data.atomic import write_file
from ban.data.synthetic import annotators, captions, detections, export_flickr, export_vqa, features, questions
from ban.data.synthetic.layout import FLICKR_DIR, VQA_SPLITS, ImageJob
from ban.data.synthetic.render import render_scene
from ban.data.synthetic.scenes import Scene, sample_scene
from ban.data.synthetic.tsv import tsv_row

SCENE, DETECTIONS, FEATURES, QUESTIONS, ANSWERS, CAPTIONS = range(6)
QUESTION_ID_STRIDE = 1000  # question_id = image_id * 1000 + k, as in VQA 2.0
ENTITY_ID_STRIDE = 100  # entity ids of Flickr image i start at i * 100


@dataclass(frozen=True)
class Settings:
    """What every worker needs to know."""

    out_dir: str
    seed: int
    feature_dim: int
    questions_per_image: float
    annotator_accuracy: float
    write_images: bool
    box_counts: str  # detections.UNIFORM_COUNTS or BOTTOM_UP_COUNTS


@dataclass(frozen=True)
class QaRecord:
    """What the statistics and the baselines need of one question."""

    text: str
    family: str
    answer_type: str
    majority: str | None  # None where no annotations are written (test-dev)
    answers: tuple[str, ...]  # the annotators' answers as the annotations file writes them (raw)


@dataclass
class ImageResult:
    """One image's outputs that the main process writes or counts."""

    image_id: int
    tsv_line: str
    box_kinds: np.ndarray  # [4] boxes of each detections kind
    num_objects: int
    question_records: list[str] = field(default_factory=list)
    annotation_records: list[str] = field(default_factory=list)
    qa: list[QaRecord] = field(default_factory=list)
    entity_types: Counter = field(default_factory=Counter)
    entity_flags: Counter = field(default_factory=Counter)  # boxed / scene / nobndbox entities, boxes


def stream(seed: int, index: int, kind: int) -> np.random.Generator:
    """The random generator of one concern (`kind`) of image `index`."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index, kind))))


@functools.lru_cache(maxsize=4)
def _projection(feature_dim: int) -> np.ndarray:
    return features.projection_matrix(feature_dim)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_image(settings: Settings, job: ImageJob) -> ImageResult:
    """Generate everything about one image; writes its PNG (and Flickr text files) itself."""
    seed, index = settings.seed, job.index
    scene = sample_scene(stream(seed, index, SCENE))
    boxes = detections.sample_detections(stream(seed, index, DETECTIONS), scene, settings.box_counts)
    region = features.region_features(stream(seed, index, FEATURES), scene, boxes, _projection(settings.feature_dim))
    result = ImageResult(
        image_id=job.image_id,
        tsv_line=tsv_row(job.image_id, scene.width, scene.height, boxes.boxes, region),
        box_kinds=np.bincount(boxes.kind, minlength=len(detections.KIND_NAMES)),
        num_objects=scene.num_objects,
    )
    out = Path(settings.out_dir)
    if job.dataset == "vqa":
        split = next(s for s in VQA_SPLITS if s.name == job.split)
        _add_questions(settings, job, scene, result, with_answers=split.annotations_file is not None)
        image_file = out / split.image_file(job.image_id)
    else:
        text = captions.sample_captions(stream(seed, index, CAPTIONS), scene, index * ENTITY_ID_STRIDE)
        write_file(out / FLICKR_DIR / "Sentences" / f"{job.image_id}.txt", export_flickr.sentences_text(text))
        xml = export_flickr.annotation_xml(job.image_id, scene.width, scene.height, text)
        write_file(out / FLICKR_DIR / "Annotations" / f"{job.image_id}.xml", xml)
        for entity in text.entities:
            result.entity_types[entity.entity_type] += 1
            result.entity_flags["scene" if entity.scene else "nobndbox" if entity.hidden else "boxed"] += 1
            result.entity_flags["boxes"] += len(entity.boxes)
        result.entity_flags["captions"] += len(text.sentences)
        image_file = out / FLICKR_DIR / "images" / f"{job.image_id}.png"
    if settings.write_images:
        write_file(image_file, _png(render_scene(scene)))
    return result


def _add_questions(settings: Settings, job: ImageJob, scene: Scene, result: ImageResult, with_answers: bool) -> None:
    rng = stream(settings.seed, job.index, QUESTIONS)
    whole = int(settings.questions_per_image)
    count = whole + int(rng.random() < settings.questions_per_image - whole)
    answer_rng = stream(settings.seed, job.index, ANSWERS)
    for k, question in enumerate(questions.sample_questions(rng, scene, count)):
        question_id = job.image_id * QUESTION_ID_STRIDE + k
        result.question_records.append(
            export_vqa.dump_record(export_vqa.question_record(job.image_id, question_id, question))
        )
        majority, raw_answers = None, ()
        if with_answers:
            answers = annotators.annotate(
                answer_rng, question.answer, question.template.answer_type, settings.annotator_accuracy
            )
            majority = annotators.majority_answer(answers, question.answer)
            record = export_vqa.annotation_record(job.image_id, question_id, question, answers, majority)
            result.annotation_records.append(export_vqa.dump_record(record))
            raw_answers = tuple(a.raw for a in answers)
        template = question.template
        result.qa.append(QaRecord(question.text, template.family, template.answer_type, majority, raw_answers))


def make_chunk(settings: Settings, jobs: list[ImageJob]) -> list[ImageResult]:
    """`make_image` over a chunk of jobs (the unit of work sent to a process)."""
    return [make_image(settings, job) for job in jobs]
