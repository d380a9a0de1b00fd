"""The CUDA-graph step's parts that a CPU can check: host-made packing rows, the capture-safe layers, the absence of
host reads of device data, the optimizer's pre-created state, and the static step against the ordinary one.
(The capture itself needs a GPU: benchmarks/device_check.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ban.benchmark import BenchSettings, synthetic_batches
from ban.engine.graphs import (
    compiled_forward,
    forward_logits,
    graphed_inference,
    graphed_training,
    initialise_optimizer,
    packed_rows,
    pad_boxes,
    static_batch,
    training_step,
)
from ban.engine.loss import vqa_loss
from ban.engine.optim import AdamaxUpdate, adamax, gradient_norm
from ban.models import build_model, preset
from ban.nn import capture
from ban.nn.bilinear import box_mask_from_features

CPU = torch.device("cpu")


def small_config(**overrides):
    settings = dict(hidden_dim=16, num_glimpses=2, two_word_tables=True, use_counting=True, feature_dim=24,
                    word_dim=8, num_tokens=40, num_answers=12, dropout=0.2, attention_dropout=0.5,
                    classifier_dropout=0.5)
    return preset("tiny", **{**settings, **overrides})


def batch_of(config, batch_size=6, boxes="adaptive", seed=0):
    settings = BenchSettings(batch_size=batch_size, boxes=boxes, question_length=5, seed=seed)
    batch = synthetic_batches(settings, config, CPU, count=1)[0]
    batch.pop("real_boxes")
    return batch


def test_packed_rows_lists_the_real_boxes_then_padded_slots_up_to_the_quantum():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert packed_rows(mask, quantum=4).tolist() == [0, 1, 3, 2]
    assert packed_rows(mask, quantum=2).tolist() == [0, 1, 3, 2]
    assert packed_rows(mask, quantum=5).tolist() == [0, 1, 3, 2, 4]
    assert packed_rows(mask, quantum=10).tolist() == [0, 1, 2, 3, 4, 5]  # 10 rows would reach B·N = 6: every row
    assert packed_rows(torch.zeros(2, 3, dtype=torch.bool), quantum=2).tolist() == [0, 1]


def test_pad_boxes_rounds_the_box_slots_up_with_padded_boxes():
    config = small_config()
    batch = batch_of(config, boxes="13")
    padded = pad_boxes(batch, quantum=4)
    assert padded["features"].shape[1] == padded["boxes"].shape[1] == 16
    assert torch.equal(padded["features"][:, :13], batch["features"])
    assert not box_mask_from_features(padded["features"])[:, 13:].any()
    assert padded["questions"] is batch["questions"]
    with_mask = pad_boxes({**batch, "box_mask": torch.ones(6, 13, dtype=torch.bool)}, quantum=4)
    assert with_mask["box_mask"].shape == (6, 16) and with_mask["box_mask"][:, :13].all()
    assert not with_mask["box_mask"][:, 13:].any()
    rows = static_batch({**batch, "box_mask": torch.ones(6, 13, dtype=torch.bool)}, row_quantum=4)["rows"]
    assert rows.tolist() == [i * 16 + j for i in range(6) for j in range(13)] + [13, 14]  # 78 real → 80 rows


def test_capture_safe_embedding_equals_nn_embedding_with_its_padding_row():
    torch.manual_seed(0)
    table = torch.nn.Embedding(7, 3, padding_idx=6)
    tokens = torch.tensor([[0, 2, 2, 6], [5, 6, 0, 0]])
    upstream = torch.randn(2, 4, 3)
    expected = table(tokens)
    (expected * upstream).sum().backward()
    expected_grad, table.weight.grad = table.weight.grad.clone(), None
    got = capture.embedding(tokens, table.weight, 6)
    (got * upstream).sum().backward()
    assert torch.equal(got, expected)
    torch.testing.assert_close(table.weight.grad, expected_grad, rtol=0, atol=1e-6)
    assert not table.weight.grad[6].any()


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("quantum", [7, 64, 100_000])
def test_host_made_rows_give_the_same_logits_and_gradients(quantum):
    config = small_config(dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0)
    torch.manual_seed(0)
    model = build_model(config)
    batch = batch_of(config, batch_size=5)
    rows = packed_rows(box_mask_from_features(batch["features"]), quantum)
    results = []
    for real_rows in (None, rows):
        out = model(batch["features"], batch["boxes"], batch["questions"], real_rows=real_rows)
        vqa_loss(out.logits, batch["targets"], 5).backward()
        results.append((out.logits.detach(), gradients(model)))
        model.zero_grad(set_to_none=True)
    (logits, grads), (static_logits, static_grads) = results
    torch.testing.assert_close(static_logits, logits, rtol=1e-6, atol=1e-6)
    assert grads.keys() == static_grads.keys()
    for name in grads:
        torch.testing.assert_close(static_grads[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)


class HostReads(TorchDispatchMode):
    """Records the operators that read device data on the host (or that do on a GPU: embedding's dense backward
    sorts and counts ids there)."""

    FORBIDDEN = {"nonzero", "_local_scalar_dense", "is_nonzero", "masked_select", "_unique2", "unique_dim",
                 "unique_consecutive", "embedding_dense_backward", "equal", "allclose"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        boolean_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in (args[1] or []) if index
            is not None)
        if name in self.FORBIDDEN or boolean_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def forward_backward_clip(model, inputs):
    """What the graph captures before the optimizer's step (Adamax's capturable step cannot run on a CPU)."""
    out = model(inputs["features"], inputs["boxes"], inputs["questions"], real_rows=inputs.get("rows"))
    vqa_loss(out.logits, inputs["targets"], inputs["targets"].shape[0]).backward()
    norm = gradient_norm(model.parameters())
    torch.nn.utils.clip_grads_with_norm_(model.parameters(), 0.25, norm)


def test_the_capture_safe_step_reads_nothing_on_the_host_and_the_ordinary_one_does():
    config = small_config()
    torch.manual_seed(0)
    model = build_model(config)
    batch = batch_of(config)
    with HostReads() as ordinary:
        forward_backward_clip(model, batch)
    assert {"nonzero", "embedding_dense_backward"} <= set(ordinary.seen)  # the check can fail
    trained = gradients(model).keys()
    model.zero_grad(set_to_none=True)
    inputs = static_batch(batch, row_quantum=64)  # the loader's work, on the host
    with capture.capture_safe(), HostReads() as safe:
        forward_backward_clip(model, inputs)
    assert safe.seen == []
    assert gradients(model).keys() == trained


def test_initialise_optimizer_creates_fresh_adamax_state_without_moving_a_parameter():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    twin = copy.deepcopy(model)
    optimizer, reference = adamax(model.parameters(), CPU, lr=0.1), adamax(twin.parameters(), CPU, lr=0.1)
    initialise_optimizer(optimizer)
    assert torch.equal(model.weight, twin.weight) and all(p.grad is None for p in model.parameters())
    assert all(optimizer.state[p] for p in model.parameters())
    for step in range(3):
        for net, opt in ((model, optimizer), (twin, reference)):
            F.mse_loss(net(torch.ones(2, 4) * step), torch.zeros(2, 3)).backward()
            opt.step()
            opt.zero_grad()
    assert torch.equal(model.weight, twin.weight) and torch.equal(model.bias, twin.bias)
    kept = {name: value.clone() for name, value in optimizer.state[model.weight].items()}
    initialise_optimizer(optimizer)  # existing state is left alone
    assert all(torch.equal(optimizer.state[model.weight][name], value) for name, value in kept.items())


def test_initialise_optimizer_refuses_other_optimizers():
    with pytest.raises(TypeError, match="Adamax"):
        initialise_optimizer(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))


def test_graphs_of_a_model_off_the_gpu_are_refused_with_the_reason():
    """On the CPU the capturable optimizer used to stop at its first step with torch's bare AssertionError."""
    model = build_model(small_config())
    with pytest.raises(ValueError, match="graphed training replays CUDA graphs: the model must be on a GPU, not on"):
        graphed_training(model, torch.optim.Adamax(model.parameters(), capturable=True), "fp32")
    with pytest.raises(ValueError, match="graphed inference replays CUDA graphs"):
        graphed_inference(model, "fp32")


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_static_capture_safe_step_trains_like_the_ordinary_step(compiled):
    """What the graphed step captures, run eagerly: static inputs, capture-safe layers, and with ``compiled`` the
    compiled forward pass and the compiled clipping + Adamax (compiled for the trained parameters first)."""
    config = small_config(dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0)
    torch.manual_seed(0)
    model = build_model(config)
    twin = copy.deepcopy(model)
    batches = [batch_of(config, seed=seed) for seed in range(3)]
    optimizer, reference = adamax(model.parameters(), CPU, lr=1e-3), adamax(twin.parameters(), CPU, lr=1e-3)
    initialise_optimizer(optimizer)
    forward = update = None
    if compiled:
        forward, update = compiled_forward(model), AdamaxUpdate(optimizer, 0.25)
        forward_backward_clip(model, batches[0])  # which parameters receive gradients, as the graphs' warm-up
        update.warm_up([p for p in model.parameters() if p.grad is not None])
        model.zero_grad(set_to_none=True)
    for batch in batches:
        with capture.capture_safe():
            loss, norm = training_step(model, optimizer, static_batch(batch, row_quantum=16), "fp32",
                                       forward=forward, update=update)
        expected_loss, expected_norm = training_step(twin, reference, batch, "fp32")
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
        torch.testing.assert_close(norm, expected_norm, rtol=1e-5, atol=0)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_the_compiled_forward_is_one_graph_with_the_eager_function_and_gradients():
    """torch.compile(fullgraph=True) raises at any graph break; two row counts share one compilation."""
    config = small_config(dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0)
    torch.manual_seed(0)
    model = build_model(config)
    forward = compiled_forward(model)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(cache_size_limit=1, fail_on_recompile_limit_hit=True):
        for quantum in (16, 100):  # 144 and 200 packed rows
            inputs = static_batch(batch_of(config), row_quantum=quantum)
            with capture.capture_safe():
                expected = forward_logits(model, inputs)
            vqa_loss(expected, inputs["targets"], 6).backward()
            expected_grads = gradients(model)
            model.zero_grad(set_to_none=True)
            logits = forward(inputs)
            vqa_loss(logits, inputs["targets"], 6).backward()
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
            for name, grad in gradients(model).items():
                torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
            model.zero_grad(set_to_none=True)


def test_the_compiled_forward_draws_fresh_dropout_masks_inside_its_graph():
    """With every box real (fixed counts: nothing to pack), and dropout on."""
    config = small_config()
    torch.manual_seed(0)
    model = build_model(config)
    forward = compiled_forward(model)
    inputs = static_batch(batch_of(config, boxes="12"), row_quantum=16)
    assert torch.equal(inputs["rows"], torch.arange(6 * 12))
    with pytest.raises(ValueError, match="host-made rows"):
        forward({key: value for key, value in inputs.items() if key != "rows"})
    torch._dynamo.reset()
    first, second = forward(inputs), forward(inputs)
    model.eval()
    with capture.capture_safe():
        plain = forward_logits(model, inputs)
    assert torch.isfinite(first).all() and not torch.equal(first, second)
    assert not torch.allclose(first, plain) and not torch.allclose(second, plain)
