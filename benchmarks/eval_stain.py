"""The stain normaliser (inference/stain.py) on PBC crops: its target statistics and what it removes.

    python benchmarks/eval_stain.py --target          # compute PBC_TARGET from the training split
    python benchmarks/eval_stain.py [--n 300] [--json benchmarks/results/stain_eval.json]

Every image goes through the pipeline's order: locate_cell, crop_to_cell(96, 0.7), then
normalise_stain over the cell disc (``disc_mask(96, 0.7)``).

* ``--target``: the mean per-image lαβ statistics of the cell discs of the bundled model's PBC
  *training* split (models/<default>/split.csv): the values of ``PBC_TARGET``.
* **Colour shifts** (PBC *test* split sample): each crop is shifted in hue (±20°, YIQ rotation),
  saturation (x0.6, x1.4), given a yellow cast (blue x0.8, as a rapid stain's background) and a
  gamma of 0.8; the mean absolute RGB difference over the disc between normalise(shifted) and
  normalise(original) is compared with the difference between the un-normalised crops.
* **Idempotence**: normalise(normalise(x)) against normalise(x).
* **Class colour**: nearest-class-mean accuracy (5 classes) of the disc's mean lαβ colour, class
  means from train crops, accuracy on test crops, before and after normalisation, for statistics
  over the cell disc and over the ring outside it (background and red cells, which carry no class).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wbcv.inference.locate import crop_to_cell, locate_cells  # noqa: E402
from wbcv.inference.stain import PBC_TARGET, disc_mask, normalise_stain, stain_stats, stain_target  # noqa: E402

SIZE, FRACTION = 96, 0.7


def split_rows(split: str) -> list[dict[str, str]]:
    model = (REPO / "models" / "DEFAULT").read_text().strip()
    rows = list(csv.DictReader((REPO / "models" / model / "split.csv").open()))
    return [r for r in rows if r["split"] == split]


def crops(root: Path, rows: list[dict[str, str]]) -> tuple[np.ndarray, list[str]]:
    images = []
    for r in rows:
        with Image.open(root / r["path"]) as im:
            images.append(np.asarray(im.convert("RGB")))
    out, labels = [], []
    for im, loc, r in zip(images, locate_cells(images), rows, strict=True):
        if loc.found:
            out.append(crop_to_cell(im, loc, SIZE, FRACTION).pixels)
            labels.append(r["label"])
    return np.stack(out), labels


def yiq_hue(batch: np.ndarray, degrees: float, saturation: float = 1.0) -> np.ndarray:
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    t = np.radians(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    rot = rot @ np.diag([1, saturation, saturation])
    m = np.linalg.inv(yiq) @ rot @ yiq
    return np.clip(np.rint(batch.astype(np.float64) @ m.T), 0, 255).astype(np.uint8)


def mad(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16))[:, mask].mean())


def nearest_mean_accuracy(train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str]) -> float:
    classes = sorted(set(train_y))
    ty = np.asarray(train_y)
    means = np.stack([train_x[ty == c].mean(axis=0) for c in classes])
    sd = train_x.std(axis=0) + 1e-9
    d = (((test_x[:, None, :] - means[None]) / sd) ** 2).sum(axis=2)
    pred = np.asarray(classes)[d.argmin(axis=1)]
    return float(np.mean(pred == np.asarray(test_y)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pbc")
    ap.add_argument("--target", action="store_true", help="compute the target statistics from the training split")
    ap.add_argument("--n", type=int, default=300, help="test (and train) crops in the evaluation sample")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "stain_eval.json")
    args = ap.parse_args()
    disc = disc_mask(SIZE, FRACTION)

    if args.target:
        rows = split_rows("train")
        batch, _ = crops(args.data, rows)
        t = stain_target(list(batch), [disc] * len(batch))
        print(f"{len(batch)} of {len(rows)} training images located")
        mean, std = tuple(round(v, 4) for v in t.mean), tuple(round(v, 4) for v in t.std)
        print(f"PBC_TARGET = StainStats(mean={mean}, std={std})")
        return

    rng = np.random.default_rng(0)
    test_rows = split_rows("test")
    train_rows = split_rows("train")
    test_pick = sorted(rng.choice(len(test_rows), args.n, replace=False))
    train_pick = sorted(rng.choice(len(train_rows), args.n, replace=False))
    test, test_y = crops(args.data, [test_rows[i] for i in test_pick])
    train, train_y = crops(args.data, [train_rows[i] for i in train_pick])

    base = normalise_stain(test, disc)
    shifts = {
        "hue +20": yiq_hue(test, 20),
        "hue -20": yiq_hue(test, -20),
        "saturation x0.6": yiq_hue(test, 0, 0.6),
        "saturation x1.4": yiq_hue(test, 0, 1.4),
        "yellow cast (blue x0.8)": np.clip(np.rint(test * np.array([1.0, 1.0, 0.8])), 0, 255).astype(np.uint8),
        "gamma 0.8": np.clip(np.rint(255 * (test / 255.0) ** 0.8), 0, 255).astype(np.uint8),
    }
    shift_result = {}
    for name, shifted in shifts.items():
        shift_result[name] = {
            "mean_abs_rgb_diff_before": round(mad(shifted, test, disc), 2),
            "mean_abs_rgb_diff_after": round(mad(normalise_stain(shifted, disc), base, disc), 2),
        }
    twice = normalise_stain(base, disc)
    ring = ~disc_mask(SIZE, 0.85)

    def mean_colour(batch: np.ndarray) -> np.ndarray:
        return np.asarray([s.mean for s in stain_stats(batch, disc)])

    accuracy = {
        "raw": nearest_mean_accuracy(mean_colour(train), train_y, mean_colour(test), test_y),
        "normalised_on_cell_disc": nearest_mean_accuracy(
            mean_colour(normalise_stain(train, disc)), train_y, mean_colour(base), test_y
        ),
        "normalised_on_outside_ring": nearest_mean_accuracy(
            mean_colour(normalise_stain(train, ring)), train_y, mean_colour(normalise_stain(test, ring)), test_y
        ),
    }
    result = {
        "crops": {"test": len(test), "train": len(train), "size": SIZE, "cell_fraction": FRACTION},
        "target": PBC_TARGET.to_dict(),
        "colour_shifts": shift_result,
        "idempotence_mean_abs_rgb_diff": round(mad(twice, base, disc), 3),
        "idempotence_max_abs_rgb_diff": int(np.abs(twice.astype(np.int16) - base.astype(np.int16))[:, disc].max()),
        "class_from_mean_cell_colour_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
    }
    print(json.dumps(result, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
