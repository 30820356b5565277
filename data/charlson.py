"""Charlson comorbidity index from ICD-9-CM and ICD-10 codes (Quan et al., Med Care 2005).

Codes are matched by prefix without the dot ("I509" matches I50). Original Charlson weights,
with the usual hierarchy: the severe form of diabetes, liver disease and cancer replaces the
mild one. Matching runs once per distinct code, not per row, so millions of diagnosis rows
cost only a dictionary lookup each.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd


def _expand(spec: str) -> tuple[str, ...]:
    """'I60-I69 I21 K70.0-K70.3' -> prefixes; ranges differ only in their last digit(s)."""
    out: list[str] = []
    for item in spec.split():
        item = item.replace(".", "")
        if "-" not in item:
            out.append(item)
            continue
        lo, hi = item.split("-")
        stem = len(lo) - len(lo.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
        width = len(lo) - stem
        start, end = int(lo[stem:]), int(hi[stem:])
        out.extend(f"{lo[:stem]}{n:0{width}d}" for n in range(start, end + 1))
    return tuple(out)


# category: (weight, ICD-10 prefixes, ICD-9 prefixes)
_CATEGORIES: dict[str, tuple[int, str, str]] = {
    "myocardial_infarction": (1, "I21 I22 I25.2", "410 412"),
    "congestive_heart_failure": (
        1,
        "I09.9 I11.0 I13.0 I13.2 I25.5 I42.0 I42.5-I42.9 I43 I50 P29.0",
        "398.91 402.01 402.11 402.91 404.01 404.03 404.11 404.13 404.91 404.93 425.4-425.9 428",
    ),
    "peripheral_vascular": (
        1,
        "I70 I71 I73.1 I73.8 I73.9 I77.1 I79.0 I79.2 K55.1 K55.8 K55.9 Z95.8 Z95.9",
        "093.0 437.3 440 441 443.1-443.9 447.1 557.1 557.9 V43.4",
    ),
    "cerebrovascular": (1, "G45 G46 H34.0 I60-I69", "362.34 430-438"),
    "dementia": (1, "F00-F03 F05.1 G30 G31.1", "290 294.1 331.2"),
    "chronic_pulmonary": (
        1,
        "I27.8 I27.9 J40-J47 J60-J67 J68.4 J70.1 J70.3",
        "416.8 416.9 490-505 506.4 508.1 508.8",
    ),
    "rheumatic": (
        1,
        "M05 M06 M31.5 M32-M34 M35.1 M35.3 M36.0",
        "446.5 710.0-710.4 714.0-714.2 714.8 725",
    ),
    "peptic_ulcer": (1, "K25-K28", "531-534"),
    "mild_liver": (
        1,
        "B18 K70.0-K70.3 K70.9 K71.3-K71.5 K71.7 K73 K74 K76.0 K76.2-K76.4 K76.8 K76.9 Z94.4",
        "070.22 070.23 070.32 070.33 070.44 070.54 070.6 070.9 570 571 573.3 573.4 573.8 573.9 V42.7",
    ),
    "diabetes": (
        1,
        "E10.0 E10.1 E10.6 E10.8 E10.9 E11.0 E11.1 E11.6 E11.8 E11.9 E13.0 E13.1 E13.6 E13.8 E13.9",
        "250.0-250.3 250.8 250.9",
    ),
    "diabetes_complicated": (
        2,
        "E10.2-E10.5 E10.7 E11.2-E11.5 E11.7 E13.2-E13.5 E13.7",
        "250.4-250.7",
    ),
    "hemiplegia": (
        2,
        "G04.1 G11.4 G80.1 G80.2 G81 G82 G83.0-G83.4 G83.9",
        "334.1 342 343 344.0-344.6 344.9",
    ),
    "renal": (
        2,
        "I12.0 I13.1 N03.2-N03.7 N05.2-N05.7 N18 N19 N25.0 Z49.0-Z49.2 Z94.0 Z99.2",
        "403.01 403.11 403.91 404.02 404.03 404.12 404.13 404.92 404.93 582 583.0-583.7 585 586 "
        "588.0 V42.0 V45.1 V56",
    ),
    "malignancy": (
        2,
        "C00-C26 C30-C34 C37-C41 C43 C45-C58 C60-C76 C81-C85 C88 C90-C97",
        "140-172 174-195 200-208 238.6",
    ),
    "severe_liver": (
        3,
        "I85.0 I85.9 I86.4 I98.2 K70.4 K71.1 K72.1 K72.9 K76.5 K76.6 K76.7",
        "456.0-456.2 572.2-572.8",
    ),
    "metastatic_tumor": (6, "C77-C80", "196-199"),
    "aids": (6, "B20-B22 B24", "042-044"),
}

CATEGORIES = tuple(_CATEGORIES)
WEIGHTS = {name: weight for name, (weight, _, _) in _CATEGORIES.items()}
# When the severe form is present, the mild one does not count again.
HIERARCHY = {
    "diabetes_complicated": "diabetes",
    "severe_liver": "mild_liver",
    "metastatic_tumor": "malignancy",
}
_PREFIXES = {
    10: {name: _expand(icd10) for name, (_, icd10, _) in _CATEGORIES.items()},
    9: {name: _expand(icd9) for name, (_, _, icd9) in _CATEGORIES.items()},
}


@lru_cache(maxsize=200_000)
def categories_of(code: str, version: int) -> tuple[str, ...]:
    """Charlson categories one ICD code belongs to (usually none or one)."""
    code = code.replace(".", "").strip().upper()
    table = _PREFIXES.get(int(version), {})
    return tuple(name for name, prefixes in table.items() if code.startswith(prefixes))


def category_flags(codes: pd.Series, versions: pd.Series) -> pd.DataFrame:
    """One boolean column per Charlson category, one row per diagnosis row."""
    version = versions.fillna(10).astype(int).astype(str)
    index, distinct = pd.factorize(codes.astype(str) + "|" + version)
    table = np.zeros((len(distinct), len(CATEGORIES)), dtype=bool)
    for i, key in enumerate(distinct):
        code, ver = key.rsplit("|", 1)
        for name in categories_of(code, int(ver)):
            table[i, CATEGORIES.index(name)] = True
    return pd.DataFrame(table[index], columns=list(CATEGORIES), index=codes.index)


def charlson_index(flags: pd.DataFrame) -> pd.Series:
    """Weighted Charlson score from per-admission category flags (any-of over its codes)."""
    flags = flags.astype(bool).copy()
    for severe, mild in HIERARCHY.items():
        flags[mild] = flags[mild] & ~flags[severe]
    return sum(flags[name].astype(np.int16) * WEIGHTS[name] for name in CATEGORIES)
