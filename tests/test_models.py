"""Model-level properties: masking, parameter count, gradients, presets, autocast, the other model kinds."""

from __future__ import annotations

import os
import re

import pytest
import torch

import ban
from ban.errors import ConfigError
from ban.machine import physical_memory
from ban.models import PRESETS
from ban.models.grounding import MASKED_LOGIT
from ban.models.sizes import minimum_parameters


@pytest.fixture(autouse=True)
def _seeded_initialisation():
    """Every model built here starts from the same weights, whatever ran before."""
    torch.manual_seed(0)


def _inputs(config, batch=3, boxes=12, tokens=14, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, boxes, config.feature_dim, generator=generator)
    corners = torch.rand(batch, boxes, 2, 2, generator=generator)
    spatial = torch.cat([corners.min(2).values, corners.max(2).values], -1)
    spatial = torch.cat([spatial, spatial[..., 2:] - spatial[..., :2]], -1)
    questions = torch.randint(0, config.num_tokens, (batch, tokens), generator=generator)
    questions[0, 9:] = config.pad_index
    return features, spatial, questions


SMALL = dict(num_tokens=40, num_answers=17, feature_dim=24, hidden_dim=16, word_dim=20)


def test_paper_best_parameter_count_matches_reference():
    model = ban.build_model(ban.preset("paper-best", num_tokens=19901, num_answers=3129))
    assert sum(p.numel() for p in model.parameters()) == 90_618_566


@pytest.mark.parametrize("kind", [dict(), dict(attention="unitary", use_counting=False),
                                  dict(task="grounding", use_counting=False),
                                  dict(two_word_tables=False, use_counting=False)])
@pytest.mark.parametrize("sizes", [dict(num_glimpses=1), dict(num_glimpses=4, rank_factor=1), dict(hidden_dim=3)])
def test_the_size_check_bounds_every_model_from_below(kind, sizes):
    config = ban.BANConfig(**{**SMALL, **kind, **sizes})
    count = sum(p.numel() for p in ban.build_model(config).parameters())
    assert minimum_parameters(config) <= count


@pytest.mark.parametrize("absurd", [dict(hidden_dim=10**12), dict(num_glimpses=10**6), dict(num_tokens=10**11),
                                    dict(task="grounding", use_counting=False, feature_dim=10**12)])
def test_sizes_beyond_the_machines_memory_are_refused_before_allocating(absurd):
    # hidden_dim 10^12 used to fail inside torch's allocator; num_glimpses 10^6 built glimpses until memory ran out
    name = next(iter(set(absurd) - {"task", "use_counting"}))
    with pytest.raises(ConfigError, match=rf"{name}={absurd[name]}.* GiB of float32 weights, more than this machine"):
        ban.build_model(ban.BANConfig(**absurd))


@pytest.mark.parametrize("mask_question_padding", [False, True])
def test_padded_boxes_get_zero_attention_and_padding_changes_nothing(mask_question_padding):
    config = ban.BANConfig(num_glimpses=3, mask_question_padding=mask_question_padding, **SMALL)
    model = ban.build_model(config).eval()
    features, spatial, questions = _inputs(config)
    features[1, 8:] = 0  # sample 1 has 8 real boxes
    spatial[1, 8:] = 0
    with torch.no_grad():
        out = model(features, spatial, questions)
        assert torch.all(out.attention[1, :, 8:] == 0)
        # pad the whole batch to 20 boxes: every sample's outputs stay the same
        padded = model(torch.nn.functional.pad(features, (0, 0, 0, 8)), torch.nn.functional.pad(spatial, (0, 0, 0, 8)),
                       questions)
    assert torch.allclose(padded.logits, out.logits, atol=1e-6)
    assert torch.allclose(padded.attention[:, :, :12], out.attention, atol=1e-7)
    assert torch.all(padded.attention[:, :, 12:] == 0)


