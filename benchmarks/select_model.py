"""Model selection on the PBC validation split only: clean and under the synthetic shift grid.

    python benchmarks/select_model.py --cells ../shared/data/pbc --model A --model B [--json PATH] \
        [--non-wbc red_cell=RAABIN_VAL/red_cell --non-wbc wbc_control=RAABIN_VAL/wbc ...]

For each candidate artifact: balanced accuracy and unclassified rate on the *validation* split of its
own ``split.csv`` (the same split for every model trained with the same seed), clean and under
every shift of ``validation.model_evaluation.STRESS_SHIFTS``, and the mean over the shifts. The
test split and other laboratories' cells are never looked at here: they are reported once, for
the model chosen (``wbcv qualify``). ``--non-wbc KIND=DIR`` adds the unclassified share of each
folder (crops of the *val* split of ``raabin_fields``: ``python -m wbcv.fixtures.field_crops
--split val``), so that the refusal of non-white objects, and of another lab's white cells as a
control, is part of the choice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wbcv.inference.artifact import load_artifact  # noqa: E402
from wbcv.inference.training import read_split  # noqa: E402
from wbcv.validation.model_evaluation import rejection_figures, stress_test  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=Path, default=REPO.parent / "shared" / "data" / "pbc")
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--non-wbc", action="append", default=[], metavar="KIND=DIR")
    args = ap.parse_args()
    report = {}
    for model_dir in args.model:
        model = load_artifact(model_dir)
        figures = stress_test(model, read_split(model_dir, args.cells, "validation"))
        shifted = [r["balanced_accuracy"] for name, r in figures.items() if name != "clean"]
        key = f"{model.model_id} ({model_dir.name})"  # one set of weights may come with different rules
        report[key] = {
            "clean": figures["clean"],
            "mean_balanced_accuracy_under_shifts": round(sum(shifted) / len(shifted), 4),
            "worst_shift": min((r["balanced_accuracy"], name) for name, r in figures.items()),
            "shifts": figures,
        }
        if args.non_wbc:
            folders = {kind: Path(d) for kind, d in (item.split("=", 1) for item in args.non_wbc)}
            report[key]["non_wbc"] = rejection_figures(model, folders)
        print(
            f"{key}: validation clean {figures['clean']['balanced_accuracy']:.4f} "
            f"(unclassified {figures['clean']['unclassified_rate']:.4f}); mean under shifts "
            f"{report[key]['mean_balanced_accuracy_under_shifts']:.4f}",
            flush=True,
        )
        for kind, r in report[key].get("non_wbc", {}).items():
            print(f"  {kind}: {r['unclassified_share']:.3f} unclassified of {r['n']} ({r['reasons']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
