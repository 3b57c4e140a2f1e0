"""The cell taxonomy: the one source of truth for class names, lineages and outcomes.

Every other module (the model heads, the combination rule, counts, fixtures, reports) imports
these tuples instead of spelling class names itself, so the order of the OVA heads, the columns
of the count tables and the rows of a confusion matrix always agree.
"""

from __future__ import annotations

from typing import Final

#: The five mature white-blood-cell classes, in the order of the five one-vs-all heads.
CELL_CLASSES: Final[tuple[str, ...]] = (
    "neutrophil",
    "lymphocyte",
    "monocyte",
    "eosinophil",
    "basophil",
)

#: The lineage groups of the 3-class head, the split a 3-part-differential analyzer reports.
LINEAGES: Final[tuple[str, ...]] = ("granulocyte", "lymphocyte", "monocyte")

#: Which lineage each class belongs to.
LINEAGE_OF_CLASS: Final[dict[str, str]] = {
    "neutrophil": "granulocyte",
    "eosinophil": "granulocyte",
    "basophil": "granulocyte",
    "lymphocyte": "lymphocyte",
    "monocyte": "monocyte",
}

#: The outcome for a cell the ensemble will not commit to; counted apart, never folded into a class.
UNCLASSIFIED: Final[str] = "unclassified"

#: Every value the predicted-class column can hold.
OUTCOMES: Final[tuple[str, ...]] = (*CELL_CLASSES, UNCLASSIFIED)

#: Index of each class's lineage in LINEAGES, aligned with CELL_CLASSES.
LINEAGE_INDEX_OF_CLASS: Final[tuple[int, ...]] = tuple(LINEAGES.index(LINEAGE_OF_CLASS[c]) for c in CELL_CLASSES)