def test_with_a_box_mask_padded_rows_may_hold_anything():
    """Features and coordinates of masked boxes change nothing, counting included (an image with fewer real boxes
    than the counter keeps holds some padded ones among them)."""
    config = ban.BANConfig(num_glimpses=2, use_counting=True, **SMALL)
    model = ban.build_model(config).eval()
    features, spatial, questions = _inputs(config)
    box_mask = torch.ones(3, 12, dtype=torch.bool)
    box_mask[1, 4:] = False  # 4 real boxes: 6 of the counter's 10 are padded
    with torch.no_grad():
        out = model(features, spatial, questions, box_mask=box_mask)
        alone = model(features[1:2, :4], spatial[1:2, :4], questions[1:2])
    assert torch.allclose(out.logits[1], alone.logits[0], atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(box_mask=torch.ones(1, 12, dtype=torch.bool)), "box_mask: expected shape [3, 12]"),  # broadcastable
        (dict(box_mask=torch.ones(3, 12)), "box_mask: expected shape [3, 12] with bool values, got"),
        (dict(features=torch.randn(3, 12, 25)), "features: expected shape [·, ·, 24]"),
        (dict(boxes=torch.rand(3, 5, 4)), "boxes: expected shape [3, 12, ·]"),
        (dict(boxes=torch.rand(3, 12, 2)), "boxes: expected at least 4 coordinates"),
        (dict(questions=torch.ones(3, 14)), "questions: expected shape [3, ·] (· any size) with index values"),
        (dict(questions=torch.ones(3, 14, dtype=torch.uint8)), "with index values"),  # the embedding takes int64/32
        (dict(questions=torch.ones(2, 14, dtype=torch.long)), "questions: expected shape [3, ·]"),
        (dict(features=torch.randn(3, 12, 24, dtype=torch.float64)),
         "features: torch.float64 values meet torch.float32 weights"),
        (dict(features=torch.randn(12, 24)), "features: expected shape [·, ·, 24]"),  # unpacked B, N before
        (dict(features=torch.randn(3, 0, 24), boxes=torch.rand(3, 0, 4)), "features: no box slot (N = 0)"),
        (dict(boxes=None), "boxes: the counting module needs them"),
        (dict(questions=torch.full((3, 14), 41)),  # another dictionary's ids (on the CPU; a GPU asserts instead)
         "questions: id 41 at [0, 0] is outside this model's vocabulary (ids 0…39, padding 40)"),
        (dict(questions=torch.full((3, 14), -1)), "questions: id -1 at [0, 0] is outside"),
        (dict(questions=torch.ones(3, 0, dtype=torch.long)), "questions: no token slot (L = 0)"),  # failed in the GRU
    ],
    ids=["mask-broadcast", "mask-float", "feature-dim", "boxes-count", "boxes-columns", "questions-float",
         "questions-uint8", "questions-batch", "features-float64", "features-2d", "no-boxes", "boxes-none",
         "token-above", "token-negative", "no-tokens"],
)
def test_misshapen_inputs_are_named(change, message):
    config = ban.BANConfig(num_glimpses=2, use_counting=True, **SMALL)
    model = ban.build_model(config).eval()
    features, spatial, questions = _inputs(config)
    inputs = dict(features=features, boxes=spatial, questions=questions, box_mask=None) | change
    with pytest.raises(ValueError, match=re.escape(message)):
        model(**inputs)


def test_inputs_of_other_dtypes_and_sizes_that_fit_are_taken():
    """float64 boxes (numpy's default) with counting, int32 questions, an empty batch, no boxes without counting;
    float64 features under autocast are refused (autocast leaves them float64), bf16 ones taken."""
    config = ban.BANConfig(num_glimpses=2, use_counting=True, **SMALL)
    model = ban.build_model(config).eval()
    features, spatial, questions = _inputs(config)
    with torch.no_grad():
        expected = model(features, spatial, questions).logits
        torch.testing.assert_close(model(features, spatial.double(), questions.int()).logits, expected)
        assert model(features[:0], spatial[:0], questions[:0]).logits.shape == (0, 17)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(features.bfloat16(), spatial, questions).logits.shape == (3, 17)
            with pytest.raises(ValueError, match="features: torch.float64 values"):
                model(features.double(), spatial, questions)
        uncounted = ban.build_model(config.replace(use_counting=False)).eval()
        torch.testing.assert_close(uncounted(features, None, questions).logits,
                                   uncounted(features, spatial, questions).logits)


