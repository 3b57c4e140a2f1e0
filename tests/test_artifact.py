"""Model artifacts: the loader verifies everything before a model is used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import write_test_artifact
from wbcv.base.errors import WbcvError
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.inference.artifact import CARD_FILE, DEFAULT_MODEL_FILE, WEIGHTS_FILE, load_artifact, resolve_model_path


@pytest.fixture
def artifact(tmp_path: Path, model_dir: Path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(model_dir, dst)
    return dst


def _edit_card(path: Path, **changes: object) -> None:
    card = json.loads((path / CARD_FILE).read_text())
    card.update(changes)
    (path / CARD_FILE).write_text(json.dumps(card))


def test_round_trip_gives_the_same_outputs(tmp_path):
    a = load_artifact(write_test_artifact(tmp_path / "a", seed=3))
    b = load_artifact(write_test_artifact(tmp_path / "b", seed=3))
    x = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(a.net(x).ova, b.net(x).ova, rtol=0, atol=0)
    assert a.sha256 == b.sha256 and a.model_id == f"test-untrained@{a.sha256[:12]}"
    assert a.card["classes"] == list(CELL_CLASSES)


def test_changed_weights_are_refused(artifact):
    w = artifact / WEIGHTS_FILE
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(WbcvError, match=r"sha256 .* does not match the model card"):
        load_artifact(artifact)


def test_truncated_weights_are_refused(artifact):
    w = artifact / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(WbcvError, match="truncated"):
        load_artifact(artifact)


def test_missing_weights_card_or_bad_json_are_refused(artifact, tmp_path):
    (artifact / CARD_FILE).write_text("{not json")
    with pytest.raises(WbcvError, match="not valid JSON"):
        load_artifact(artifact)
    (artifact / CARD_FILE).unlink()
    with pytest.raises(WbcvError, match=r"model\.json is missing"):
        load_artifact(artifact)


def test_unknown_format_or_foreign_classes_are_refused(artifact):
    _edit_card(artifact, format="someone-else/3")
    with pytest.raises(WbcvError, match="unknown artifact format"):
        load_artifact(artifact)
    _edit_card(artifact, format="wbcv-model/1", classes=["cat", "dog"])
    with pytest.raises(WbcvError, match="do not match wbcv's classes"):
        load_artifact(artifact)


def test_card_that_does_not_fit_the_weights_is_refused(artifact):
    card = json.loads((artifact / CARD_FILE).read_text())
    card["architecture"]["backbone"]["stem_channels"] = 32
    (artifact / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(WbcvError, match="do not fit the card's architecture"):
        load_artifact(artifact)


def test_unknown_model_name_lists_what_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("WBCV_MODELS_DIR", str(tmp_path))
    write_test_artifact(tmp_path / "bundled-one")
    with pytest.raises(WbcvError, match=r"unknown model .nope.*bundled-one"):
        resolve_model_path("nope")
    assert resolve_model_path("bundled-one") == tmp_path / "bundled-one"
    with pytest.raises(WbcvError, match="no default model"):
        resolve_model_path(None)
    (tmp_path / DEFAULT_MODEL_FILE).write_text("bundled-one\n")
    assert load_artifact(None).name == "test-untrained"
