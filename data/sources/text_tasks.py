"""Readers for the two public clinical text tasks, as frames with `text`, `label`, `group`.

`group` is what must stay on one side of a split (a NegEx report, an MTS dialogue), so the
text models can use grouped cross-validation and never score on text they trained on.

* NegEx (Chapman et al. 2001), `Annotations-1-120.txt`: tab-separated, CRLF, latin-1, columns
  `Report No.`, `Concept`, `Sentence`, `Negation`. `text` marks the concept in the sentence
  with [ ] so a model knows which condition to judge (a sentence can hold several). The
  file has 2,376 rows from 116 reports (72, 84, 108 and 120 are absent), labels exactly
  "Affirmed" / "Negated"; 29 rows are exact duplicates (kept: they are the kit as published);
  70 concepts carry stray outer whitespace; 11 concepts do not occur in their sentence (the
  annotation spans a sentence break) and get a "concept: ... | " prefix instead.
* MTS-Dialog (Ben Abacha et al. 2023): `text` is the note section, `label` its header
  (20 classes), `group` the row ID. IDs restart at 0 in each file, so they are only unique
  within one split.
"""

from __future__ import annotations

import logging
import os
import re

import pandas as pd

log = logging.getLogger(__name__)

NEGEX_FILE = "Annotations-1-120.txt"
NEGEX_COLUMNS = ("Report No.", "Concept", "Sentence", "Negation")
NEGEX_LABELS = ("Affirmed", "Negated")
# The project's standard split: reports 1-80 train/validation, 81-120 test.
NEGEX_TEST_FIRST_REPORT = 81

MTS_FILES = {
    "train": "MTS-Dialog-TrainingSet.csv",
    "valid": "MTS-Dialog-ValidationSet.csv",
}
MTS_COLUMNS = ("ID", "section_header", "section_text", "dialogue")


def _resolve(path: str, default_name: str) -> str:
    """`path` itself if a file, else `default_name` inside the folder `path`."""
    if os.path.isdir(path):
        path = os.path.join(path, default_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    return path


def _require(frame: pd.DataFrame, columns: tuple[str, ...], path: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")


def mark_concept(sentence: str, concept: str) -> tuple[str, bool]:
    """Wrap the first case-insensitive occurrence of `concept` in [ ]; whitespace may differ.

    Returns the text and whether the concept was found; if not, the concept is prepended.
    """
    words = concept.split()
    if words:
        pattern = r"\s+".join(re.escape(w) for w in words)
        match = re.search(pattern, sentence, flags=re.IGNORECASE)
        if match:
            start, end = match.span()
            return f"{sentence[:start]}[{sentence[start:end]}]{sentence[end:]}", True
    return f"concept: {concept} | {sentence}", False


def _normalise_label(value: str) -> str:
    text = " ".join(str(value).split())
    for label in NEGEX_LABELS:
        if text.lower() == label.lower():
            return label
    return text


def read_negex(path: str) -> pd.DataFrame:
    """NegEx annotations: one row per (sentence, concept) with label Affirmed/Negated.

    `path` is the annotations file or the folder holding `Annotations-1-120.txt`.
    """
    path = _resolve(path, NEGEX_FILE)
    try:
        raw = pd.read_csv(path, sep="\t", encoding="latin-1", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: not a tab-separated NegEx annotation file: {err}") from err
    raw.columns = [c.strip() for c in raw.columns]
    _require(raw, NEGEX_COLUMNS, path)
    sentence = raw["Sentence"].str.strip()
    concept = raw["Concept"].str.strip()
    report = pd.to_numeric(raw["Report No."].str.strip(), errors="coerce")
    if report.isna().any():
        raise ValueError(f"{path}: non-numeric 'Report No.' on {int(report.isna().sum())} row(s)")
    marked = [mark_concept(s, c) for s, c in zip(sentence, concept, strict=True)]
    out = pd.DataFrame(
        {
            "text": [m[0] for m in marked],
            "label": raw["Negation"].map(_normalise_label),
            "group": report.astype(int),
            "sentence": sentence,
            "concept": concept,
            "concept_found": [m[1] for m in marked],
        }
    )
    other = sorted(set(out["label"]) - set(NEGEX_LABELS))
    if other:
        log.warning("%s: unexpected Negation value(s) %s", path, other)
    log.info(
        "negex: %d rows, %d reports, labels %s, %d concept(s) not found in their sentence",
        len(out),
        out["group"].nunique(),
        out["label"].value_counts().to_dict(),
        int((~out["concept_found"]).sum()),
    )
    return out


def negex_split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train+validation, test): reports 1-80 vs 81-120, the project's fixed NegEx split."""
    test = df["group"] >= NEGEX_TEST_FIRST_REPORT
    return df.loc[~test].reset_index(drop=True), df.loc[test].reset_index(drop=True)


def read_mts_dialog(path_or_dir: str, split: str) -> pd.DataFrame:
    """MTS-Dialog section classification: `text` note section -> `label` section header.

    `split` is "train" or "valid"; `path_or_dir` is the folder with both CSVs or one CSV.
    """
    if split not in MTS_FILES:
        raise ValueError(f"unknown MTS-Dialog split {split!r}; expected one of {list(MTS_FILES)}")
    path = _resolve(path_or_dir, MTS_FILES[split])
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable MTS-Dialog CSV: {err}") from err
    raw.columns = [c.strip() for c in raw.columns]
    _require(raw, MTS_COLUMNS, path)
    group = pd.to_numeric(raw["ID"].str.strip(), errors="coerce")
    if group.isna().any():
        raise ValueError(f"{path}: non-numeric ID on {int(group.isna().sum())} row(s)")
    out = pd.DataFrame(
        {
            "text": raw["section_text"].str.strip(),
            "label": raw["section_header"].str.strip(),
            "group": group.astype(int),
            "dialogue": raw["dialogue"].str.strip(),
        }
    )
    log.info("mts-dialog %s: %d rows, %d classes", split, len(out), out["label"].nunique())
    return out
