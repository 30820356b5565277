"""Synthetic generator: deterministic, realistic marginals, and the documented signal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline

from data import notes
from data.featureset import read_manifest, read_split_pandas
from data.synth import BLOCK_PATIENTS, generate_block
from data.validate import validate_raw


@pytest.fixture(scope="module")
def block() -> dict[str, pd.DataFrame]:
    return {
        name: t.to_pandas() for name, t in generate_block(3, 0, BLOCK_PATIENTS, with_latents=True).items()
    }


def test_same_seed_same_tables_other_seed_other_tables() -> None:
    a, b = generate_block(1, 0, 300), generate_block(1, 0, 300)
    assert all(a[name].equals(b[name]) for name in a)
    c = generate_block(2, 0, 300)
    assert not a["admissions"].equals(c["admissions"])
    assert not a["notes"].equals(c["notes"])


def test_ray_generation_is_deterministic_and_valid(synthetic_raw: Path) -> None:
    manifest = json.loads((synthetic_raw / "manifest.json").read_text())
    assert manifest["source"]["seed"] == 11
    assert manifest["tables"]["patients"] == BLOCK_PATIENTS + 500
    assert len(list((synthetic_raw / "admissions").glob("*.parquet"))) == 2  # one part per block
    assert validate_raw(str(synthetic_raw)).ok
    # block 1 written by a Ray task equals the same block generated in-process
    in_process = generate_block(11, 1, 500)["admissions"]
    written = pads.dataset(synthetic_raw / "admissions" / "part-00001.parquet").to_table()
    assert written.equals(in_process)


def test_marginals_are_plausible(block: dict[str, pd.DataFrame]) -> None:
    adm, latents = block["admissions"], block["latents"]
    assert 0.08 <= latents["readmit"].mean() <= 0.16
    per_patient = adm.groupby("patient_id").size()
    assert per_patient.min() == 1 and per_patient.max() >= 4 and 1.4 <= per_patient.mean() <= 2.6
    los = (adm["discharge_time"] - adm["admit_time"]).dt.total_seconds() / 86_400
    assert 2.5 <= los.median() <= 6
    ages = adm.merge(block["patients"], on="patient_id").pipe(
        lambda d: (d["admit_time"] - pd.to_datetime(d["date_of_birth"])).dt.days / 365.25
    )
    assert 55 <= ages.median() <= 75 and ages.min() >= 17
    assert set(adm["discharge_disposition"]) >= {"HOME", "SNF", "DIED", "AMA"}
    summaries = block["notes"][block["notes"]["category"] == "Discharge summary"]
    words = summaries["text"].str.split().str.len()
    assert 100 <= words.median() <= 350
    assert summaries["text"].nunique() == len(summaries)


def test_note_facts_carry_signal_in_the_documented_direction(block: dict[str, pd.DataFrame]) -> None:
    lat = block["latents"]
    for fact in ("chest_pain_present", "shortness_of_breath_present", "lives_alone", "cost_barrier"):
        assert lat.loc[lat[fact], "readmit"].mean() > lat.loc[~lat[fact], "readmit"].mean() + 0.05, fact
    # a denied symptom carries no risk: it should not look like a present one
    present = lat.loc[lat["chest_pain_present"], "readmit"].mean()
    denied = lat.loc[lat["chest_pain_denied"], "readmit"].mean()
    assert present > denied + 0.08


def test_negation_cue_in_text_lowers_the_label_rate(block: dict[str, pd.DataFrame]) -> None:
    summaries = block["notes"][block["notes"]["category"] == "Discharge summary"]
    text = summaries.merge(block["latents"], on="admission_id")
    terms = "|".join(re.escape(t) for t in notes.SYMPTOMS["chest_pain"])
    denied = text["text"].str.contains(
        rf"\b(?:denies|denied|no|negative for|without)\s+(?:{terms})\b", case=False
    )
    affirmed = text["text"].str.contains(
        rf"\b(?:reports|endorses|c/o|complains of)\s+(?:{terms})\b", case=False
    )
    affirmed_only = affirmed & ~denied
    assert denied.sum() > 100 and affirmed_only.sum() > 30
    assert text.loc[affirmed_only, "readmit"].mean() > text.loc[denied, "readmit"].mean() + 0.05


def test_features_are_learnable(synthetic_features: Path) -> None:
    manifest = read_manifest(str(synthetic_features))
    numeric = [f["name"] for f in manifest["features"] if f["type"] in ("numeric", "boolean")]
    train = read_split_pandas(str(synthetic_features), "train")
    test = pd.concat([read_split_pandas(str(synthetic_features), s) for s in ("valid", "test")])

    def matrix(df: pd.DataFrame) -> np.ndarray:
        x = df[numeric].astype(float)
        return x.fillna(train[numeric].astype(float).median()).fillna(0).to_numpy()

    mean, std = matrix(train).mean(0), matrix(train).std(0) + 1e-9
    tabular = LogisticRegression(max_iter=2000).fit((matrix(train) - mean) / std, train["label"])
    auroc = roc_auc_score(test["label"], tabular.predict_proba((matrix(test) - mean) / std)[:, 1])
    assert auroc > 0.68, auroc
    text = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2), LogisticRegression(max_iter=2000))
    text.fit(train["note"].fillna(""), train["label"])
    note_auroc = roc_auc_score(test["label"], text.predict_proba(test["note"].fillna(""))[:, 1])
    assert note_auroc > 0.6, note_auroc
