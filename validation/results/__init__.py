"""Importing an analyzer's exported results in place of an inference run (`wbcv import-results`).

A commercial digital morphology analyzer (CellaVision, Sysmex DI-60, Mindray MC-80, Scopio ...)
exports its differential as a table or as laboratory messages. One reader per format turns the
export into *observations* (per sample: an export class name, a count or a percentage, where it
was in the file); ``mapping`` maps each class name to a wbcv class, to ``unclassified`` or to
``excluded`` with a reason; ``counting`` makes the per-sample counts table of an inference run
(``wbcv.base.tables.COUNT_COLUMNS``) from them; ``run`` seals it as a results run.

Modules: ``mapping`` (class names and observation codes), ``counting`` (observations -> counts),
``textfile`` (size-capped reading shared by the readers), ``differential_csv`` (per-sample table),
``cell_table`` (per-cell table), ``hl7_oru`` (HL7 v2 ORU^R01, through python-hl7), ``astm_records``
(ASTM E1394 / LIS2-A2), ``run`` (the sealed results run).
"""
