"""How well the cell locator (inference/locate.py) finds the white cell, on three laboratories' images.

    python benchmarks/eval_locate.py [--data ../shared/data] [--pbc 400] [--sheet /tmp/locate_sheet.png]
                                     [--json benchmarks/results/locate_eval.json]

* **Tecom** (second lab, expert masks; read only, nothing was tuned on it): share of the 300
  images in which a cell is found, and the intersection-over-union of the located nucleus and
  whole cell (nucleus + cytoplasm) with the expert masks, at the images' own resolution. An image
  in which no cell is found counts with IoU 0 in the means over all 300.
* **PBC** (the training lab, no masks): on a fixed random sample, the share found, how far the
  located centre lies from the image centre (the scanner centres the cell), the cell diameter;
  and scale invariance: the same images reduced to 0.5x and enlarged to 1.5x must give a diameter
  0.5x and 1.5x as large (ratio of the ratios reported).
* **Raabin-WBC fields** (third lab, WBC boxes only): crops around each single WBC of the *val and
  test* splits (the train split's crops were used to choose the constants), side 1.3-2.6x the box,
  centre jittered; IoU of the located cell's bounding box with the WBC box.

Writes the figures as JSON and, with --sheet, a contact sheet of PBC and Tecom outlines.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wbcv.inference.locate import LocatedCell, locate_cells  # noqa: E402


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iy = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ix = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iy * ix
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(v.mean()), 4),
        "median": round(float(np.median(v)), 4),
        "p10": round(float(np.percentile(v, 10)), 4),
        "p90": round(float(np.percentile(v, 90)), 4),
    }


def eval_tecom(root: Path) -> tuple[dict, list[tuple[np.ndarray, LocatedCell]]]:
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    images = [load_rgb(root / r["path"]) for r in rows]
    t0 = time.perf_counter()
    located = locate_cells(images)
    seconds = time.perf_counter() - t0
    nuc_iou, cell_iou, by_class = [], [], {}
    reasons: dict[str, int] = {}
    for r, im, loc in zip(rows, images, located, strict=True):
        with Image.open(root / r["mask"]) as m:
            mask = np.asarray(m.convert("L"))
        truth_cell, truth_nuc = mask > 64, mask > 192
        if loc.found:
            ni, ci = iou(loc.nucleus_mask_at(im.shape[:2]), truth_nuc), iou(loc.cell_mask_at(im.shape[:2]), truth_cell)
        else:
            ni = ci = 0.0
            key = loc.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        nuc_iou.append(ni)
        cell_iou.append(ci)
        by_class.setdefault(r["label"], []).append((ni, ci))
    found = [loc.found for loc in located]
    out = {
        "images": len(rows),
        "found_share": round(float(np.mean(found)), 4),
        "not_found_reasons": reasons,
        "nucleus_iou": summary(nuc_iou),
        "cell_iou": summary(cell_iou),
        "nucleus_iou_found_only": summary([v for v, f in zip(nuc_iou, found, strict=True) if f] or [0.0]),
        "cell_iou_found_only": summary([v for v, f in zip(cell_iou, found, strict=True) if f] or [0.0]),
        "per_class_mean_iou": {
            k: {
                "n": len(v),
                "nucleus": round(float(np.mean([a for a, _ in v])), 4),
                "cell": round(float(np.mean([b for _, b in v])), 4),
            }
            for k, v in sorted(by_class.items())
        },
        "locate_ms_per_image": round(seconds / len(rows) * 1e3, 3),
    }
    return out, list(zip(images, located, strict=True))


def pbc_sample(root: Path, n: int, seed: int) -> list[np.ndarray]:
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return [load_rgb(root / rows[i]["path"]) for i in sorted(pick)]


def eval_pbc(images: list[np.ndarray]) -> tuple[dict, list[LocatedCell]]:
    located = locate_cells(images)
    found = [loc for loc in located if loc.found]
    off = []
    for im, loc in zip(images, located, strict=True):
        if loc.found:
            h, w = im.shape[:2]
            off.append(float(np.hypot(loc.centre[0] - (h - 1) / 2, loc.centre[1] - (w - 1) / 2)) / loc.diameter_px)
    reasons: dict[str, int] = {}
    for loc in located:
        if not loc.found:
            key = loc.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    # scale invariance: the same images at 0.5x and 1.5x
    scale = {}
    for factor in (0.5, 1.5):
        resized = [
            np.asarray(
                Image.fromarray(im).resize(
                    (round(im.shape[1] * factor), round(im.shape[0] * factor)), Image.Resampling.BILINEAR
                )
            )
            for im in images[:100]
        ]
        again = locate_cells(resized)
        ratios = [
            b.diameter_px / (a.diameter_px * factor)
            for a, b in zip(located[:100], again, strict=True)
            if a.found and b.found
        ]
        scale[f"x{factor}"] = {
            "images": len(resized),
            "found_share": round(float(np.mean([b.found for b in again])), 4),
            "diameter_ratio_over_factor": summary(ratios),
            "share_within_10pct": round(float(np.mean(np.abs(np.asarray(ratios) - 1) <= 0.1)), 4),
        }
    out = {
        "images": len(images),
        "found_share": round(len(found) / len(images), 4),
        "not_found_reasons": reasons,
        "centre_offset_over_diameter": summary(off),
        "share_centre_within_quarter_diameter": round(float(np.mean(np.asarray(off) <= 0.25)), 4),
        "diameter_px": summary([loc.diameter_px for loc in found]),
        "scale_invariance": scale,
    }
    return out, located


def raabin_crops(root: Path, splits: tuple[str, ...], seed: int) -> list[tuple[np.ndarray, tuple[float, ...]]]:
    rows = [r for r in csv.DictReader((root / "manifest.csv").open()) if r["split"] in splits and r["wbc"] == "1"]
    rng = np.random.default_rng(seed)
    out = []
    for r in rows:
        im = load_rgb(root / r["path"])
        hh, ww = im.shape[:2]
        box = None
        for line in (root / r["labels"]).read_text().split("\n"):
            parts = line.split()
            if parts and parts[0] == "0":
                box = [float(p) for p in parts[1:5]]
        if box is None:
            continue
        x, y, bw, bh = box
        side = min(max(bw * ww, bh * hh) * rng.uniform(1.3, 2.6), hh, ww)
        cx = x * ww + rng.uniform(-0.08, 0.08) * side
        cy = y * hh + rng.uniform(-0.08, 0.08) * side
        s = round(side)
        x0 = min(max(round(cx - side / 2), 0), ww - s)
        y0 = min(max(round(cy - side / 2), 0), hh - s)
        truth = ((y - bh / 2) * hh - y0, (x - bw / 2) * ww - x0, (y + bh / 2) * hh - y0, (x + bw / 2) * ww - x0)
        out.append((im[y0 : y0 + s, x0 : x0 + s], truth))
    return out


def eval_raabin(root: Path) -> dict:
    crops = raabin_crops(root, ("val", "test"), seed=0)
    located = locate_cells([c for c, _ in crops])
    ious = [box_iou(loc.bbox, truth) if loc.found else 0.0 for loc, (_, truth) in zip(located, crops, strict=True)]
    return {
        "crops": len(crops),
        "splits": ["val", "test"],
        "found_share": round(float(np.mean([loc.found for loc in located])), 4),
        "box_iou": summary(ious),
        "share_box_iou_above_0.5": round(float(np.mean(np.asarray(ious) > 0.5)), 4),
    }


def outline_tile(im: np.ndarray, loc: LocatedCell, size: int = 160) -> Image.Image:
    tile = Image.fromarray(im).convert("RGB")
    sy, sx = size / im.shape[0], size / im.shape[1]
    tile = tile.resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(tile)
    if loc.found:
        masks = ((loc.cell_mask_at((size, size)), (0, 200, 0)), (loc.nucleus_mask_at((size, size)), (0, 0, 255)))
        for mask, colour in masks:
            edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
            arr = np.asarray(tile).copy()
            arr[edge] = colour
            tile = Image.fromarray(arr)
            draw = ImageDraw.Draw(tile)
        cy, cx = loc.centre
        draw.ellipse([cx * sx - 2, cy * sy - 2, cx * sx + 2, cy * sy + 2], fill=(255, 0, 0))
        draw.text((3, size - 12), f"d={loc.diameter_px:.0f}px", fill=(0, 0, 0))
    else:
        draw.text((3, size - 12), loc.reason[:28], fill=(200, 0, 0))
    return tile


def contact_sheet(pairs: list[tuple[np.ndarray, LocatedCell]], path: Path, cols: int = 8) -> None:
    tiles = [outline_tile(im, loc) for im, loc in pairs]
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * 160, rows * 160), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * 160, (i // cols) * 160))
    sheet.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--pbc", type=int, default=400, help="PBC images in the sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sheet", type=Path, help="write a contact sheet PNG of PBC and Tecom outlines here")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "locate_eval.json")
    args = ap.parse_args()

    tecom, tecom_pairs = eval_tecom(args.data / "tecom")
    pbc_images = pbc_sample(args.data / "pbc", args.pbc, args.seed)
    pbc, pbc_located = eval_pbc(pbc_images)
    raabin = eval_raabin(args.data / "raabin_fields")
    result = {
        "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "tecom": tecom,
        "pbc": pbc,
        "raabin_val_test_crops": raabin,
    }
    print(json.dumps(result, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.sheet:
        step = max(1, len(pbc_images) // 24)  # the sample is in class order: every step-th spans the classes
        pbc_pairs = list(zip(pbc_images[::step], pbc_located[::step], strict=True))[:24]
        contact_sheet(pbc_pairs + tecom_pairs[::13][:24], args.sheet)
        print(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
