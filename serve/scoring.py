"""Scoring as plain functions over typed results: record -> features -> tabular risk with
factors -> (optional) note risk -> combined risk -> `Prediction` and store row.

No Ray here. The Serve deployments are thin async plumbing around these functions, and the
batch scorer (`python -m ml score`) and the plain-FastAPI baseline in `bench/serve_load.py`
call the same ones, so all three give the same answer for the same record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data.concepts import Mention, feature_concepts, find_mentions
from data.descriptors import note_descriptors
from data.labels import describe
from data.record import PatientRecord, completeness, feature_rows, missing_inputs, record_features
from serve.records import Evidence, Factor, Prediction, risk_band

MAX_EVIDENCE = 3  # note spans quoted per factor


@dataclass
class TabularResult:
    """The tabular model's answer for one record."""

    risk: float
    factors: list[Factor]
    features: dict[str, Any]  # model inputs plus the note descriptors (`desc_*`), as stored
    missing: list[str]
    completeness: float


@dataclass
class Scored:
    """One record's final answer before it becomes a `Prediction` (and a store row)."""

    risk: float
    tabular: float
    note: float | None
    explanation: str
    factors: list[Factor]
    features: dict[str, Any]
    missing: list[str]
    completeness: float
    versions: dict[str, str | None] = field(default_factory=dict)

    @property
    def components(self) -> dict[str, float | None]:
        return {"tabular": self.tabular, "note": self.note}


def _plain(value: Any) -> float | str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    return str(value)


def _evidence(feature: str, mentions: list[Mention], text: str) -> list[Evidence]:
    concepts = feature_concepts(feature)
    found = [m for m in mentions if m.concept in concepts]
    if feature.startswith("note_n_"):  # a count quotes what it counted
        found = [m for m in found if m.asserted]
    return [
        Evidence(start=m.start, end=m.end, text=text[m.start : m.end], status=m.status, cue=m.cue)
        for m in found[:MAX_EVIDENCE]
    ]


STATUS_WORDS = {
    "absent": "denied or absent",
    "family": "family history only",
    "historical": "in the past",
    "hypothetical": "only as a possibility",
}


def _note_display(display: str, value: Any, evidence: list[Evidence]) -> str:
    """'not present' said the way the note said it: denied, a relative's, in the past ..."""
    if value != 0 or not display.startswith("not present"):
        return display
    words = sorted({STATUS_WORDS[e.status] for e in evidence if e.status in STATUS_WORDS})
    return f"not present: {', '.join(words)}" if words else "not mentioned"


def factor(
    feature: str, value: Any, contribution: float, mentions: list[Mention], text: str | None
) -> Factor:
    """One explained feature: clinical label, value with unit (or 'unknown'), direction, spans."""
    shown = bool(value) if isinstance(value, bool | np.bool_) else _plain(value)  # "yes", not "1"
    label = describe(feature, shown)
    evidence = _evidence(feature, mentions, text) if text and feature.startswith("note_") else []
    return Factor(
        feature=feature,
        label=label.label,
        value=_plain(value),
        display=_note_display(label.display, _plain(value), evidence),
        unit=label.unit,
        known=label.known,
        direction="raises" if contribution >= 0 else "lowers",
        contribution=round(float(contribution), 4),
        evidence=evidence,
    )


def score_tabular(predictor: Any, records: list[PatientRecord], top_k: int = 5) -> list[TabularResult]:
    """Calibrated tabular risk and the top `top_k` factors for each record."""
    names = list(predictor.feature_names)
    frame = record_features(records).reindex(columns=names)
    risk, contributions = predictor.score(frame, contributions=bool(top_k))
    if contributions is not None:
        contributions = contributions.drop(columns="bias")
    rows = feature_rows(frame)
    out = []
    for i, record in enumerate(records):
        factors: list[Factor] = []
        if contributions is not None:
            row = contributions.iloc[i]
            text = record.note_text()
            mentions = find_mentions(text) if text else []
            for name in row.abs().sort_values(ascending=False).index[:top_k]:
                factors.append(factor(name, frame.iloc[i][name], float(row[name]), mentions, text))
        missing = missing_inputs(record)
        # Note descriptors (`desc_*`, never model inputs) go to the store with the features, so
        # drift in how notes are written can be checked without storing note text.
        stored = {**rows[i], **note_descriptors(record.note_text())}
        out.append(TabularResult(float(risk[i]), factors, stored, missing, completeness(missing)))
    return out


def _missing_note(missing: list[str]) -> str:
    return f" Not given, so treated as unknown: {', '.join(missing)}." if missing else ""


def combine(tabular: TabularResult, note_risk: float | None, combiner: Any = None) -> Scored:
    """The final risk: the tabular risk alone, or stacked with an opaque note model's risk."""
    if note_risk is None or combiner is None:
        how = "Tabular model (structured data and note concepts)."
        risk = tabular.risk
    else:
        risk = float(combiner(np.array([tabular.risk]), np.array([note_risk]))[0])
        how = f"Tabular model combined with the note model ({combiner.fitted_on})."
    return Scored(
        risk=risk,
        tabular=tabular.risk,
        note=note_risk,
        explanation=how + _missing_note(tabular.missing),
        factors=tabular.factors,
        features=tabular.features,
        missing=tabular.missing,
        completeness=tabular.completeness,
    )


def to_prediction(
    request_id: str,
    scored: Scored,
    variant: str,
    versions: dict[str, str | None],
    medium: float,
    high: float,
    note_given: bool,
) -> Prediction:
    return Prediction(
        request_id=request_id,
        risk=scored.risk,
        risk_band=risk_band(scored.risk, medium, high),
        variant=variant,
        model_versions=versions,
        components=scored.components,
        note_used=note_given,
        explanation=scored.explanation,
        missing=scored.missing,
        completeness=scored.completeness,
        top_factors=scored.factors,
    )


def to_store_row(prediction: Prediction, record: PatientRecord, scored: Scored) -> Any:
    """The prediction store's row for a served prediction (patient id only as a salted hash)."""
    from serve.store import PredictionRecord, patient_key

    text = record.note_text()
    return PredictionRecord(
        request_id=prediction.request_id,
        variant=prediction.variant,
        model_versions={k: v for k, v in prediction.model_versions.items() if v is not None},
        risk=prediction.risk,
        risk_band=prediction.risk_band,
        components=scored.components,
        features=scored.features,
        patient_key=patient_key(record.patient_id) if record.patient_id else None,
        note_chars=len(text) if text else None,
        note_text=text,
    )
