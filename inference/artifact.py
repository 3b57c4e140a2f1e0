"""Model artifacts: weights plus a model card, saved and loaded with their hash verified.

An artifact is a directory::

    NAME/
      model.json    the model card (format below)
      weights.pt    the state dict, saved with torch.save and loaded with weights_only=True

The card holds everything needed to rebuild and use the network: classes, architecture, input
size and normalisation, calibration, decision thresholds, and the sha256 and byte size of the
weights. It also carries provenance (training-data hash, split, recipe) and measured metrics.
The loader refuses an artifact whose card is missing or malformed, whose classes are not ours,
or whose weights are truncated or do not match the recorded sha256: a validation report must
never be signed on numbers from a model other than the one it names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

from wbcv.base.atomic import atomic_write_bytes, sha256_file, verified_sidecar
from wbcv.base.errors import WbcvError
from wbcv.base.taxonomy import CELL_CLASSES, LINEAGES
from wbcv.inference.acquisition import AcquisitionReference
from wbcv.inference.combine import Calibration, Thresholds
from wbcv.inference.domain import DomainProfile, load_profile
from wbcv.inference.ensemble import WbcEnsembleNet
from wbcv.inference.ood import METHOD as OOD_METHOD
from wbcv.inference.ood import OOD_FILE, FeatureDensity
from wbcv.inference.res2net import Res2NetConfig, fold_batchnorm
from wbcv.inference.wbc_gate import GATE_FILE, WbcGate
from wbcv.inference.wbc_gate import METHOD as GATE_METHOD

ARTIFACT_FORMAT: Final[str] = "wbcv-model/1"
CARD_FILE: Final[str] = "model.json"
WEIGHTS_FILE: Final[str] = "weights.pt"
ARCHITECTURE_FAMILY: Final[str] = "res2net-ova3"

#: Environment variable that overrides where bundled models are looked up.
MODELS_DIR_ENV: Final[str] = "WBCV_MODELS_DIR"
#: File in the models directory naming the default model.
DEFAULT_MODEL_FILE: Final[str] = "DEFAULT"


@dataclass(frozen=True)
class InputSpec:
    """How a decoded cell image becomes the network's input."""

    size: int = 64
    mean: tuple[float, float, float] = (128.0, 128.0, 128.0)
    std: tuple[float, float, float] = (64.0, 64.0, 64.0)
    crop: float = 1.0  # central fraction of the image kept before resizing (see wbcv.inference.decode)
    framing: str = "image"  # "image" or "cell" (wbcv.inference.framing)
    cell_fraction: float = 0.7  # cell framing: share of the input's side the cell's diameter fills
    # cell framing: Reinhard target (lαβ mean and std) of the pixels around the cell; None: no normalisation
    stain_mean: tuple[float, float, float] | None = None
    stain_std: tuple[float, float, float] | None = None
    # image framing: run the cell locator on each image only to refuse those without a white cell
    # (``no_cell_found``: blank, red cells only, out of focus); cell framing always locates
    locate_check: bool = False
    # image framing: the training library's median cell diameter (share of the short side), overall
    # and per class, and background OD per channel (``AcquisitionReference.to_list``); set: each
    # sample's magnification and light are corrected to it (wbcv.inference.acquisition)
    acquisition_reference: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.framing not in ("image", "cell"):
            raise ValueError(f"input framing must be 'image' or 'cell', got {self.framing!r}")
        if not 0.05 <= self.cell_fraction <= 1.0:
            raise ValueError(f"input cell_fraction must lie in [0.05, 1], got {self.cell_fraction}")
        if not 0.1 <= self.crop <= 1.0:
            raise ValueError(f"input crop must lie in [0.1, 1], got {self.crop}")
        if not 16 <= self.size <= 512:
            raise ValueError(f"input size must lie in [16, 512], got {self.size}")
        if any(s <= 0 for s in self.std):
            raise ValueError("input std values must be > 0")


