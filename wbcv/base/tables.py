"""The tables and documents of a run: file names and the Parquet contract between the layers.

``wbcv.validation`` and ``wbcv.dashboards`` read an inference run through these names and schemas,
never through the runner's internals (and so without importing torch).
"""

from __future__ import annotations

from typing import Final

import polars as pl

from wbcv.base.taxonomy import CELL_CLASSES, LINEAGES, OUTCOMES

# Inference run (`wbcv infer`)
PREDICTIONS_FILE: Final[str] = "predictions.parquet"
COUNTS_FILE: Final[str] = "counts.parquet"
SKIPPED_FILE: Final[str] = "skipped.parquet"
INPUTS_FILE: Final[str] = "inputs.parquet"
#: The tables every inference run writes.
RUN_TABLES: Final[tuple[str, ...]] = (PREDICTIONS_FILE, COUNTS_FILE, SKIPPED_FILE, INPUTS_FILE)

#: Per-cell predictions, one row per decoded cell (skipped files are in SKIPPED_SCHEMA).
PREDICTION_SCHEMA: Final[dict[str, pl.DataType]] = {
    "sample_id": pl.String(),
    "cell_path": pl.String(),  # relative to the batch directory, POSIX separators
    "sha256": pl.String(),  # content hash of the image file
    "bytes": pl.Int64(),
    "source_mode": pl.String(),  # Pillow mode as stored: RGB, L, RGBA, I;16 ...
    "source_width": pl.Int32(),
    "source_height": pl.Int32(),
    # the located cell's equivalent diameter (cell-framing models; µm only with the manifest's um_per_px)
    "cell_diameter_px": pl.Float32(),
    "cell_diameter_um": pl.Float32(),
    "expert_label": pl.String(),  # from cell_labels.csv, when given
    # the sample's magnification correction (wbcv.inference.acquisition): the factor its cells were
    # scaled by to the training size; null: the model corrects nothing
    "acquisition_scale": pl.Float32(),
    "predicted_class": pl.Enum(list(OUTCOMES)),
    "unclassified": pl.Boolean(),
    "abstain_reason": pl.String(),  # null when classified; see wbcv.inference.combine
    "confidence": pl.Float32(),  # max combined probability
    **{f"p_{c}": pl.Float32() for c in CELL_CLASSES},
    **{f"ova_{c}": pl.Float32() for c in CELL_CLASSES},
    **{f"lineage_{g}": pl.Float32() for g in LINEAGES},
    "model_id": pl.String(),
}
#: Files and folders that were given but not classified, each with its reason.
SKIPPED_SCHEMA: Final[dict[str, pl.DataType]] = {
    "level": pl.Enum(["cell", "folder"]),
    "sample_id": pl.String(),
    "path": pl.String(),
    "sha256": pl.String(),
    "bytes": pl.Int64(),
    "reason": pl.String(),
}
#: Manifest fields carried into the counts table, so validation needs nothing but the run.
SAMPLE_FIELDS: Final[dict[str, pl.DataType]] = {
    "imaged_volume_ul": pl.Float64(),
    "calibration_factor": pl.Float64(),
    "um_per_px": pl.Float64(),  # the scanner's pixel size, when the manifest gives it
    "scanner": pl.String(),
    "date": pl.String(),
    "notes": pl.String(),
    # the case-mix stratum (plan.strata); added 2026-11-30: counts of runs made before have no such column
    "stratum": pl.String(),
}
COUNT_COLUMNS: Final[tuple[str, ...]] = (
    "sample_id",
    "slide_dir",
    "n_files",
    "n_skipped",
    "n_cells",
    "n_classified",
    "n_unclassified",
    *(f"k_{c}" for c in CELL_CLASSES),
    *(f"fraction_{c}" for c in CELL_CLASSES),
    "unclassified_fraction",
    *SAMPLE_FIELDS,
    "model_id",
    "domain_score",  # Float64: the slide's domain score (wbcv.inference.domain); null when not checked
)

# Results run (`wbcv import-results`): an analyzer's export in place of an inference run. It has
# COUNTS_FILE with COUNT_COLUMNS (slide_dir and the manifest fields null; n_files = cells the export
# reports, n_skipped = cells of excluded or unmapped classes, n_cells = n_files - n_skipped,
# model_id = the analyzer's label), and:
OBSERVATIONS_FILE: Final[str] = "observations.parquet"
IMPORT_EXCLUDED_FILE: Final[str] = "import_excluded.parquet"
CELLS_FILE: Final[str] = "cells.parquet"
#: Every per-class value read from the export, with where it was and what it was mapped to.
OBSERVATION_SCHEMA: Final[dict[str, pl.DataType]] = {
    "sample_id": pl.String(),
    "location": pl.String(),  # "row 12", "message 3 (line 40), OBX 7", "record 14 (R, line 14)"
    "export_class": pl.String(),  # the class name (or observation code) as the export wrote it
    "kind": pl.Enum(["count", "percent", "total"]),
    "value": pl.Float64(),
    "target": pl.String(),  # a CELL_CLASSES entry, 'unclassified', 'excluded', 'unmapped' or 'total'
}
#: What the import left out, each with its reason: unmapped and excluded classes (with their cells),
#: rows or segments that could not be used, samples excluded as a whole (export_class null).
IMPORT_EXCLUDED_SCHEMA: Final[dict[str, pl.DataType]] = {
    "sample_id": pl.String(),
    "location": pl.String(),
    "export_class": pl.String(),
    "n_cells": pl.Int64(),
    "reason": pl.String(),
}
#: Per-cell input only: one row per cell of the export.
CELL_SCHEMA: Final[dict[str, pl.DataType]] = {
    "sample_id": pl.String(),
    "cell_id": pl.String(),  # the cell id or image path as exported
    "source_row": pl.Int64(),
    "preclassified": pl.String(),  # the analyzer's class, as exported
    "verified": pl.String(),  # the technologist's class, as exported (null: not verified)
    "preclassified_target": pl.String(),  # mapped: a class, 'unclassified', 'excluded' or 'unmapped'
    "verified_target": pl.String(),
    "counted_target": pl.String(),  # the one counted (verified when the table has verified classes)
}

