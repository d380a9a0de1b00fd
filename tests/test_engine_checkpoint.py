"""Checkpoints: safetensors only, atomic, and a reloaded model + optimizer continue exactly."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
import torch

from ban.engine.checkpoint import Checkpoint, save_checkpoint
from ban.errors import CheckpointError
from ban.models import build_model, preset


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset("tiny", num_tokens=20, num_answers=7, feature_dim=16, hidden_dim=8))


def batch(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    features = torch.rand(3, 5, 16, generator=g)
    corners = torch.rand(3, 5, 2, generator=g) * 0.5
    boxes = torch.cat([corners, corners + 0.3, torch.full((3, 5, 2), 0.3)], dim=-1)
    questions = torch.randint(0, 21, (3, 14), generator=g)
    targets = torch.rand(3, 7, generator=g)
    return features, boxes, questions, targets


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    features, boxes, questions, targets = batch(seed)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(features, boxes, questions).logits, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_resumed_model_and_optimizer_continue_bit_for_bit(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-2)
    for seed in range(2):
        step(model, optimizer, seed)
    path = tmp_path / "checkpoint.safetensors"
    torch.manual_seed(5)
    rng = {"torch_cpu/0": torch.get_rng_state()}
    save_checkpoint(path, model, optimizer, {"epoch": 1, "history": [{"x": 1.5}]}, rng)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]  # no temp file left behind

    restored = build_model(model.config)
    restored_optimizer = torch.optim.Adamax(restored.parameters(), lr=1.0)
    checkpoint = Checkpoint(path)
    checkpoint.load_model(restored)
    checkpoint.load_optimizer(restored_optimizer)
    assert checkpoint.state == {"epoch": 1, "history": [{"x": 1.5}]}
    assert restored_optimizer.param_groups[0]["lr"] == 1e-2

    torch.manual_seed(5)
    expected_noise = torch.rand(4)
    torch.set_rng_state(checkpoint.rng["torch_cpu/0"])
    assert torch.equal(torch.rand(4), expected_noise)

    torch.manual_seed(11)  # same dropout noise for both
    step(model, optimizer, 7)
    torch.manual_seed(11)
    step(restored, restored_optimizer, 7)
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_file_is_plain_safetensors(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.Adamax(model.parameters())
    step(model, optimizer, 0)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, optimizer, {"epoch": 0})
    raw = path.read_bytes()
    (header_length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_length])
    assert header["__metadata__"]["format"] == "ban-checkpoint/1"
    names = set(header) - {"__metadata__"}
    assert {f"model/{k}" for k in model.state_dict()} <= names
    assert any(n.startswith("optimizer/") and n.endswith("/exp_inf") for n in names)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not private: shared like the run's files


def test_bad_files_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpoint(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="safetensors"):
        Checkpoint(broken)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, tiny_model(), None, {})
    other = build_model(preset("tiny", num_tokens=20, num_answers=9, feature_dim=16, hidden_dim=8))
    with pytest.raises(CheckpointError, match=r"'classifier.output.bias': shape \[7\], the model's is \[9\]"):
        Checkpoint(path).load_model(other)


def test_opening_reads_the_header_only_and_each_part_when_used(tmp_path, monkeypatch):
    # --resume looks at the training position before config.json is touched, then loads everything: a paper-size
    # checkpoint (about 1 GB) must not be read twice for that; the weights alone (load_run) need no optimizer state
    path = tmp_path / "c.safetensors"
    model = tiny_model()
    optimizer = torch.optim.Adamax(model.parameters())
    step(model, optimizer, 0)
    save_checkpoint(path, model, optimizer, {"epoch": 3})
    import ban.engine.checkpoint as module

    reads = []

    class CountingReads:
        def __init__(self, handle):
            self.handle = handle

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def get_tensor(self, key):
            reads.append(key)
            return self.handle.get_tensor(key)

    opened = module.safe_open

    @contextlib.contextmanager
    def counting_open(*args, **kwargs):
        with opened(*args, **kwargs) as handle:
            yield CountingReads(handle)

    monkeypatch.setattr(module, "safe_open", counting_open)
    checkpoint = Checkpoint(path)
    assert checkpoint.state == {"epoch": 3} and reads == []
    checkpoint.load_model(build_model(model.config))
    checkpoint.load_model(build_model(model.config))
    assert checkpoint.rng == {}
    assert sorted(reads) == sorted(f"model/{name}" for name in model.state_dict())
    checkpoint.load_optimizer(torch.optim.Adamax(build_model(model.config).parameters()))
    weights = [f"model/{name}" for name in model.state_dict()]
    state = [f"optimizer/{index}/{name}" for index, entry in optimizer.state_dict()["state"].items() for name in entry]
    assert sorted(reads) == sorted(weights + state)


def test_a_checkpoint_replaced_while_being_read_is_refused_not_mixed(tmp_path):
    # evaluating a run while it trains: a new best.safetensors may land between reading the header and the weights
    path = tmp_path / "best.safetensors"
    model = tiny_model()
    save_checkpoint(path, model, None, {"epoch": 1})
    checkpoint = Checkpoint(path)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    save_checkpoint(path, model, None, {"epoch": 2})
    with pytest.raises(CheckpointError, match="best.safetensors: replaced by another checkpoint while being read") \
            as refused:
        checkpoint.load_model(build_model(model.config))
    assert "not a readable" not in str(refused.value)
    assert Checkpoint(path).state == {"epoch": 2}
    checkpoint = Checkpoint(path)  # the same epoch saved again (a kill between best and last redoes the epoch)
    save_checkpoint(path, model, None, {"epoch": 2})
    with pytest.raises(CheckpointError, match="replaced by another checkpoint"):
        checkpoint.load_model(build_model(model.config))