@pytest.mark.parametrize("fused", [False, True])
def test_non_finite_values_in_masked_boxes_change_nothing(fused):
    """With an explicit box mask a padded row may hold NaN or inf: the fused execution, which projects every row,
    zeroes them first (0 · NaN would be NaN)."""
    config = ban.BANConfig(num_glimpses=2, use_counting=True, fused=fused, **SMALL)
    model = ban.build_model(config).eval()
    features, spatial, questions = _inputs(config)
    box_mask = torch.ones(3, 12, dtype=torch.bool)
    box_mask[1, 6:] = False
    with torch.no_grad():
        expected = model(features, spatial, questions, box_mask=box_mask).logits
        features[1, 6:8], features[1, 8:] = float("nan"), float("inf")
        spatial[1, 6:] = float("nan")
        torch.testing.assert_close(model(features, spatial, questions, box_mask=box_mask).logits, expected)


@pytest.mark.parametrize("kind", [dict(attention="unitary"), dict(task="grounding", num_glimpses=1)])
@pytest.mark.parametrize("option", ["use_counting", "fused"])
def test_options_of_bilinear_vqa_are_refused_where_they_would_be_ignored(kind, option):
    """The config describes the model: counting or the fused execution on a model without them is an error."""
    settings = {**SMALL, **kind, "use_counting": False, option: True}
    with pytest.raises(ConfigError, match=rf"{option}=True applies to BAN for VQA only.*\({option}=False; on the "
                                          rf"command line --set model\.{option}=false\)"):
        ban.BANConfig(**settings)


def test_question_padding_masks_are_refused_for_grounding_which_has_no_place_for_them():
    """Grounding reads the token states at the entity positions (the reference's may point at padding): a mask
    of question padding would be ignored, so it is an error; VQA's two attentions take it."""
    with pytest.raises(ConfigError, match=r"mask_question_padding=True applies to VQA only, not to grounding.*"
                                          r"--set model\.mask_question_padding=false\)"):
        ban.BANConfig(**SMALL, task="grounding", num_glimpses=1, use_counting=False, mask_question_padding=True)
    for attention in ("bilinear", "unitary"):
        assert ban.BANConfig(**SMALL, attention=attention, use_counting=False, mask_question_padding=True)


@pytest.mark.parametrize("attention", ["bilinear", "unitary"])
def test_attention_logits_are_the_attention_before_its_softmax(attention):
    """−inf at padded boxes (and, with masked question padding, at padded tokens)."""
    config = ban.BANConfig(num_glimpses=2, attention=attention, use_counting=False, mask_question_padding=True,
                           **SMALL)
    model = ban.build_model(config).eval()
    features, spatial, questions = _inputs(config)
    features[1, 8:] = 0
    with torch.no_grad():
        out = model(features, spatial, questions)
    batch, glimpses, boxes, tokens = out.attention_logits.shape
    assert out.attention_logits.shape == out.attention.shape
    torch.testing.assert_close(out.attention_logits.reshape(batch, glimpses, -1).softmax(-1),
                               out.attention.reshape(batch, glimpses, -1))
    assert out.attention_logits[1, :, 8:].isneginf().all()
    if attention == "bilinear":
        assert out.attention_logits[0, :, :, 9:].isneginf().all() and out.attention_logits[0, :, :, :9].isfinite().all()


