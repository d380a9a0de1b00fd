"""Flickr30k Entities files: `Sentences/<id>.txt`, `Annotations/<id>.xml` and the split lists."""

from __future__ import annotations

from xml.sax.saxutils import escape

from ban.data.synthetic.captions import ImageCaptions, xml_objects


def sentences_text(captions: ImageCaptions) -> str:
    """The Sentences file: one caption a line."""
    return "".join(sentence + "\n" for sentence in captions.sentences)


def annotation_xml(image_id: int, width: int, height: int, captions: ImageCaptions) -> str:
    """The Annotations file (PASCAL-VOC style): per box its entity `<name>`s and `<bndbox>` (1-based pixel
    corners); per box-less entity `<scene>` and `<nobndbox>` flags."""
    lines = [
        "<annotation>",
        f"\t<filename>{image_id}.png</filename>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
    ]
    for ids, box, entity in xml_objects(captions):
        lines.append("\t<object>")
        lines += [f"\t\t<name>{escape(str(entity_id))}</name>" for entity_id in ids]
        if box is None:
            lines.append(f"\t\t<scene>{int(entity.scene)}</scene>")
            lines.append(f"\t\t<nobndbox>{int(entity.hidden)}</nobndbox>")
        else:
            lines.append("\t\t<bndbox>")
            lines += [
                f"\t\t\t<{tag}>{value}</{tag}>"
                for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
            ]
            lines.append("\t\t</bndbox>")
        lines.append("\t</object>")
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def split_list(image_ids: list[int]) -> str:
    """A split file (train.txt / val.txt / test.txt): one image id a line."""
    return "".join(f"{image_id}\n" for image_id in image_ids)
