"""The layers against PAPER.md §1 computed naively (explicit sums in float64)."""

from __future__ import annotations

import itertools

import pytest
import torch

from ban.nn import (
    BilinearAttentionMap,
    BilinearAttentionPooling,
    Classifier,
    CountingModule,
    FCStack,
    LowRankBilinearPooling,
    PiecewiseLinear,
    WeightNormLinear,
    box_mask_from_features,
)
from ban.nn.dropout import draw_seed, keep_threshold, seeded_mask


@pytest.fixture(autouse=True)
def _no_grad_and_seeded():
    torch.manual_seed(0)
    with torch.no_grad():
        yield


def _relu(x):
    return max(x, 0.0)


def _linear(layer: WeightNormLinear, x):
    """Naive W x + b with W = g V / ||V||_F, in Python floats."""
    v = layer.weight_v.double()
    norm = sum(float(e) ** 2 for e in v.flatten()) ** 0.5
    g = float(layer.weight_g)
    return [
        sum(g * float(v[o, i]) / norm * float(x[i]) for i in range(v.shape[1])) + float(layer.bias[o])
        for o in range(v.shape[0])
    ]


def test_bilinear_attention_map_equals_naive_sums():
    B, N, L, Dv, Dq, H, G = 2, 4, 3, 5, 6, 2, 3
    layer = BilinearAttentionMap(Dv, Dq, H, G, rank_factor=3).double().eval()
    v, q = torch.randn(B, N, Dv, dtype=torch.float64), torch.randn(B, L, Dq, dtype=torch.float64)
    v[1, 3] = 0  # a padded box
    mask = v.abs().sum(-1) != 0
    attention, logits = layer(v, q, mask)

    p_v = layer.glimpse_weight_v.double()
    p_norm = sum(float(e) ** 2 for e in p_v.flatten()) ** 0.5
    p = [[float(layer.glimpse_weight_g) * float(p_v[g, k]) / p_norm for k in range(3 * H)] for g in range(G)]
    for b in range(B):
        u = [[_relu(x) for x in _linear(layer.v_proj.layers[0], v[b, i])] for i in range(N)]
        w = [[_relu(x) for x in _linear(layer.q_proj.layers[0], q[b, j])] for j in range(L)]
        for g in range(G):
            naive = {}
            for i, j in itertools.product(range(N), range(L)):
                if not mask[b, i]:
                    continue
                naive[i, j] = sum(p[g][k] * u[i][k] * w[j][k] for k in range(3 * H)) + float(layer.glimpse_bias[g])
                assert abs(naive[i, j] - float(logits[b, g, i, j])) < 1e-10
            total = torch.tensor(list(naive.values()), dtype=torch.float64).exp().sum()
            for i, j in itertools.product(range(N), range(L)):
                expected = float(torch.tensor(naive[i, j], dtype=torch.float64).exp() / total) if mask[b, i] else 0.0
                assert abs(expected - float(attention[b, g, i, j])) < 1e-10


def test_bilinear_attention_pooling_equals_naive_sums():
    B, N, L, Dv, Dq, H = 2, 4, 3, 5, 6, 3
    layer = BilinearAttentionPooling(Dv, Dq, H).double().eval()
    v, q = torch.randn(B, N, Dv, dtype=torch.float64), torch.randn(B, L, Dq, dtype=torch.float64)
    attention = torch.softmax(torch.randn(B, N * L, dtype=torch.float64), -1).reshape(B, N, L)
    joint = layer(v, q, attention)
    for b in range(B):
        u = [[_relu(x) for x in _linear(layer.v_proj.layers[0], v[b, i])] for i in range(N)]
        w = [[_relu(x) for x in _linear(layer.q_proj.layers[0], q[b, j])] for j in range(L)]
        for k in range(H):
            naive = sum(float(attention[b, i, j]) * u[i][k] * w[j][k] for i in range(N) for j in range(L))
            assert abs(naive - float(joint[b, k])) < 1e-10