def test_a_stored_config_with_the_options_earlier_versions_ignored_still_loads():
    """Runs made before use_counting / fused were refused for unitary attention and grounding (and
    mask_question_padding for grounding) stored them True; reading such a config gives the model they trained,
    not an error."""
    for kind, ignored in ((dict(attention="unitary"), {}), (dict(task="grounding", num_glimpses=1),
                                                           {"mask_question_padding": True})):
        stored = {**ban.BANConfig(**SMALL, **kind, use_counting=False).to_dict(), "use_counting": True, "fused": True,
                  **ignored}
        assert ban.BANConfig.from_stored(stored) == ban.BANConfig(**SMALL, **kind, use_counting=False)
        with pytest.raises(ConfigError, match="applies to BAN for VQA only"):
            ban.BANConfig.from_dict(stored)
    vqa = ban.BANConfig(**SMALL, fused=True, mask_question_padding=True).to_dict()
    assert all(getattr(ban.BANConfig.from_stored(vqa), option) for option in ("fused", "use_counting",
                                                                              "mask_question_padding"))
    unitary = ban.BANConfig(**SMALL, attention="unitary", use_counting=False, mask_question_padding=True).to_dict()
    assert ban.BANConfig.from_stored(unitary).mask_question_padding


def test_grounding_needs_an_entity_slot():
    config = ban.BANConfig(task="grounding", num_glimpses=1, use_counting=False, **SMALL)
    features, spatial, tokens = _inputs(config)
    with pytest.raises(ValueError, match="no entity slot"):
        ban.build_model(config)(features, spatial, tokens, torch.zeros(3, 0, dtype=torch.long))


def test_without_an_entity_mask_slot_0_is_a_phrase_even_at_token_0():
    """An entity position of 0 marks an empty slot, except in slot 0: a caption's first phrase may end on its
    first token ("Men …"), so the default entity mask keeps slot 0 and masks only the later zeros."""
    config = ban.BANConfig(task="grounding", num_glimpses=1, use_counting=False, **SMALL)
    model = ban.build_model(config).eval()
    features, spatial, tokens = _inputs(config)
    positions = torch.tensor([[0, 3, 0], [0, 0, 0], [5, 0, 2]])
    with torch.no_grad():
        logits = model(features, spatial, tokens, positions).logits  # [B, G, N, E]
    masked = logits == MASKED_LOGIT
    assert not masked[:, :, :, 0].any() and logits[:, :, :, 0].isfinite().all()
    assert masked[0, :, :, 2].all() and masked[1, :, :, 1:].all() and masked[2, :, :, 1].all()
    assert not masked[0, :, :, 1].any() and not masked[2, :, :, 2].any()


@pytest.mark.parametrize(("kind", "argument"), [(dict(attention="unitary", use_counting=False), "questions"),
                                                (dict(task="grounding", use_counting=False), "tokens")])
def test_every_model_names_its_own_token_argument(kind, argument):
    config = ban.BANConfig(num_glimpses=1, **SMALL, **kind)
    model = ban.build_model(config).eval()
    features, spatial, tokens = _inputs(config)
    extra = (torch.ones(3, 1, dtype=torch.long),) if config.task == "grounding" else ()
    with pytest.raises(ValueError, match=rf"{argument}: id 41 at \[0, 0\] is outside"):
        model(features, spatial, torch.full((3, 14), 41), *extra)
    with pytest.raises(ValueError, match=rf"{argument}: no token slot \(L = 0\)"):
        model(features, spatial, tokens[:, :0], *extra)


def test_the_attention_layers_name_a_misshapen_mask():
    v, q, mask = torch.randn(2, 5, 6), torch.randn(2, 3, 4), torch.ones(1, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=re.escape("box_mask: expected shape [2, 5]")):
        ban.nn.BilinearAttentionMap(6, 4, 8, 2)(v, q, mask)
    with pytest.raises(ValueError, match=re.escape("token_mask: expected shape [2, 3]")):
        ban.nn.BilinearAttentionMap(6, 4, 8, 2)(v, q, mask.expand(2, -1), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=re.escape("box_mask: expected shape [2, 5]")):
        ban.nn.UnitaryAttention(6, 4, 8, 2)(v, q[:, 0], mask)