# Comparison run (`wbcv compare`)
COMPARISON_FILE: Final[str] = "comparison.parquet"
EXCLUDED_FILE: Final[str] = "excluded.parquet"
REFERENCE_FILE: Final[str] = "reference.parquet"
STATISTICS_FILE: Final[str] = "statistics.json"
VERDICT_FILE: Final[str] = "verdict.json"

# Smear-field stage (`wbcv segment`): written into the batch folder it makes, beside the manifest
FIELDS_FILE: Final[str] = "fields.parquet"
DETECTIONS_FILE: Final[str] = "detections.parquet"
FIELD_SAMPLES_FILE: Final[str] = "field_samples.parquet"
DETECTION_KINDS: Final[tuple[str, ...]] = ("wbc", "rbc", "platelet")

#: One row per field file given (analysed or skipped). Counts are null for a skipped field.
FIELDS_SCHEMA: Final[dict[str, pl.DataType]] = {
    "sample_id": pl.String(),
    "field_path": pl.String(),  # relative to FIELDS_DIR, POSIX separators
    "sha256": pl.String(),  # null when the file could not be read
    "bytes": pl.Int64(),
    "width": pl.Int32(),
    "height": pl.Int32(),
    "wbc": pl.Int32(),  # white cells cropped into the batch
    "wbc_at_edge": pl.Int32(),  # of all white cells found, those whose box touches the field's border
    "wbc_dropped_at_edge": pl.Int32(),  # edge white cells not cropped (--drop-edge-wbc)
    "rbc": pl.Int32(),
    "platelets": pl.Int32(),
    "skipped_reason": pl.String(),  # null when analysed; a field without any white cell says so here
}
#: One row per sample of the manifest: its fields and what was counted in those analysed.
FIELD_SAMPLES_SCHEMA: Final[dict[str, pl.DataType]] = {
    "sample_id": pl.String(),
    "fields_given": pl.Int32(),
    "fields_analysed": pl.Int32(),  # fields without a skipped reason, plus those without a white cell
    "fields_skipped": pl.Int32(),  # not analysed (reason in fields.parquet)
    "wbc_cropped": pl.Int32(),
    "rbc_counted": pl.Int32(),  # sum over the analysed fields
    "platelets_counted": pl.Int32(),
    # added 2026-12: the analysed fields' area (um_per_px^2 x pixels, or field_area_um2 each; null
    # without either), the blood volume imaged (area x smear_thickness_um; null without it) and the
    # concentrations that follow (null when the volume is)
    "analysed_area_um2": pl.Float64(),
    "imaged_blood_ul": pl.Float64(),
    "rbc_10e6_per_ul": pl.Float64(),
    "plt_10e3_per_ul": pl.Float64(),
}
#: Columns of FIELD_SAMPLES_SCHEMA that ``wbcv infer`` appends to COUNTS_FILE (after COUNT_COLUMNS)
#: when the batch holds FIELD_SAMPLES_FILE (a batch made by ``wbcv segment``).
FIELD_COUNT_COLUMNS: Final[tuple[str, ...]] = (
    "fields_analysed",
    "rbc_counted",
    "platelets_counted",
    "imaged_blood_ul",
    "rbc_10e6_per_ul",
    "plt_10e3_per_ul",
)
#: The counts column holding each smear measurand's predicted value (``validation.measurands``).
SMEAR_CONCENTRATIONS: Final[dict[str, str]] = {"RBC": "rbc_10e6_per_ul", "PLT": "plt_10e3_per_ul"}
#: One row per object found in an analysed field.
DETECTIONS_SCHEMA: Final[dict[str, pl.DataType]] = {
    "sample_id": pl.String(),
    "field_path": pl.String(),
    "kind": pl.Enum(list(DETECTION_KINDS)),
    "x0": pl.Int32(),  # box in field pixels, half-open: x0 <= x < x1, y0 <= y < y1
    "y0": pl.Int32(),
    "x1": pl.Int32(),
    "y1": pl.Int32(),
    "score": pl.Float32(),  # ranking score in [0, 1], not a probability
    "touches_edge": pl.Boolean(),
    "crop_path": pl.String(),  # the white cell's crop, relative to the batch folder; null otherwise
}
