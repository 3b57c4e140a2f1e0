"""Draw one Raabin val field with the boxes of the final method (green: white cell, yellow: red cell,
cyan: platelet) and the labelled white cell (thin red) into docs/field_boxes.png (a generated figure).

    python benchmarks/draw_fields.py
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import simplejpeg  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from wbcv.inference.fields import analyse_field  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "raabin_fields"
COLOURS = {"wbc": (0, 200, 0), "rbc": (230, 200, 0), "platelet": (0, 200, 230)}


def main() -> None:
    rows = [r for r in csv.DictReader((DATA / "manifest.csv").open()) if r["split"] == "val"]
    row = rows[0]
    rgb = simplejpeg.decode_jpeg((DATA / row["path"]).read_bytes())
    found = analyse_field(rgb)
    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    h, w = rgb.shape[:2]
    for line in (DATA / row["labels"]).read_text().splitlines():
        c, x, y, bw, bh = (float(v) for v in line.split())
        if int(c) == 0:
            d.rectangle([(x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h], outline=(220, 0, 0))
    for det in found.detections:
        d.rectangle([det.x0, det.y0, det.x1 - 1, det.y1 - 1], outline=COLOURS[det.kind], width=3)
    out = REPO / "docs" / "field_boxes.png"
    im.resize((w * 3 // 4, h * 3 // 4)).quantize(colors=96).save(out, optimize=True)
    print(f"{out}: {out.stat().st_size:,} bytes; field {row['path']}")


if __name__ == "__main__":
    main()
