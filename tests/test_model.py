"""The Res2Net backbone, the ensemble heads and the combination rule."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wbcv.base.taxonomy import CELL_CLASSES, LINEAGE_INDEX_OF_CLASS, LINEAGE_OF_CLASS, LINEAGES
from wbcv.inference.combine import ABSTAIN_REASONS, UNCLASSIFIED_INDEX, Calibration, Thresholds, combine
from wbcv.inference.ensemble import EnsembleLogits, WbcEnsembleNet
from wbcv.inference.res2net import VARIANTS, Bottle2neck, Res2NetConfig, fold_batchnorm, variant

MEAN, STD = (128.0, 128.0, 128.0), (64.0, 64.0, 64.0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("size", [48, 64, 80])
def test_every_variant_gives_five_ova_and_three_lineage_logits(name, size):
    net = WbcEnsembleNet(variant(name), MEAN, STD, with_softmax_head=True).eval()
    x = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8)
    out = net(x)
    assert out.ova.shape == (3, len(CELL_CLASSES))
    assert out.lineage.shape == (3, len(LINEAGES))
    assert out.softmax5 is not None and out.softmax5.shape == (3, len(CELL_CLASSES))


def test_blocks_are_res2net_blocks_with_hierarchical_splits():
    cfg = Res2NetConfig(scale=4, base_width=8)
    net = WbcEnsembleNet(cfg, MEAN, STD)
    blocks = [m for m in net.modules() if isinstance(m, Bottle2neck)]
    assert len(blocks) == sum(cfg.depths)
    assert all(len(b.convs) == cfg.scale - 1 for b in blocks)


def test_config_round_trips_through_a_dict_and_rejects_unknown_fields():
    cfg = variant("res2net_wbc_base")
    assert Res2NetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown backbone field"):
        Res2NetConfig.from_dict({**cfg.to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="scale >= 2"):
        Res2NetConfig(scale=1)


def test_input_must_be_uint8_nhwc():
    net = WbcEnsembleNet(variant("res2net_wbc_tiny"), MEAN, STD).eval()
    with pytest.raises(ValueError, match="uint8"):
        net(torch.zeros(2, 3, 64, 64))


def test_folding_batchnorm_keeps_the_outputs():
    torch.manual_seed(1)
    net = WbcEnsembleNet(dataclasses.replace(variant("res2net_wbc_tiny"), norm="batch"), MEAN, STD)
    net.train()
    x = torch.randint(0, 256, (16, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        for _ in range(3):
            net(x)  # gives the running statistics non-trivial values
    net.eval()
    with torch.no_grad():
        before = net(x)
        fold_batchnorm(net)
        after = net(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(after.ova, before.ova, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after.lineage, before.lineage, rtol=1e-4, atol=1e-4)


def test_groupnorm_variant_has_no_batch_statistics():
    net = WbcEnsembleNet(dataclasses.replace(variant("res2net_wbc_small"), norm="group"), MEAN, STD)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


# --- the combination rule -------------------------------------------------------------------

BIG = 8.0  # a logit far enough from 0 that its sigmoid is clearly on one side of 0.5


def _logits(ova: list[float], lineage: list[float]) -> EnsembleLogits:
    return EnsembleLogits(torch.tensor([ova]), torch.tensor([lineage]), None)


def _one(ova: list[float], lineage: list[float], thr: Thresholds | None = None) -> tuple[str, str]:
    out = combine(_logits(ova, lineage), Calibration(), thr or Thresholds())
    idx = int(out.predicted[0])
    return ("unclassified" if idx == UNCLASSIFIED_INDEX else CELL_CLASSES[idx]), ABSTAIN_REASONS[
        int(out.abstain_reason[0])
    ]


def test_clear_cell_is_classified():
    assert _one([BIG, -BIG, -BIG, -BIG, -BIG], [BIG, -BIG, -BIG]) == ("neutrophil", "")
    assert _one([-BIG, -BIG, BIG, -BIG, -BIG], [-BIG, -BIG, BIG]) == ("monocyte", "")


def test_no_head_firing_abstains_even_though_renormalised_probabilities_look_confident():
    out = combine(
        _logits([-BIG, -BIG - 4, -BIG - 4, -BIG - 4, -BIG - 4], [BIG, -BIG, -BIG]), Calibration(), Thresholds()
    )
    assert float(out.confidence[0]) > 0.9  # renormalisation alone would commit
    assert int(out.predicted[0]) == UNCLASSIFIED_INDEX
    assert ABSTAIN_REASONS[int(out.abstain_reason[0])] == "no_ova_head"


def test_two_heads_firing_abstains():
    assert _one([BIG, BIG, -BIG, -BIG, -BIG], [BIG, -BIG, -BIG]) == ("unclassified", "multiple_ova_heads")


def test_lineage_disagreeing_with_the_ova_head_abstains():
    assert _one([-BIG, -BIG, -BIG, BIG, -BIG], [-BIG, BIG, -BIG]) == ("unclassified", "lineage_disagreement")


def test_low_confidence_abstains_at_the_card_threshold():
    # s_neut = sigmoid(0.5) = 0.62; the granulocyte siblings add mass, so max p(c) is about 0.45.
    ova, lin = [0.5, -BIG, -BIG, -0.2, -0.2], [BIG, -BIG, -BIG]
    assert _one(ova, lin, Thresholds(min_confidence=0.3)) == ("neutrophil", "")
    assert _one(ova, lin, Thresholds(min_confidence=0.9)) == ("unclassified", "low_confidence")


def test_calibration_is_applied_before_the_rule():
    # Platt bias -10 on the neutrophil head silences it: no head fires any more.
    cal = Calibration(ova_bias=(-10.0, 0.0, 0.0, 0.0, 0.0))
    out = combine(_logits([3.0, -BIG, -BIG, -BIG, -BIG], [BIG, -BIG, -BIG]), cal, Thresholds())
    assert ABSTAIN_REASONS[int(out.abstain_reason[0])] == "no_ova_head"


def test_combined_probability_is_the_normalised_product_of_ova_and_lineage():
    ova = torch.tensor([[0.3, -1.0, 0.2, 1.5, -0.4]])
    lin = torch.tensor([[0.1, 0.7, -0.3]])
    out = combine(EnsembleLogits(ova, lin, None), Calibration(), Thresholds())
    s, q = torch.sigmoid(ova[0]), torch.softmax(lin[0], 0)
    manual = torch.tensor([float(s[i] * q[LINEAGES.index(LINEAGE_OF_CLASS[c])]) for i, c in enumerate(CELL_CLASSES)])
    torch.testing.assert_close(out.probabilities[0], manual / manual.sum())


logit = st.floats(-30, 30, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(logit, min_size=5, max_size=5), st.lists(logit, min_size=3, max_size=3), st.floats(0, 1), st.floats(0, 1)
)
def test_rule_invariants(ova, lin, fire, conf):
    out = combine(_logits(ova, lin), Calibration(), Thresholds(ova_fire=fire, min_confidence=conf))
    p = out.probabilities[0]
    assert torch.all(p >= 0) and abs(float(p.sum()) - 1) < 1e-5
    pred, reason = int(out.predicted[0]), int(out.abstain_reason[0])
    assert (pred == UNCLASSIFIED_INDEX) == (reason != 0)
    if pred != UNCLASSIFIED_INDEX:
        # A committed call: exactly one head fired, it is the predicted class, lineages agree.
        s = out.ova_scores[0]
        assert int((s >= fire).sum()) == 1
        assert int(s.argmax()) == pred
        assert int(out.lineage_probabilities[0].argmax()) == LINEAGE_INDEX_OF_CLASS[pred]
        assert float(out.confidence[0]) >= conf


def test_thresholds_and_calibration_are_validated():
    with pytest.raises(ValueError, match="ova_fire"):
        Thresholds(ova_fire=1.5)
    with pytest.raises(ValueError, match="one per class"):
        Calibration(ova_scale=(1.0, 1.0))
