"""The combination rule of the OVA + 3-class ensemble, and when it abstains.

Definitions (one cell, classes c in ``CELL_CLASSES``, lineage L(c) in ``LINEAGES``):

1. Calibrated one-vs-all scores  s_c = sigmoid(a_c * z_c + b_c)   (Platt scaling per head;
   a_c = 1, b_c = 0 when uncalibrated).
2. Calibrated lineage probabilities  q_l = softmax(u / T)_l       (temperature scaling).
3. Combined probabilities  p(c) = s_c * q_L(c) / sum_k s_k * q_L(k)
   (product of experts: a class needs both its own OVA head and its lineage to agree).
4. The cell is ``unclassified`` when any of these holds, checked in this order, and the first
   one that holds is recorded as the reason:
   - ``no_ova_head``: no s_c reaches the firing threshold (the cell looks like none of the five
     classes: immature granulocyte, erythroblast, platelet clump, smudge, debris);
   - ``multiple_ova_heads``: two or more s_c reach it (the heads contradict each other);
   - ``lineage_disagreement``: argmax_l q_l is not the lineage of argmax_c s_c;
   - ``low_confidence``: max_c p(c) is below the confidence threshold chosen on validation data.
   Otherwise the prediction is argmax_c p(c). After the rule, whatever the heads say, a cell far
   from every class in feature space is ``out_of_distribution`` (``wbcv.inference.ood``), one
   the white-cell gate refuses is ``not_a_wbc`` (``wbcv.inference.wbc_gate``) and an image in
   which the locator found no white cell is ``no_cell_found`` (``force_unclassified``;
   ``wbcv.inference.predict.decide`` applies them, each overriding the one before).

The renormalisation in step 3 alone would hand a confident-looking distribution to a cell that
every head rejects; that is why the "no head fires" rule comes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import torch

from wbcv.base.taxonomy import CELL_CLASSES, LINEAGE_INDEX_OF_CLASS
from wbcv.inference.ensemble import EnsembleLogits

#: Reason codes of the abstention rules, in the order they are checked. Code 0 means classified.
ABSTAIN_REASONS: Final[tuple[str, ...]] = (
    "",
    "no_ova_head",
    "multiple_ova_heads",
    "lineage_disagreement",
    "low_confidence",
    "no_cell_found",  # set after the rule: the locator found no white cell (wbcv.inference.framing)
    "out_of_distribution",  # set after the rule: far from every class in feature space (wbcv.inference.ood)
    "not_a_wbc",  # set after the rule: the white-cell gate says it is no white cell (wbcv.inference.wbc_gate)
)
UNCLASSIFIED_INDEX: Final[int] = -1


@dataclass(frozen=True)
class Calibration:
    """Platt parameters of the OVA heads and the lineage temperature (identity when uncalibrated)."""

    ova_scale: tuple[float, ...] = (1.0,) * len(CELL_CLASSES)
    ova_bias: tuple[float, ...] = (0.0,) * len(CELL_CLASSES)
    lineage_temperature: float = 1.0

    def __post_init__(self) -> None:
        if len(self.ova_scale) != len(CELL_CLASSES) or len(self.ova_bias) != len(CELL_CLASSES):
            raise ValueError(f"ova_scale and ova_bias need {len(CELL_CLASSES)} values, one per class")
        if not self.lineage_temperature > 0:
            raise ValueError("lineage_temperature must be > 0")


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds of the combination rule (stored in the model card)."""

    ova_fire: float = 0.5
    min_confidence: float = 0.5

    def __post_init__(self) -> None:
        for name in ("ova_fire", "min_confidence"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"threshold {name} must lie in [0, 1], got {v}")


@dataclass(frozen=True)
class CombinedOutput:
    """Per-cell decision and the probabilities behind it (all tensors have N rows)."""

    probabilities: torch.Tensor  # (N, 5) combined p(c)
    ova_scores: torch.Tensor  # (N, 5) calibrated s_c
    lineage_probabilities: torch.Tensor  # (N, 3) calibrated q_l
    predicted: torch.Tensor  # (N,) int64 index into CELL_CLASSES, or UNCLASSIFIED_INDEX
    abstain_reason: torch.Tensor  # (N,) int64 index into ABSTAIN_REASONS (0 = classified)
    confidence: torch.Tensor = field(repr=False)  # (N,) max_c p(c)


def calibrated_scores(logits: EnsembleLogits, cal: Calibration) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1 and 2: calibrated OVA scores s and lineage probabilities q."""
    a = torch.tensor(cal.ova_scale, dtype=logits.ova.dtype)
    b = torch.tensor(cal.ova_bias, dtype=logits.ova.dtype)
    s = torch.sigmoid(logits.ova * a + b)
    q = torch.softmax(logits.lineage / cal.lineage_temperature, dim=1)
    return s, q


def combine(logits: EnsembleLogits, cal: Calibration, thr: Thresholds) -> CombinedOutput:
    """Apply the rule in the module docstring to a batch of head outputs."""
    s, q = calibrated_scores(logits, cal)
    lineage_idx = torch.tensor(LINEAGE_INDEX_OF_CLASS, dtype=torch.long)
    joint = s * q[:, lineage_idx]
    # Clamp keeps the division defined when every score underflows; such cells abstain anyway.
    p = joint / joint.sum(dim=1, keepdim=True).clamp_min(torch.finfo(joint.dtype).tiny)
    confidence, best = p.max(dim=1)

    fired = (s >= thr.ova_fire).sum(dim=1)
    ova_best = s.argmax(dim=1)
    rules = (
        fired == 0,
        fired >= 2,
        q.argmax(dim=1) != lineage_idx[ova_best],
        confidence < thr.min_confidence,
    )
    reason = torch.zeros_like(best)
    for code in range(len(rules), 0, -1):  # reverse, so the first rule that holds wins
        reason = torch.where(rules[code - 1], torch.full_like(reason, code), reason)
    predicted = torch.where(reason == 0, best, torch.full_like(best, UNCLASSIFIED_INDEX))
    return CombinedOutput(p, s, q, predicted, reason, confidence)


NO_CELL_FOUND: Final[int] = ABSTAIN_REASONS.index("no_cell_found")
OUT_OF_DISTRIBUTION: Final[int] = ABSTAIN_REASONS.index("out_of_distribution")
NOT_A_WBC: Final[int] = ABSTAIN_REASONS.index("not_a_wbc")


def force_unclassified(out: CombinedOutput, mask: torch.Tensor | None, reason: int) -> CombinedOutput:
    """``out`` with the cells where ``mask`` (bool, N) is set unclassified with ``reason`` (a code
    of ``ABSTAIN_REASONS``), whatever the heads said."""
    if mask is None or not bool(mask.any()):
        return out
    return CombinedOutput(
        out.probabilities,
        out.ova_scores,
        out.lineage_probabilities,
        torch.where(mask, torch.full_like(out.predicted, UNCLASSIFIED_INDEX), out.predicted),
        torch.where(mask, torch.full_like(out.abstain_reason, reason), out.abstain_reason),
        out.confidence,
    )