def _naive_attention_logits(layer: BilinearAttentionMap, v, q, mask, v_keep=None):
    """logits[b][g][(i, j)] = Σ_k p[g,k] · u[i,k] · w[j,k] + bias[g] over the real boxes i, with u = σ(Uᵀv_i)
    times ``v_keep[b][i][k]`` (dropout's kept-and-scaled factor, 1 when None)."""
    G, K = layer.glimpse_weight_v.shape
    p_v = layer.glimpse_weight_v.double()
    p_norm = sum(float(e) ** 2 for e in p_v.flatten()) ** 0.5
    p = [[float(layer.glimpse_weight_g) * float(p_v[g, k]) / p_norm for k in range(K)] for g in range(G)]
    out = []
    for b in range(v.shape[0]):
        u = [[_relu(x) for x in _linear(layer.v_proj.layers[0], v[b, i])] for i in range(v.shape[1])]
        if v_keep is not None:
            u = [[u[i][k] * v_keep[b][i][k] for k in range(K)] for i in range(v.shape[1])]
        w = [[_relu(x) for x in _linear(layer.q_proj.layers[0], q[b, j])] for j in range(q.shape[1])]
        out.append([{(i, j): sum(p[g][k] * u[i][k] * w[j][k] for k in range(K)) + float(layer.glimpse_bias[g])
                     for i, j in itertools.product(range(v.shape[1]), range(q.shape[1])) if mask[b, i]}
                    for g in range(G)])
    return out


def test_attention_dropout_drops_the_projected_boxes_in_training_only():
    """Dropout p on σ(Uᵀv) in train mode: logits = the naive sums with u[i,k] · mask[i,k] / (1 − p), the mask
    drawn (seeded_mask of the seed the global generator gives) over the real boxes' rows in order; the same seed
    gives the same logits, eval mode (and p = 0) none of it."""
    B, N, L, Dv, Dq, H, G = 2, 3, 2, 5, 6, 2, 2
    layer = BilinearAttentionMap(Dv, Dq, H, G, rank_factor=3, dropout=0.0, attention_dropout=0.5).double()
    K = 3 * H
    v, q = torch.randn(B, N, Dv, dtype=torch.float64), torch.randn(B, L, Dq, dtype=torch.float64)
    v[1, 2] = 0  # a padded box: no mask row is drawn for it
    mask = v.abs().sum(-1) != 0
    layer.train()
    torch.manual_seed(7)
    trained = layer.logits(v, q, mask)
    torch.manual_seed(7)
    assert torch.equal(layer.logits(v, q, mask), trained)
    torch.manual_seed(7)
    drawn = seeded_mask((int(mask.sum()), K), draw_seed(), keep_threshold(0.5))  # [R, K], the real rows in order
    assert 0 < int(drawn.sum()) < drawn.numel()
    real = [(b, i) for b in range(B) for i in range(N) if mask[b, i]]
    keep = [[[0.0] * K for _ in range(N)] for _ in range(B)]
    for row, (b, i) in enumerate(real):
        keep[b][i] = [2.0 * float(drawn[row, k]) for k in range(K)]  # kept elements scaled by 1 / (1 − 0.5)
    naive = _naive_attention_logits(layer, v, q, mask, keep)
    for b, g in itertools.product(range(B), range(G)):
        for (i, j), value in naive[b][g].items():
            assert abs(value - float(trained[b, g, i, j])) < 1e-10
    assert bool(trained[1, :, 2].isneginf().all())

    evaluated = layer.eval().logits(v, q, mask)
    assert not torch.allclose(trained, evaluated)
    plain = _naive_attention_logits(layer, v, q, mask)
    for b, g in itertools.product(range(B), range(G)):
        for (i, j), value in plain[b][g].items():
            assert abs(value - float(evaluated[b, g, i, j])) < 1e-10
    layer.attention_dropout.p = 0.0
    assert torch.equal(layer.train().logits(v, q, mask), evaluated)


def test_low_rank_bilinear_pooling_equals_the_naive_product_with_broadcasting():
    """f = W_P (σ(W_U x) ∘ σ(W_V y)) + b, every W weight-normalised; x [2, 1, 5] and y [1, 3, 4] → [2, 3, 3]."""
    layer = LowRankBilinearPooling(5, 4, 6, 3).double().eval()
    x, y = torch.randn(2, 1, 5, dtype=torch.float64), torch.randn(1, 3, 4, dtype=torch.float64)
    out = layer(x, y)
    assert out.shape == (2, 3, 3)
    for a, c in itertools.product(range(2), range(3)):
        u = [_relu(e) for e in _linear(layer.x_proj.layers[0], x[a, 0])]
        w = [_relu(e) for e in _linear(layer.y_proj.layers[0], y[0, c])]
        naive = _linear(layer.pool, [ui * wi for ui, wi in zip(u, w, strict=True)])
        for o in range(3):
            assert abs(naive[o] - float(out[a, c, o])) < 1e-10