@dataclass
class LoadedModel:
    """A verified artifact, ready for inference."""

    net: WbcEnsembleNet
    card: dict[str, Any]
    path: Path
    input: InputSpec
    calibration: Calibration
    thresholds: Thresholds
    sha256: str
    ood: FeatureDensity | None = None  # the out-of-distribution score's density (wbcv.inference.ood)
    domain: DomainProfile | None = None  # what the model was qualified on (wbcv.inference.domain)
    gate: WbcGate | None = None  # is it a white cell at all (wbcv.inference.wbc_gate)

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def model_id(self) -> str:
        """Name plus the first 12 hex digits of the weights' sha256: unique and readable."""
        return f"{self.name}@{self.sha256[:12]}"


def build_net(card: dict[str, Any]) -> WbcEnsembleNet:
    arch = card["architecture"]
    spec = InputSpec(**_input_kwargs(card["input"]))
    return WbcEnsembleNet(
        Res2NetConfig.from_dict(arch["backbone"]),
        mean=spec.mean,
        std=spec.std,
        with_softmax_head=bool(arch.get("with_softmax_head", False)),
    )


def _input_kwargs(d: dict[str, Any]) -> dict[str, Any]:
    """InputSpec arguments from a card's ``input``; cards older than cell framing read as image framing."""
    stain = d.get("stain_target")
    return {
        "size": int(d["size"]),
        "mean": tuple(d["mean"]),
        "std": tuple(d["std"]),
        "crop": float(d.get("crop", 1.0)),
        "framing": str(d.get("framing", "image")),
        "cell_fraction": float(d.get("cell_fraction", 0.7)),
        "stain_mean": tuple(stain["mean"]) if stain else None,
        "stain_std": tuple(stain["std"]) if stain else None,
        "locate_check": bool(d.get("locate_check", False)),
        "acquisition_reference": _acquisition_reference(d),
    }


def _acquisition_reference(d: dict[str, Any]) -> tuple[float, ...] | None:
    values = d.get("acquisition_reference")
    if values is None:
        return None
    return tuple(AcquisitionReference.from_list([float(v) for v in values]).to_list())


def input_card(spec: InputSpec) -> dict[str, Any]:
    """The card's ``input`` section: how a decoded image becomes the network's input."""
    card: dict[str, Any] = {"size": spec.size, "mean": list(spec.mean), "std": list(spec.std), "crop": spec.crop}
    if spec.framing != "image":
        card |= {"framing": spec.framing, "cell_fraction": spec.cell_fraction}
    elif spec.locate_check:
        card["locate_check"] = True
    if spec.acquisition_reference is not None:
        card["acquisition_reference"] = list(spec.acquisition_reference)
    if spec.stain_mean is not None and spec.stain_std is not None:
        card["stain_target"] = {
            "space": "lab-ruderman-log10",
            "mean": list(spec.stain_mean),
            "std": list(spec.stain_std),
        }
    return card


def make_card(
    name: str,
    backbone: Res2NetConfig,
    input_spec: InputSpec,
    *,
    calibration: Calibration | None = None,
    thresholds: Thresholds | None = None,
    with_softmax_head: bool = False,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    description: str = "",
) -> dict[str, Any]:
    """A model card without the weights section (``save_artifact`` fills that in)."""
    cal = calibration or Calibration()
    thr = thresholds or Thresholds()
    return {
        "format": ARTIFACT_FORMAT,
        "name": name,
        "description": description,
        "classes": list(CELL_CLASSES),
        "lineages": list(LINEAGES),
        "architecture": {
            "family": ARCHITECTURE_FAMILY,
            "backbone": backbone.to_dict(),
            "with_softmax_head": with_softmax_head,
        },
        "input": input_card(input_spec),
        "calibration": {
            "ova_scale": list(cal.ova_scale),
            "ova_bias": list(cal.ova_bias),
            "lineage_temperature": cal.lineage_temperature,
        },
        "thresholds": {"ova_fire": thr.ova_fire, "min_confidence": thr.min_confidence},
        "training": training or {},
        "metrics": metrics or {},
    }


