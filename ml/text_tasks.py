"""The text tasks the note model trains on, as `TextSplits` (train / valid / test rows).

One code path, three data sources:
- `readmission`: the discharge summary of each stay in a feature folder -> readmitted in 30
  days; the feature folder's own patient-grouped splits. The tabular features ride along so
  that the tabular + note combiner can be fitted on the same validation rows.
- `negex`: NegEx sentences with the condition marked in [ ] -> Affirmed / Negated. Reports
  1-80 train and validate (the last `NEGEX_VALID_REPORTS` of them validate), 81-120 test only.
- `mtsdialog`: MTS-Dialog `section_text` -> its section header (20 classes). The official
  training set is split 90/10 into train/valid (model selection, calibration); the official
  validation set is the reported split (`test` here), never trained or tuned on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from data.featureset import FeatureFolder
from ml.text import TextDataError, TextSplits

log = logging.getLogger(__name__)

TASKS = ("readmission", "negex", "mtsdialog")
READMISSION_LABELS = ["not_readmitted", "readmitted"]
NEGEX_VALID_REPORTS = 16  # reports 65-80 validate, 1-64 train
MTS_VALID_FRACTION = 0.1


def readmission_splits(features: str | FeatureFolder, sample: int | None = None, seed: int = 0) -> TextSplits:
    """Stays with a discharge note; `sample` caps the train rows (quick runs), keeping the label rate."""
    folder = FeatureFolder.open(features)
    text_column = folder.text_column
    if not text_column:
        raise TextDataError(f"{folder.uri}: the feature folder has no text column (no notes)")
    label = folder.label_column
    frames = {}
    for split in ("train", "valid", "test"):
        frame = folder.read_split(split)
        frame = frame[frame[text_column].notna() & (frame[text_column].str.strip() != "")]
        frame = frame.assign(
            text=frame[text_column],
            label=np.where(frame[label].astype(int) == 1, READMISSION_LABELS[1], READMISSION_LABELS[0]),
            group=frame[folder.patient_column],
        )
        frames[split] = frame.reset_index(drop=True)
    if sample and len(frames["train"]) > sample:
        frames["train"] = (
            frames["train"]
            .groupby("label", group_keys=False)
            .apply(lambda g: g.sample(frac=sample / len(frames["train"]), random_state=seed))
            .reset_index(drop=True)
        )
    return TextSplits(
        "readmission",
        frames["train"],
        frames["valid"],
        frames["test"],
        READMISSION_LABELS,
        positive=READMISSION_LABELS[1],
    )


def negex_splits(datasets: str | Path) -> TextSplits:
    from data.sources.text_tasks import negex_split, read_negex

    rows = read_negex(str(Path(datasets) / "negex"))
    development, test = negex_split(rows)
    reports = sorted(development["group"].unique())
    valid_reports = set(reports[-NEGEX_VALID_REPORTS:])
    in_valid = development["group"].isin(valid_reports)
    return TextSplits(
        "negex",
        development[~in_valid].reset_index(drop=True),
        development[in_valid].reset_index(drop=True),
        test,
        ["Affirmed", "Negated"],
        positive="Negated",
    )


def mtsdialog_splits(datasets: str | Path, seed: int = 0) -> TextSplits:
    from data.sources.text_tasks import read_mts_dialog

    folder = str(Path(datasets) / "mts_dialog")
    official_train = read_mts_dialog(folder, "train")
    official_valid = read_mts_dialog(folder, "valid")
    rng = np.random.default_rng(seed)
    holdout = rng.random(len(official_train)) < MTS_VALID_FRACTION
    labels = sorted(official_train["label"].unique())
    return TextSplits(
        "mtsdialog",
        official_train[~holdout].reset_index(drop=True),
        official_train[holdout].reset_index(drop=True),
        official_valid,
        labels,
    )


def load_task(
    task: str,
    features: str | FeatureFolder | None = None,
    datasets: str | Path | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> TextSplits:
    """The named task's splits; `features` for readmission, `datasets` (shared folder) otherwise."""
    source = check_task_inputs(task, features, datasets)
    if isinstance(source, FeatureFolder):
        return readmission_splits(source, sample, seed)
    return negex_splits(source) if task == "negex" else mtsdialog_splits(source, seed)


def check_task_inputs(
    task: str, features: str | FeatureFolder | None = None, datasets: str | Path | None = None
) -> str | FeatureFolder:
    """The task's input: the feature folder, opened (verified), for readmission; else the shared
    datasets folder. A TextDataError names what is missing.

    Cheap (a manifest and the parquet footers at most), so CLIs call it before they start Ray and
    pass the open folder on.
    """
    if task not in TASKS:
        raise TextDataError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    if task == "readmission":
        if not features:
            raise TextDataError("the readmission task needs a feature folder (--features)")
        return FeatureFolder.open(features)
    if not datasets:
        from data.config import Settings

        datasets = Settings.from_env().datasets_dir
    if not Path(datasets).is_dir():
        raise TextDataError(f"{datasets}: the shared datasets folder does not exist (set MEDISCALE_DATASETS)")
    return str(datasets)
