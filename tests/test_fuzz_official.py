"""Property-based corruption of reference checkpoints: always our CheckpointError, never a crash or a hang."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import OFFICIAL_FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ban
from ban.errors import CheckpointError

REFERENCE = torch.load(OFFICIAL_FIXTURES / "ban_vqa_g4_h32_c.pth", weights_only=True)
KEYS = sorted(REFERENCE["model_state"])

corruption = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(KEYS)),
    st.tuples(st.just("reshape"), st.sampled_from(KEYS), st.integers(1, 5)),
    st.tuples(st.just("nan"), st.sampled_from(KEYS)),
    st.tuples(st.just("integer"), st.sampled_from(KEYS)),
    st.tuples(st.just("rename"), st.sampled_from(KEYS), st.text("abcxyz._0123", min_size=1, max_size=12)),
    st.tuples(st.just("not-a-tensor"), st.sampled_from(KEYS), st.one_of(st.integers(), st.text(), st.none())),
)


def _apply(state: dict, change: tuple) -> dict:
    state = dict(state)
    kind, key = change[0], change[1]
    if kind == "drop":
        del state[key]
    elif kind == "reshape":
        state[key] = torch.zeros(state[key].numel() + change[2])
    elif kind == "nan":
        state[key] = state[key].float().reshape(-1).index_fill(0, torch.tensor([0]), float("nan")).reshape(
            state[key].shape)
    elif kind == "integer":
        state[key] = state[key].long()
    elif kind == "rename":
        state[key + change[2]] = state.pop(key)
    else:
        state[key] = change[2]
    return state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(corruption, min_size=1, max_size=3))
def test_corrupted_state_dicts_give_checkpoint_errors(changes):
    state = REFERENCE["model_state"]
    for change in changes:
        if not isinstance(state.get(change[1]), torch.Tensor):
            continue
        state = _apply(state, change)
    if state is REFERENCE["model_state"]:
        return
    try:
        model = ban.load_official_checkpoint({"epoch": 0, "model_state": state, "optimizer_state": {}})
    except CheckpointError as error:
        assert str(error)  # a message that names the problem
    else:  # the only corruptions that may load are those that leave a valid checkpoint (e.g. a no-op rename)
        assert set(state) == set(REFERENCE["model_state"])
        exported = ban.to_official_state_dict(model)  # what was loaded, in the reference's layout
        for key, value in state.items():
            assert value.is_floating_point() and bool(torch.isfinite(value).all()), key
            assert torch.equal(exported[key.removeprefix("module.")].reshape(-1), value.reshape(-1)), key


@settings(max_examples=40, deadline=None)
@given(garbage=st.binary(min_size=0, max_size=400), cut=st.integers(0, 2000))
def test_truncated_or_garbled_files_give_checkpoint_errors(garbage, cut, tmp_path_factory):
    buffer = io.BytesIO()
    torch.save(REFERENCE, buffer)
    data = buffer.getvalue()
    path = tmp_path_factory.mktemp("fuzz") / "checkpoint.pth"
    path.write_bytes(data[:cut] + garbage)
    try:
        ban.load_official_checkpoint(path)
    except CheckpointError as error:
        assert "checkpoint.pth" in str(error)


@pytest.mark.parametrize("key", ["module.q_prj.0.main.1.weight_v", "module.v_att.logits.h_mat_v",
                                 "module.counter.f.0.weight"])
def test_an_all_zero_weight_direction_is_refused_by_its_reference_name(key):
    state = dict(REFERENCE["model_state"])
    state[key] = torch.zeros_like(state[key])
    with pytest.raises(CheckpointError) as caught:
        ban.load_official_checkpoint({"epoch": 0, "model_state": state, "optimizer_state": {}})
    assert caught.value.field == key.removeprefix("module.") and caught.value.message.startswith("all zeros")
