"""Is this a mature white cell at all? A linear gate on the backbone's features, fitted on two labs.

The OVA heads learned five kinds of white cell; shown a red cell or a platelet of another
laboratory, one of them can still fire, and the out-of-distribution score (``wbcv.inference.ood``)
cannot tell "not a white cell" from "a white cell of another lab" (both are far from the training
cells). The gate is trained for exactly that question, on the pooled backbone features the heads
already compute (one dot product per cell, no second network):

    p(white cell | f) = sigmoid(w . (f - m) / s + b)

* **positives**: the training split's white cells and, where given, white cells of other
  laboratories (boxes labelled "WBC", class unknown), so that the gate learns "white cell", not
  "an image of the training lab";
* **negatives**: red-cell and platelet crops and slide background (any laboratory);
* **loss**: logistic, each *source* (training-lab cells, other-lab cells, negatives) carrying the
  same total weight, whatever its size; L2 penalty ``L2`` on w; fitted by L-BFGS on features
  standardised by the positives' mean m and SD s.

Threshold: the ``GATE_QUANTILE`` quantile of the gate's logit over the validation split's white
cells of the training lab (with their augmented draws when fitted by ``rejection_fit``), so that at
most about 0.2 % of in-distribution white cells are refused by it (the test split measures it).
A cell below it is unclassified with reason ``not_a_wbc``.

The parameters are stored beside the weights (``GATE_FILE``, its sha256 in the model card,
checked when the artifact is loaded). Fitting: ``wbcv.inference.rejection_fit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import torch

GATE_FILE: Final[str] = "wbc_gate.npz"
#: Chosen on validation data (PBC validation split, raabin val crops), with the gate then fitted on
#: clean cells only: at 0.002, 0.2 % of PBC validation white cells and 529 of the 534 raabin val red
#: cells reaching the gate were refused; at 0.005, 0.5 % and 532. Fitted as now, under the training
#: augmentation (``rejection_fit``), the bundled model's gate refuses 0.0 % of the clean validation cells.
GATE_QUANTILE: Final[float] = 0.002
L2: Final[float] = 1e-3
METHOD: Final[str] = "logistic regression on backbone features: white cells of 1+ labs vs other objects"


@dataclass(frozen=True)
class WbcGate:
    mean: np.ndarray  # (D,) float32 positives' feature mean
    scale: np.ndarray  # (D,) float32 positives' feature SD (floored)
    weight: np.ndarray  # (D,) float32
    bias: float
    threshold: float  # logits below it: not a white cell (NaN until set)

    def logit(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """The gate's logit per cell (N,) for features (N, D)."""
        f = features.double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
        return ((f - self.mean) / self.scale) @ self.weight.astype(np.float64) + self.bias

    def refuses(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Bool (N,): the cells the gate says are not white cells."""
        return self.logit(features) < self.threshold

    def save(self, path: str) -> None:
        np.savez(
            path,
            mean=self.mean,
            scale=self.scale,
            weight=self.weight,
            bias=np.float64(self.bias),
            threshold=np.float64(self.threshold),
        )

    @classmethod
    def load(cls, path: str) -> WbcGate:
        with np.load(path, allow_pickle=False) as z:
            gate = cls(
                z["mean"].astype(np.float32),
                z["scale"].astype(np.float32),
                z["weight"].astype(np.float32),
                float(z["bias"]),
                float(z["threshold"]),
            )
        if not (gate.mean.shape == gate.scale.shape == gate.weight.shape and gate.mean.ndim == 1):
            shapes = f"{gate.mean.shape}, {gate.scale.shape}, {gate.weight.shape}"
            raise ValueError(f"mean, scale and weight must be vectors of one length, got {shapes}")
        if not np.isfinite(gate.threshold):
            raise ValueError("the gate has no finite threshold")
        return gate


def fit_gate(positives: Sequence[np.ndarray], negatives: np.ndarray, l2: float = L2) -> WbcGate:
    """The gate fitted on feature arrays (n_i, D): ``positives`` one per source (the training lab
    first), ``negatives`` pooled. Each positive source carries weight 1/(2 k) in total, the
    negatives 1/2. The threshold is left NaN (``with_threshold``)."""
    sources = [np.asarray(p, np.float64) for p in positives if len(p)]
    if not sources or not len(negatives):
        raise ValueError("the gate needs at least one white cell and one negative")
    pos = np.concatenate(sources)
    mean = pos.mean(0)
    scale = np.maximum(pos.std(0), 1e-6 + 1e-3 * float(pos.std(0).mean()))
    x = torch.from_numpy((np.concatenate([pos, np.asarray(negatives, np.float64)]) - mean) / scale)
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(negatives))]).double()
    sample_weight = torch.cat(
        [torch.full((len(s),), 1.0 / (2 * len(sources) * len(s))) for s in sources]
        + [torch.full((len(negatives),), 0.5 / len(negatives))]
    ).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")
        loss = (sample_weight * bce).sum() + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weight = w.detach().numpy().astype(np.float32)
    return WbcGate(mean.astype(np.float32), scale.astype(np.float32), weight, float(b.detach()), float("nan"))


def with_threshold(gate: WbcGate, validation_logits: np.ndarray, quantile: float = GATE_QUANTILE) -> WbcGate:
    """``gate`` with its threshold at ``quantile`` of the validation white cells' logits."""
    if not len(validation_logits):
        raise ValueError("the threshold needs validation white cells")
    return replace(gate, threshold=float(np.quantile(np.asarray(validation_logits, np.float64), quantile)))