def save_artifact(net: nn.Module, card: dict[str, Any], out_dir: Path) -> Path:
    """Write weights and card into ``out_dir`` (created); returns the card path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    tmp = weights.with_name(f".{WEIGHTS_FILE}.tmp-{os.getpid()}")
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    torch.save(state, tmp)
    os.replace(tmp, weights)
    full = dict(card)
    full["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256_file(weights), "bytes": weights.stat().st_size}
    card_path = out_dir / CARD_FILE
    atomic_write_bytes(card_path, (json.dumps(full, indent=2, sort_keys=False) + "\n").encode())
    return card_path


def models_dir() -> Path:
    """Where bundled models live: ``$WBCV_MODELS_DIR`` or the repository's ``models/``."""
    env = os.environ.get(MODELS_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


def bundled_models() -> list[str]:
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CARD_FILE).is_file())


def resolve_model_path(spec: str | Path | None) -> Path:
    """A path to an artifact directory (or its model.json), a bundled model's name, or None for
    the default named in ``models/DEFAULT``."""
    if spec is None:
        default_file = models_dir() / DEFAULT_MODEL_FILE
        if not default_file.is_file():
            raise WbcvError(
                f"no default model: {default_file} does not exist; pass --model PATH to a model "
                f"artifact directory (bundled models: {', '.join(bundled_models()) or 'none'})"
            )
        spec = default_file.read_text().strip()
    p = Path(spec)
    if p.name == CARD_FILE:
        p = p.parent
    if p.is_dir():
        return p
    bundled = models_dir() / str(spec)
    if bundled.is_dir():
        return bundled
    raise WbcvError(
        f"unknown model {str(spec)!r}: not an artifact directory and not a bundled model; "
        f"expected a directory holding {CARD_FILE} and {WEIGHTS_FILE}, or one of: "
        f"{', '.join(bundled_models()) or '(no bundled models)'}"
    )


def _require(card: dict[str, Any], key: str, kind: type, where: Path) -> Any:
    if key not in card:
        raise WbcvError(f"{where}: model card has no {key!r} field; expected a {ARTIFACT_FORMAT} card")
    if not isinstance(card[key], kind):
        raise WbcvError(
            f"{where}: model card field {key!r} should be a {kind.__name__}, got {type(card[key]).__name__}"
        )
    return card[key]