def test_the_attention_layers_take_zero_rows_as_padding_by_default():
    torch.manual_seed(0)
    v, q = torch.randn(2, 5, 6), torch.randn(2, 3, 4)
    v[1, 3:] = 0
    mask = ban.nn.box_mask_from_features(v)
    bilinear, unitary = ban.nn.BilinearAttentionMap(6, 4, 8, 2).eval(), ban.nn.UnitaryAttention(6, 4, 8, 2).eval()
    attention, _ = bilinear(v, q)
    assert torch.equal(attention, bilinear(v, q, mask)[0]) and torch.all(attention[1, :, 3:] == 0)
    assert torch.equal(unitary(v, q[:, 0]), unitary(v, q[:, 0], mask))


def test_explicit_box_mask_overrides_zero_rows():
    config = ban.BANConfig(num_glimpses=2, **SMALL)
    model = ban.build_model(config).eval()
    features, spatial, questions = _inputs(config)
    box_mask = torch.ones(3, 12, dtype=torch.bool)
    box_mask[:, 10:] = False
    with torch.no_grad():
        out = model(features, spatial, questions, box_mask=box_mask)
    assert torch.all(out.attention[:, :, 10:] == 0)
    assert torch.allclose(out.attention.sum(dim=(2, 3)), torch.ones(3, 2))


def test_masked_question_padding_gets_no_attention():
    config = ban.BANConfig(num_glimpses=2, mask_question_padding=True, **SMALL)
    model = ban.build_model(config).eval()
    features, spatial, questions = _inputs(config)
    with torch.no_grad():
        out = model(features, spatial, questions)
    assert torch.all(out.attention[0, :, :, 9:] == 0)


@pytest.mark.parametrize("kind", [dict(), dict(attention="unitary", use_counting=False)], ids=["ban", "unitary"])
def test_with_masked_question_padding_more_padding_changes_no_logit(kind):
    """mask_question_padding: the padded tokens get no attention and add nothing to the pooled states (BAN's sum
    over tokens; the unitary model's state after the last real token), so padding every question to 20 tokens
    instead of 14 leaves every logit as it was. Without the option (the reference) it does not."""
    outputs = {}
    for masked in (True, False):
        config = ban.BANConfig(num_glimpses=2, mask_question_padding=masked, **SMALL, **kind)
        torch.manual_seed(0)
        model = ban.build_model(config).eval()
        features, spatial, questions = _inputs(config)
        longer = torch.nn.functional.pad(questions, (0, 6), value=config.pad_index)
        with torch.no_grad():
            outputs[masked] = [model(features, spatial, tokens).logits for tokens in (questions, longer)]
    short, long = outputs[True]
    assert torch.allclose(long, short, rtol=0, atol=1e-5)
    unmasked_short, unmasked_long = outputs[False]
    assert (unmasked_long - unmasked_short).abs().max() > 1e-3