def test_a_box_is_padding_only_when_every_feature_is_zero():
    """A real box whose signed features sum to zero ([1, −1]) is real; only an all-zero row is padding."""
    features = torch.tensor([[[1.0, -1.0], [0.0, 0.0], [-0.5, 0.0]], [[0.0, 0.0], [2.0, -2.0], [0.0, 3.0]]])
    assert box_mask_from_features(features).tolist() == [[True, False, True], [False, True, True]]
    layer = BilinearAttentionMap(2, 3, 2, 1).eval()  # the default box mask of the attention map is this one
    logits = layer.logits(features, torch.randn(2, 4, 3))
    assert logits[:, 0, :, 0].isfinite().tolist() == [[True, False, True], [False, True, True]]


def _lookup_piecewise(weight, x):
    """The reference's formulation: cumulative sums looked up at ⌊n·x⌋ plus the fraction of the next slope."""
    n = weight.numel() - 1
    w = weight.abs() / weight.abs().sum()
    csum = torch.cumsum(w, 0)
    y = n * x
    index = y.long()
    frac = y - index
    return csum[index.clamp(max=n)] + frac * w[(index + 1).clamp(max=n)]


def test_piecewise_linear_equals_lookup_formulation():
    layer = PiecewiseLinear(16).double()
    with torch.no_grad():
        layer.weight.copy_(torch.rand(17, dtype=torch.float64) * 2 - 0.5)
        layer.weight[0] = 0
    x = torch.cat([torch.rand(500, dtype=torch.float64), torch.linspace(0, 1, 17, dtype=torch.float64)])
    assert torch.allclose(layer(x), _lookup_piecewise(layer.weight.detach(), x), atol=1e-12)
    assert float(layer(torch.tensor([1.0], dtype=torch.float64))) == 1.0


def test_piecewise_linear_has_the_lookup_formulations_gradients_on_the_knots_too():
    """Autograd through the reference's look-up: on a knot n·x = m only the slope of the segment starting there
    (at x = 1, the last one); between knots the slope of the segment. Every knot, the ends and random points."""
    layer = PiecewiseLinear(16).double()
    with torch.no_grad():
        layer.weight.copy_(torch.rand(17, dtype=torch.float64) + 0.2)
        layer.weight[0] = 0
    x = torch.cat([torch.linspace(0, 1, 17, dtype=torch.float64), torch.rand(50, dtype=torch.float64)])
    grad_out = torch.rand_like(x)
    reference_weight = layer.weight.detach().clone().requires_grad_()
    reference_x, ours_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.enable_grad():  # this file's tests run under no_grad
        torch.autograd.backward(_lookup_piecewise(reference_weight, reference_x), grad_out)
        torch.autograd.backward(layer(ours_x), grad_out)
    assert torch.allclose(ours_x.grad, reference_x.grad, rtol=1e-12, atol=1e-12)
    assert torch.allclose(layer.weight.grad, reference_weight.grad, rtol=1e-12, atol=1e-12)


def _naive_count(module: CountingModule, boxes, scores):
    """The counting module of Zhang et al. written loop by loop from PAPER.md §2 (one sample)."""
    f = [lambda x, fn=fn: float(_lookup_piecewise(fn.weight.detach(), torch.tensor(x, dtype=torch.float64)))
         for fn in module.functions]
    n = module.num_objects
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:n]
    a = [float(torch.sigmoid(scores[i])) for i in order]
    bx = [[float(c) for c in boxes[i]] for i in order]

    def iou(p, r):
        iw = max(0.0, min(p[2], r[2]) - max(p[0], r[0]))
        ih = max(0.0, min(p[3], r[3]) - max(p[1], r[1]))
        inter = iw * ih
        area = lambda z: max(0.0, z[2] - z[0]) * max(0.0, z[3] - z[1])  # noqa: E731
        return inter / (area(p) + area(r) - inter + 1e-12)

    R = [[a[i] * a[j] for j in range(n)] for i in range(n)]
    D = [[1 - iou(bx[i], bx[j]) for j in range(n)] for i in range(n)]
    S = [[f[0](R[i][j]) * f[1](D[i][j]) for j in range(n)] for i in range(n)]
    E = [[f[3](R[i][j]) * f[4](D[i][j]) for j in range(n)] for i in range(n)]
    sim = [[1.0] * n for _ in range(n)]
    for i, j in itertools.product(range(n), range(n)):
        for k in range(n):
            sim[i][j] *= f[2](1 - abs(E[k][i] - E[k][j]))
        sim[i][j] *= f[2](1 - abs(a[i] - a[j]))
    row = [sum(sim[i]) for i in range(n)]
    total = sum(S[i][j] / (row[i] * row[j]) for i in range(n) for j in range(n))
    total += sum(f[0](a[i] * a[i]) / row[i] for i in range(n))
    c = min(max((total + 1e-20) ** 0.5, 0.0), n)
    one_hot = [0.0] * (n + 1)
    low = int(c)
    one_hot[low] += 1 - (c - low)
    one_hot[min(low + 1, n)] += c - low
    att_conf = sum(abs(f[5](x) - 0.5) for x in a) / n
    dist_conf = sum(abs(f[6](D[i][j]) - 0.5) for i in range(n) for j in range(n)) / n**2
    return [x * f[7](att_conf + dist_conf) for x in one_hot]


