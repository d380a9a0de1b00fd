"""benchmarks/authors_formulation.py computes what the authors' code computed, trains, and times a step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from conftest import load_benchmark

import ban
from ban.benchmark import BenchSettings, synthetic_batches
from ban.models import preset

TOLERANCE = 1e-5
FIXTURE = "ban_vqa_g4_h32_c"
authors = load_benchmark("authors_formulation")


def _fixture_io(fixtures: Path) -> dict[str, torch.Tensor]:
    data = np.load(fixtures / f"{FIXTURE}_io.npz")
    return {key: torch.from_numpy(data[key]) for key in data.files}


def _random_inputs(real_boxes: list[int], max_boxes: int, feature_dim: int, num_tokens: int,
                   question_lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v [B, N, Dv] and b [B, N, 6] with all-zero rows past each image's box count; q [B, 14] padded at the end."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(real_boxes)
    real = torch.arange(max_boxes)[None, :] < torch.tensor(real_boxes)[:, None]  # [B, N]
    features = torch.rand(batch, max_boxes, feature_dim, generator=generator) * real[..., None]
    corners = torch.rand(batch, max_boxes, 2, 2, generator=generator)
    top_left, bottom_right = corners.min(2).values, corners.max(2).values
    boxes = torch.cat([top_left, bottom_right, bottom_right - top_left], -1) * real[..., None]
    questions = torch.randint(0, num_tokens, (batch, 14), generator=generator)
    padded = torch.arange(14)[None, :] >= torch.tensor(question_lengths)[:, None]
    return features, boxes, questions.masked_fill(padded, num_tokens)


def test_official_checkpoint_reproduces_the_reference_outputs(official_fixtures):
    model = authors.load_official(official_fixtures / f"{FIXTURE}.pth").eval()  # load_state_dict(strict=True)
    io = _fixture_io(official_fixtures)
    with torch.no_grad():
        logits, attention = model(io["v"], io["b"], io["q"])
    assert logits.shape == io["logits"].shape and attention.shape == io["attention"].shape
    assert (logits - io["logits"]).abs().max() <= TOLERANCE
    assert (attention - io["attention"]).abs().max() <= TOLERANCE


def test_ban_export_loads_in_the_reference_scripts_way(official_fixtures, tmp_path):
    """The reference's test.py wraps its model in nn.DataParallel, then loads ``model_state`` strictly."""
    ban.save_official_checkpoint(ban.load_official_checkpoint(official_fixtures / f"{FIXTURE}.pth"),
                                 tmp_path / "exported.pth", epoch=12)
    checkpoint = torch.load(tmp_path / "exported.pth", weights_only=True)
    assert set(checkpoint) == {"epoch", "model_state"} and checkpoint["epoch"] == 12
    reference = authors.load_official(official_fixtures / f"{FIXTURE}.pth")
    wrapped = torch.nn.DataParallel(authors.AuthorsBanVQA(
        num_tokens=reference.w_emb.emb.weight.shape[0] - 1, num_answers=reference.classifier.main[3].bias.shape[0],
        feature_dim=reference.v_att.logits.v_net.main[1].weight_v.shape[1],
        hidden_dim=reference.v_att.logits.q_net.main[1].weight_v.shape[0] // 3, glimpses=4))
    wrapped.load_state_dict(checkpoint.get("model_state", checkpoint))  # strict, as the reference's test.py does
    io = _fixture_io(official_fixtures)
    with torch.no_grad():
        logits, _ = wrapped.eval()(io["v"], io["b"], io["q"])
    assert (logits - io["logits"]).abs().max() <= TOLERANCE


def test_agrees_with_ban_on_fresh_inputs_with_padded_boxes(official_fixtures):
    path = official_fixtures / f"{FIXTURE}.pth"
    reference, ours = authors.load_official(path).eval(), ban.load_official_checkpoint(path).eval()
    # image 2 has fewer real boxes than the counter keeps (10), image 4 only one
    v, b, q = _random_inputs([12, 12, 5, 9, 1], max_boxes=12, feature_dim=24, num_tokens=40,
                             question_lengths=[14, 6, 3, 11, 9], seed=7)
    with torch.no_grad():
        logits, attention = reference(v, b, q)
        out = ours(v, b, q)
    assert torch.isfinite(logits).all()
    assert (logits - out.logits).abs().max() <= TOLERANCE
    assert (attention - out.attention).abs().max() <= TOLERANCE
    assert (attention[2, :, 5:] == 0).all() and (attention[4, :, 1:] == 0).all()


def test_training_step_updates_the_parameters():
    torch.manual_seed(0)
    config = preset("paper-best", num_tokens=20, num_answers=10, feature_dim=16, hidden_dim=8, num_glimpses=2)
    model = authors.AuthorsBanVQA.from_config(config).train()
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    batch = synthetic_batches(BenchSettings(batch_size=3, boxes="12"), config, torch.device("cpu"), count=1)[0]
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    loss = authors.training_step(model, optimizer, batch, "fp32")
    assert torch.isfinite(loss)
    for name in ("w_emb.emb_.weight", "q_emb.rnn.weight_ih_l0", "v_att.logits.h_mat_v", "v_att.logits.h_mat_g",
                 "b_net.1.v_net.main.1.weight_v", "q_prj.1.main.1.bias", "c_prj.0.main.0.weight_g",
                 "classifier.main.3.weight_v", "counter.f.0.weight"):
        assert not torch.equal(before[name], model.get_parameter(name)), name
    assert all(value.grad is None for value in model.parameters())  # zero_grad ran


def test_cli_writes_a_timing(tmp_path):
    out = tmp_path / "authors.json"
    authors.main(["--hidden-dim", "32", "--glimpses", "2", "--feature-dim", "64", "--num-tokens", "20",
                  "--num-answers", "10", "--batch-size", "2", "--boxes", "12", "--steps", "1", "--warmup", "0",
                  "--precision", "fp32", "bf16", "--threads", str(torch.get_num_threads()), "--json", str(out)])
    report = json.loads(out.read_text())
    assert [r["precision"] for r in report["results"]] == ["fp32", "bf16"]
    assert all(r["ms_per_step_median"] > 0 and r["questions_per_s"] > 0 for r in report["results"])
    assert report["keep_freed_memory"] is False and "torch" in report["machine"]