@pytest.mark.parametrize(
    "config",
    [
        ban.BANConfig(num_glimpses=2, **SMALL),
        ban.BANConfig(num_glimpses=2, use_counting=False, **SMALL),
        ban.BANConfig(num_glimpses=2, two_word_tables=True, **SMALL),
        ban.BANConfig(num_glimpses=2, attention="unitary", use_counting=False, **SMALL),
        ban.BANConfig(task="grounding", num_glimpses=1, use_counting=False, **SMALL),
    ],
    ids=["ban", "ban-no-counting", "ban-option-c", "unitary", "grounding"],
)
def test_one_backward_step_reaches_every_trainable_parameter(config):
    model = ban.build_model(config).train()
    features, spatial, questions = _inputs(config)
    if config.task == "grounding":
        out = model(features, spatial, questions, torch.tensor([[3, 8], [5, 0], [1, 2]]))
        loss = out.logits.masked_fill(out.logits == -99, 0).square().sum()
    else:
        loss = model(features, spatial, questions).logits.square().sum()
    loss.backward()
    for name, parameter in model.named_parameters():  # DDP (find_unused_parameters off) relies on this
        if any(name.startswith(f"counter.functions.{i}.") for i in range(8, 16)):
            assert not parameter.requires_grad and parameter.grad is None, name  # reference keeps 16; f8… unused
            continue
        if config.attention == "unitary" and name == "attention.scores.pool.bias":
            # one bias per glimpse added to every box's logit before the softmax over boxes: shift-invariant, so
            # its gradient is zero up to rounding (as in the reference, which has the same redundant bias)
            assert parameter.grad.abs().max() < 1e-5, name
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_model_runs_under_bfloat16_autocast_on_cpu():
    config = ban.BANConfig(num_glimpses=2, **SMALL)
    model = ban.build_model(config).train()
    features, spatial, questions = _inputs(config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(features, spatial, questions)
    assert torch.isfinite(out.logits.float()).all()
    out.logits.float().sum().backward()
    assert torch.isfinite(model.attention.glimpse_weight_v.grad).all()
    model.eval()  # the same function as in float32, to bf16's precision (8 bits of mantissa)
    with torch.no_grad():
        exact = model(features, spatial, questions).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = model(features, spatial, questions).logits.float()
    torch.testing.assert_close(rounded, exact, rtol=0.05, atol=0.05 * exact.abs().max().item())


def test_presets_and_config_validation():
    assert set(PRESETS) >= {"paper-best", "paper-ablation", "grounding", "tiny", "tiny-grounding"}
    assert ban.preset("paper-ablation", num_glimpses=8).num_glimpses == 8
    assert ban.preset("grounding").task == "grounding"
    with pytest.raises(ConfigError, match="unknown preset"):
        ban.preset("paper-worst")
    with pytest.raises(ConfigError, match="unknown model setting"):
        ban.BANConfig.from_dict({"hidden": 3})
    with pytest.raises(ConfigError, match="attention"):
        ban.BANConfig(attention="co")
    for wrong in (dict(use_counting="no"), dict(hidden_dim=8.5), dict(hidden_dim="8"), dict(num_glimpses=True),
                  dict(dropout=float("nan"))):  # types as declared, in Python as in config.json
        with pytest.raises(ConfigError, match=f"model setting '{next(iter(wrong))}'.*does not fit its type"):
            ban.BANConfig(**wrong)
    with pytest.raises(ConfigError, match="num_answers must be a positive integer"):
        ban.BANConfig(task="grounding", use_counting=False, num_answers=-5)
    config = ban.preset("tiny", num_tokens=50, num_answers=9)
    assert ban.BANConfig.from_dict(config.to_dict()) == config


def test_word_embeddings_load_glove_and_keep_padding_zero():
    config = ban.BANConfig(num_glimpses=1, two_word_tables=True, **SMALL)
    model = ban.build_model(config)
    glove = torch.randn(40, 20)
    model.load_word_embeddings(glove, glove * 2)
    assert torch.equal(model.word_embedding.table.weight[:40], glove)
    assert torch.equal(model.word_embedding.second_table.weight[:40], glove * 2)
    assert torch.all(model.word_embedding.table.weight[40] == 0)
    with pytest.raises(ValueError, match="do not fit"):
        model.load_word_embeddings(torch.randn(39, 20))


@pytest.mark.parametrize("use_counting", [True, False])
def test_fused_and_plain_execution_compute_the_same_function(use_counting):
    config = ban.BANConfig(num_glimpses=4, use_counting=use_counting, **SMALL)
    fused = ban.build_model(config.replace(fused=True)).eval()
    plain = ban.build_model(config.replace(fused=False)).eval()
    plain.load_state_dict(fused.state_dict())
    features, spatial, questions = _inputs(config)
    features[2, 7:] = 0
    with torch.no_grad():
        a, b = fused(features, spatial, questions), plain(features, spatial, questions)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.equal(a.attention, b.attention)


@pytest.mark.parametrize("task", ["vqa", "grounding"])
def test_a_model_exports_whole_and_its_saved_program_computes_the_same(task, tmp_path):
    """torch.export takes the model with its output dataclass (the real boxes' rows given: finding them reads the
    device), and the program saved and loaded again gives the eager model's outputs."""
    from ban.nn.bilinear import box_mask_from_features, real_box_rows

    config = ban.BANConfig(task=task, num_glimpses=1 if task == "grounding" else 2,
                           use_counting=task == "vqa", **SMALL)
    model = ban.build_model(config).eval()
    features, spatial, questions = _inputs(config)
    features[1, 7:] = 0  # padded boxes
    inputs = (features, spatial, questions) + ((torch.tensor([[3, 9]] * 3),) if task == "grounding" else ())
    rows = real_box_rows(box_mask_from_features(features))
    expected = model(*inputs, real_rows=rows)
    torch.export.save(torch.export.export(model, inputs, {"real_rows": rows}), tmp_path / "model.pt2")
    exported = torch.export.load(tmp_path / "model.pt2").module()(*inputs, real_rows=rows)
    assert type(exported) is type(expected)
    for name, value in vars(expected).items():
        torch.testing.assert_close(getattr(exported, name), value, rtol=1e-5, atol=1e-6)


def test_stacked_projection_keeps_independent_dropout_masks():
    from ban.nn import FCStack
    from ban.nn.fc import stacked_projection

    torch.manual_seed(0)
    stacks = [FCStack([64, 64], None, dropout=0.5) for _ in range(3)]
    for stack in stacks:  # identity weights: the output shows the dropout mask
        with torch.no_grad():
            stack.layers[0].weight_v.copy_(torch.eye(64))
            stack.layers[0].weight_g.fill_(8.0)  # ‖I‖_F = 8
            stack.layers[0].bias.zero_()
    out = stacked_projection(stacks, torch.ones(200, 64))  # [3, 200, 64]
    kept = out != 0
    assert torch.allclose(out[kept], torch.tensor(2.0))  # inverted dropout scale 1 / (1 − p)
    assert abs(kept.float().mean().item() - 0.5) < 0.02
    # masks of different stacks are independent: agreement ≈ 0.5, not 1
    assert abs((kept[0] == kept[1]).float().mean().item() - 0.5) < 0.02
    for stack in stacks:
        stack.eval()
    assert torch.all(stacked_projection(stacks, torch.ones(5, 64)) == 1)


def test_a_system_that_cannot_tell_its_memory_refuses_nothing(monkeypatch):
    # sysconf answers -1 where the size is indeterminate: that must not make every model "too large"
    monkeypatch.setattr(os, "sysconf", lambda name: -1)
    assert physical_memory() is None
    ban.build_model(ban.BANConfig(**SMALL))


@pytest.mark.parametrize("attention", ["bilinear", "unitary"])
def test_each_dropout_rate_of_the_config_reaches_its_layers(attention):
    """PAPER.md §2: dropout on the projections' inputs, attention dropout on σ(Uᵀv) (BAN), classifier dropout on
    its hidden units; three different rates, so a layer wired to the wrong one (or left at its default) shows."""
    config = ban.BANConfig(**SMALL, attention=attention, use_counting=False, dropout=0.1, attention_dropout=0.3,
                           classifier_dropout=0.4)
    model = ban.build_model(config)
    assert model.classifier.dropout.p == 0.4
    projections = [module for name, module in model.named_modules() if isinstance(module, ban.nn.FCStack)
                   and not name.startswith("classifier")]
    assert projections and all(stack.dropout.p == 0.1 for stack in projections)
    if attention == "bilinear":
        assert model.attention.attention_dropout.p == 0.3
