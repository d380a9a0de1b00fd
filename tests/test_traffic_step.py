"""benchmarks/traffic_step.py's counts, checked on operators whose traffic and FLOPs are known by hand."""

from __future__ import annotations

import pytest
import torch
from conftest import load_benchmark

traffic = load_benchmark("traffic_step")


def test_a_matrix_product_reads_its_operands_writes_its_result_and_counts_its_flops():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with traffic.TrafficRecorder() as recorder:
        (a @ b).t().unsqueeze(0).view(4, 8)  # views of the result are not kernels
    assert list(recorder.records) == [("forward", "mm")]
    record = recorder.records[("forward", "mm")]
    assert (record.kernels, record.read, record.written, record.flops) == (1, (8 * 16 + 16 * 4) * 4, 8 * 4 * 4,
                                                                           2 * 8 * 16 * 4)


def test_in_place_and_broadcast_operands_and_the_backward_phase():
    x = torch.randn(32, 10, requires_grad=True)
    bias = torch.randn(10)
    with traffic.TrafficRecorder() as recorder:
        y = x * 2
        y.add_(bias.expand(32, 10))  # in place: writes y; the stride-0 expansion reads the 10 values once
        y.sum().backward()
    assert recorder.records[("forward", "add_")].read == (32 * 10 + 10) * 4
    assert recorder.records[("forward", "add_")].written == 32 * 10 * 4
    backward = {name: record for (phase, name), record in recorder.records.items() if phase == "backward"}
    # d(sum)/dy is one value broadcast (stride 0: read once); times 2 it is x's gradient, written in full
    assert list(backward) == ["mul"]
    assert (backward["mul"].kernels, backward["mul"].read, backward["mul"].written) == (1, 4, 32 * 10 * 4)
    assert torch.equal(x.grad, torch.full((32, 10), 2.0))


def test_the_card_prices_an_operator_at_its_bound_plus_the_gap():
    card = traffic.Card(bandwidth=1e12, flop_rate=1e15, gap=1e-6)
    record = traffic.OpRecord(kernels=2, read=3 * 10**9, written=10**9, flops=10**12)
    assert card.seconds(record) == pytest.approx(4e-3 + 2e-6)  # memory-bound: 4 GB at 1 TB/s
    assert card.seconds(traffic.OpRecord(kernels=1, flops=5e15)) == pytest.approx(5 + 1e-6)  # compute-bound


def test_dropout_takes_the_fused_route_a_gpu_takes():
    x = torch.randn(64, 32)
    with traffic.TrafficRecorder() as recorder:
        traffic.gpu_like_dropout(x, 0.2, True)
    assert [name for _, name in recorder.records] == ["native_dropout"]


def test_compiled_kernels_are_counted_by_phase_and_by_the_line_of_ban_they_compute():
    """A weight-normalised layer of ban compiled and trained one step: its generated kernels come from nn/fc.py, in
    the forward and the backward graph, and none touches more bytes than Inductor charges it."""
    from ban.nn.fc import FCStack

    torch.manual_seed(0)
    layer = FCStack([24, 16], dropout=0.0)
    x = torch.randn(40, 24)
    torch._dynamo.reset()
    compiled = torch.compile(layer)
    found = traffic.record_compiled(lambda: compiled(x).sum().backward())
    fused = [kernel for kernel in found if kernel.kind == "fused"]
    assert {kernel.phase for kernel in fused} == {"forward", "backward"}
    assert any(kernel.source.startswith("nn/fc.py:") for kernel in fused)
    assert all(0 < kernel.touched <= kernel.bytes for kernel in fused)
    assert any(kernel.kind == "extern" for kernel in found)  # the matrix products: library calls
