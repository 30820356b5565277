"""Adapters from real public datasets to the project's two layouts.

UCI Diabetes 130 is already one row per encounter, so it becomes a feature folder directly;
MIMIC-III becomes a raw EHR folder that the feature pipeline then reads like any hospital
export; NegEx and MTS-Dialog are small text tasks returned as frames.
"""

from data.sources.mimic3 import import_mimic3
from data.sources.text_tasks import negex_split, read_mts_dialog, read_negex
from data.sources.uci_diabetes import import_uci_diabetes, uci_features

__all__ = [
    "import_mimic3",
    "import_uci_diabetes",
    "negex_split",
    "read_mts_dialog",
    "read_negex",
    "uci_features",
]