def test_counting_module_equals_naive_loops():
    module = CountingModule(num_objects=10).double()
    with torch.no_grad():
        for fn in module.functions:
            fn.weight.copy_(torch.rand(17, dtype=torch.float64) + 0.1)
            fn.weight[0] = 0
    B, N = 3, 14
    corners = torch.rand(B, N, 2, 2, dtype=torch.float64)
    boxes = torch.cat([corners.min(2).values, corners.max(2).values], -1)
    boxes[:, 5] = boxes[:, 4] + 0.01  # a near-duplicate, the case dedup exists for
    scores = torch.randn(B, N, dtype=torch.float64) * 2
    scores[2, 11:] = float("-inf")  # padded boxes
    out = module(boxes, scores)
    for b in range(B):
        expected = _naive_count(module, boxes[b], scores[b])
        assert torch.allclose(out[b], torch.tensor(expected, dtype=torch.float64), atol=1e-9), b


def test_counting_module_counts_distinct_objects():
    """With ideal (identity) functions, k well-separated boxes with score +∞ count as k."""
    module = CountingModule(num_objects=10).double()
    boxes = torch.zeros(1, 12, 4, dtype=torch.float64)
    for i in range(3):
        boxes[0, i] = torch.tensor([0.3 * i, 0.0, 0.3 * i + 0.2, 0.2])
    scores = torch.full((1, 12), -50.0, dtype=torch.float64)
    scores[0, :3] = 50.0
    out = module(boxes, scores)
    assert int(out.argmax()) == 3


def test_a_stack_with_dropout_equals_dropout_then_the_weight_normalised_map():
    """FCStack folds dropout's 1/(1−p) into the layer's scalar; the result is dropout(x) Wᵀ + b, the same masks."""
    stack = FCStack([40, 24, 8], "relu", dropout=0.3).train()
    x = torch.randn(6, 40, dtype=torch.float64)
    stack.double()
    torch.manual_seed(11)
    out = stack(x)
    torch.manual_seed(11)
    expected = x
    for layer in stack.layers:
        expected = torch.relu(stack.dropout(expected) @ layer.weight.T + layer.bias)
    assert torch.allclose(out, expected, atol=1e-12)


def test_the_classifier_drops_its_hidden_units_in_training_only():
    """Classifier: WN-Linear → ReLU → dropout p → WN-Linear (PAPER.md §1): in train mode the output layer sees
    the hidden units through the dropout mask the seed draws; in eval mode the naive two-layer map exactly."""
    classifier = Classifier(6, 8, 4, dropout=0.5).double().train()
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.manual_seed(3)
    trained = classifier(x)
    torch.manual_seed(3)
    hidden = torch.relu(x @ classifier.hidden.weight.T + classifier.hidden.bias)
    dropped = classifier.dropout(hidden)
    assert bool(((hidden != 0) & (dropped == 0)).any()) and bool((dropped != 0).any())  # some dropped, some kept
    assert torch.allclose(trained, dropped @ classifier.output.weight.T + classifier.output.bias, atol=1e-12)
    evaluated = classifier.eval()(x)
    for b in range(x.shape[0]):
        naive = _linear(classifier.output, [_relu(h) for h in _linear(classifier.hidden, x[b])])
        assert max(abs(n - float(e)) for n, e in zip(naive, evaluated[b], strict=True)) < 1e-10
    assert not torch.allclose(trained, evaluated)


def test_weight_norm_gains_start_at_the_norm_of_their_direction():
    """As the reference's ``weight_norm(dim=None)`` initialises them: g = ‖V‖, so the first weights are V itself
    (for the linear layers and the attention map's glimpse vectors p)."""
    layer = WeightNormLinear(7, 5)
    assert torch.allclose(layer.weight_g, layer.weight_v.norm()) and torch.allclose(layer.weight, layer.weight_v)
    attention = BilinearAttentionMap(6, 5, 4, num_glimpses=3)
    assert torch.allclose(attention.glimpse_weight_g, attention.glimpse_weight_v.norm())
    assert torch.allclose(attention.glimpse_weight, attention.glimpse_weight_v)
