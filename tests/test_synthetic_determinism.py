"""Same seed → byte-identical output, whatever the number of processes; seeds and widths change what they should."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ban.data.synthetic import generate
from ban.errors import ConfigError


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make(root: Path, **kwargs: object) -> Path:
    options = {"seed": 5, "num_images": 24, "feature_dim": 16, "flickr_images": 10, "progress": False, "workers": 1}
    options.update(kwargs)
    generate(root, **options)  # type: ignore[arg-type]
    return root


def test_same_seed_is_byte_identical_across_worker_counts(tmp_path: Path) -> None:
    one = tree_digest(make(tmp_path / "a"))
    again = tree_digest(make(tmp_path / "b"))
    two_workers = tree_digest(make(tmp_path / "c", workers=2))
    assert one == again == two_workers
    assert not any(".tmp" in name for name in one), "temporary files left behind"
    assert "stats.json" in one and "flickr30k/features.tsv" in one


def test_other_seed_gives_other_data(tmp_path: Path) -> None:
    first = tree_digest(make(tmp_path / "a", write_images=False))
    second = tree_digest(make(tmp_path / "b", seed=6, write_images=False))
    assert first.keys() == second.keys()
    changed = [name for name in first if first[name] != second[name]]
    assert "vqa/v2_mscoco_train2014_annotations.json" in changed and "features/train2014.tsv" in changed


def test_feature_width_changes_only_the_features(tmp_path: Path) -> None:
    narrow = make(tmp_path / "a", write_images=False)
    wide = make(tmp_path / "b", feature_dim=40, write_images=False)
    a, b = tree_digest(narrow), tree_digest(wide)
    differing = sorted(name for name in a if a[name] != b[name])
    assert differing == [
        "features/test2015.tsv", "features/train2014.tsv", "features/val2014.tsv",
        "flickr30k/features.tsv", "stats.json",
    ]  # fmt: skip
    # Boxes are the same: only the features column differs.
    for line_a, line_b in zip(
        (narrow / "features/train2014.tsv").read_text().splitlines(),
        (wide / "features/train2014.tsv").read_text().splitlines(),
        strict=True,
    ):
        assert line_a.split("\t")[:5] == line_b.split("\t")[:5]
    stats_a = json.loads((narrow / "stats.json").read_text())
    stats_b = json.loads((wide / "stats.json").read_text())
    assert stats_a.pop("feature_dim") == 16 and stats_b.pop("feature_dim") == 40
    assert stats_a == stats_b


def test_rerun_into_the_same_directory_overwrites_cleanly(tmp_path: Path) -> None:
    make(tmp_path / "a", write_images=False)
    before = tree_digest(tmp_path / "a")
    make(tmp_path / "a", write_images=False)
    assert tree_digest(tmp_path / "a") == before


def test_a_rerun_with_other_settings_leaves_nothing_of_the_earlier_one(tmp_path: Path) -> None:
    """Seed 1 without Flickr images into seed 0's folder: exactly what seed 1 alone writes (it kept seed 0's
    PNGs and its whole flickr30k/ tree)."""
    make(tmp_path / "a", write_images=True)
    make(tmp_path / "a", write_images=True, seed=1, flickr_images=0)
    make(tmp_path / "b", write_images=True, seed=1, flickr_images=0)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")


def test_the_command_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys) -> None:
    from ban.cli import main

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    assert main(["synth", "--out", str(tmp_path / "mine"), "--images", "10", "--no-png", "--quiet"]) == 2
    assert "holds no complete `ban synth` output" in capsys.readouterr().err
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def synth_command(out: Path, *options: str) -> int:
    from ban.cli import main

    return main(["synth", "--out", str(out), "--images", "10", "--flickr-images", "10", "--feature-dim", "8",
                 "--no-png", "--quiet", "--workers", "1", *options])


def test_the_command_refuses_an_earlier_output_holding_other_files(tmp_path: Path, capsys) -> None:
    """A new run replaces the whole directory: a file the user put into an earlier output would be lost."""
    assert synth_command(tmp_path / "out") == 0
    (tmp_path / "out" / "notes.txt").write_text("kept")
    before = tree_digest(tmp_path / "out")
    assert synth_command(tmp_path / "out", "--seed", "1") == 2
    assert "notes.txt: is not a `ban synth` output" in capsys.readouterr().err
    assert tree_digest(tmp_path / "out") == before


def test_the_command_refuses_a_file_as_output_before_generating(tmp_path: Path, capsys) -> None:
    (tmp_path / "out").write_text("kept")
    assert synth_command(tmp_path / "out") == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "kept" and sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_the_working_directory_or_a_mount_point_is_refused_before_anything_is_written(tmp_path: Path, monkeypatch,
                                                                                      capsys) -> None:
    """The output is swapped in by renaming --out: `--out .` would leave the shell in a deleted directory."""
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "out")
    assert synth_command(Path(".")) == 2
    assert "is the working directory or holds it" in capsys.readouterr().err
    assert not any((tmp_path / "out").iterdir())
    assert synth_command(tmp_path / "earlier") == 0
    before = tree_digest(tmp_path / "earlier")
    monkeypatch.chdir(tmp_path / "earlier" / "vqa")  # inside an earlier output: a rerun would rename it away
    assert synth_command(tmp_path / "earlier", "--seed", "1") == 2
    assert "is the working directory or holds it" in capsys.readouterr().err
    assert tree_digest(tmp_path / "earlier") == before
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("os.path.ismount", lambda path: str(path) == str(tmp_path / "out"))
    assert synth_command(tmp_path / "out") == 2
    assert "is a mount point" in capsys.readouterr().err and not any((tmp_path / "out").iterdir())


def test_a_symlinked_output_keeps_its_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert synth_command(tmp_path / "link") == 0
    assert synth_command(tmp_path / "link", "--seed", "1") == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "stats.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link", "real"]


def test_an_interrupted_rerun_leaves_the_earlier_output_whole(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C while the new scenes are written: the earlier output stays as it was, nothing else is left."""
    from ban.data.synthetic import export_flickr

    assert synth_command(tmp_path / "out") == 0
    before = tree_digest(tmp_path / "out")

    def interrupted(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(export_flickr, "split_list", interrupted)  # after the VQA splits and Flickr features
    assert synth_command(tmp_path / "out", "--seed", "1") == 130
    assert tree_digest(tmp_path / "out") == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    monkeypatch.undo()
    assert synth_command(tmp_path / "out", "--seed", "1") == 0
    assert tree_digest(tmp_path / "out") != before
    assert tree_digest(tmp_path / "out") == tree_digest(make(tmp_path / "alone", seed=1, num_images=10,
                                                              flickr_images=10, feature_dim=8, write_images=False))


def test_bottom_up_box_counts_change_only_the_boxes(tmp_path: Path) -> None:
    """The same scenes, questions, answers and captions; more boxes (so other feature rows) and their statistics."""
    default = make(tmp_path / "a", write_images=False)
    bottom_up = make(tmp_path / "b", box_counts="bottom-up", write_images=False)
    a, b = tree_digest(default), tree_digest(bottom_up)
    assert a.keys() == b.keys()
    assert sorted(name for name in a if a[name] != b[name]) == [
        "features/test2015.tsv", "features/train2014.tsv", "features/val2014.tsv",
        "flickr30k/features.tsv", "stats.json",
    ]  # fmt: skip
    stats_a = json.loads((default / "stats.json").read_text())
    stats_b = json.loads((bottom_up / "stats.json").read_text())
    assert (stats_a["box_counts"], stats_b["box_counts"]) == ("10-36", "bottom-up")
    assert stats_a["vqa"]["train"]["questions"] == stats_b["vqa"]["train"]["questions"]
    assert stats_b["vqa"]["train"]["boxes_per_image"]["max"] > 36


@pytest.mark.parametrize("kwargs", [{"num_images": 5}, {"feature_dim": 0}, {"flickr_images": 4}, {"seed": -1},
                                    {"box_counts": "36"}])
def test_bad_settings_are_config_errors(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        make(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad" / "stats.json").exists()