def read_card(model_dir: Path) -> dict[str, Any]:
    card_path = model_dir / CARD_FILE
    try:
        text = card_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WbcvError(f"{model_dir}: not a model artifact ({CARD_FILE} is missing)") from None
    except OSError as e:
        raise WbcvError(f"{card_path}: cannot read the model card: {e.strerror}") from None
    try:
        card = json.loads(text)
    except json.JSONDecodeError as e:
        raise WbcvError(f"{card_path}: model card is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(card, dict):
        raise WbcvError(f"{card_path}: model card must be a JSON object")
    fmt = card.get("format")
    if fmt != ARTIFACT_FORMAT:
        raise WbcvError(f"{card_path}: unknown artifact format {fmt!r}; expected {ARTIFACT_FORMAT!r}")
    for key, kind in (
        ("name", str),
        ("classes", list),
        ("architecture", dict),
        ("input", dict),
        ("calibration", dict),
        ("thresholds", dict),
        ("weights", dict),
    ):
        _require(card, key, kind, card_path)
    if card["classes"] != list(CELL_CLASSES):
        raise WbcvError(
            f"{card_path}: model classes {card['classes']} do not match wbcv's classes {list(CELL_CLASSES)}"
        )
    family = card["architecture"].get("family")
    if family != ARCHITECTURE_FAMILY:
        raise WbcvError(f"{card_path}: unknown architecture family {family!r}; expected {ARCHITECTURE_FAMILY!r}")
    return card


def load_artifact(spec: str | Path | None = None, with_domain: bool = True, fold: bool = True) -> LoadedModel:
    """Resolve, verify and load a model artifact for inference (eval mode, BatchNorm folded);
    ``with_domain=False`` leaves its domain profile unread (``wbcv profile`` replacing it);
    ``fold=False`` keeps the BatchNorm layers (``wbcv adapt`` re-estimates and trains them)."""
    model_dir = resolve_model_path(spec)
    card = read_card(model_dir)
    card_path = model_dir / CARD_FILE
    w = card["weights"]
    weights = model_dir / str(w.get("file", WEIGHTS_FILE))
    if not weights.is_file():
        raise WbcvError(f"{model_dir}: weights file {weights.name} is missing")
    size = weights.stat().st_size
    if "bytes" in w and size != w["bytes"]:
        raise WbcvError(
            f"{weights}: weights are {size} bytes but the model card says {w['bytes']}; "
            "the file is truncated or was replaced"
        )
    digest = sha256_file(weights)
    if digest != w.get("sha256"):
        raise WbcvError(
            f"{weights}: sha256 {digest} does not match the model card's {w.get('sha256')}; "
            "the weights were modified or belong to another model"
        )
    try:
        spec_in = InputSpec(**_input_kwargs(card["input"]))
        cal = Calibration(
            ova_scale=tuple(card["calibration"]["ova_scale"]),
            ova_bias=tuple(card["calibration"]["ova_bias"]),
            lineage_temperature=float(card["calibration"]["lineage_temperature"]),
        )
        thr = Thresholds(**{k: float(v) for k, v in card["thresholds"].items()})
        net = build_net(card)
    except (KeyError, TypeError, ValueError) as e:
        raise WbcvError(f"{card_path}: invalid model card: {e}") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise WbcvError(f"{weights}: weights do not fit the card's architecture: {e}") from None
    net.eval()
    if fold:
        fold_batchnorm(net)
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # accepted, missing from torch's overloads
    ood = _load_ood(model_dir, card)
    domain = load_profile(model_dir, card) if with_domain else None
    return LoadedModel(net, card, model_dir, spec_in, cal, thr, digest, ood, domain, _load_gate(model_dir, card))


def _load_ood(model_dir: Path, card: dict[str, Any]) -> FeatureDensity | None:
    """The artifact's feature density, its sha256 checked against the card; None when it has none."""
    path = verified_sidecar(model_dir, card, "ood", OOD_FILE, "out-of-distribution")
    if path is None:
        return None
    try:
        return FeatureDensity.load(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise WbcvError(f"{path}: unreadable out-of-distribution density: {e}") from None


def _load_gate(model_dir: Path, card: dict[str, Any]) -> WbcGate | None:
    """The artifact's white-cell gate, its sha256 checked against the card; None when it has none."""
    path = verified_sidecar(model_dir, card, "wbc_gate", GATE_FILE, "white-cell gate")
    if path is None:
        return None
    try:
        gate = WbcGate.load(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise WbcvError(f"{path}: unreadable white-cell gate: {e}") from None
    dim = card["architecture"]["backbone"]["stage_channels"][-1]
    if gate.weight.shape != (dim,):
        raise WbcvError(f"{path}: the gate weighs {gate.weight.shape[0]} features; the backbone gives {dim}")
    return gate


def save_gate(gate: WbcGate, model_dir: Path, figures: dict[str, Any]) -> dict[str, Any]:
    """Write the gate beside the weights; returns the card's ``wbc_gate`` section (with ``figures``)."""
    path = model_dir / GATE_FILE
    gate.save(str(path))
    digest = sha256_file(path)
    return {"method": GATE_METHOD, "file": GATE_FILE, "sha256": digest, "threshold": gate.threshold, **figures}


def save_ood(density: FeatureDensity, model_dir: Path, figures: dict[str, Any]) -> dict[str, Any]:
    """Write the density beside the weights; returns the card's ``ood`` section (with ``figures``)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / OOD_FILE
    density.save(str(path))
    return {
        "method": OOD_METHOD,
        "file": OOD_FILE,
        "sha256": sha256_file(path),
        "threshold": density.threshold,
        **figures,
    }
