"""How often a model leaves objects that are not white cells unclassified (issue 14, target ≥ 95 %).

    python benchmarks/eval_rejection.py --model models/NAME [--split test] [--json PATH]

Material, never trained on: the ``--split`` fields of ``../shared/data/raabin_fields`` (a third
laboratory: smartphone camera, Giemsa). Each labelled box becomes one single-cell image as a
digital-morphology scanner would save it (``wbcv.fixtures.field_crops``), read back through the
model's own decoding and framing (``wbcv.inference.predict.decode_files``). Kinds:
red cells, platelets, and, as the control, the WBC boxes (which should *not* be rejected: the
share classified is reported). Figures: per kind, the number of crops, the share unclassified,
and the reasons.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wbcv.fixtures.field_crops import CONTEXT, field_crops  # noqa: E402
from wbcv.inference.artifact import load_artifact  # noqa: E402
from wbcv.validation.model_evaluation import rejection_figures  # noqa: E402


def evaluate(model_dir: Path, by_kind: dict[str, list[bytes]]) -> dict[str, dict[str, object]]:
    """``rejection_figures`` (the card's definition) over the crops, written to a scratch folder per kind."""
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for kind, blobs in by_kind.items():
            if not blobs:
                continue
            folders[kind] = Path(tmp) / kind
            folders[kind].mkdir()
            for i, data in enumerate(blobs):
                (folders[kind] / f"{kind}-{i:05d}.jpg").write_bytes(data)
        return rejection_figures(load_artifact(model_dir), folders)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, action="append", required=True, help="artifact(s) to compare")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--limit-per-kind", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    by_kind = field_crops(args.split, limit_per_kind=args.limit_per_kind)
    report = {
        "material": f"raabin_fields {args.split} split, crops of side {CONTEXT} x the box, JPEG q90",
        "models": {str(m): evaluate(m, by_kind) for m in args.model},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
