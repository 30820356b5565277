"""The HTTP API's own types: batches, feedback and the prediction a client receives.

The patient record itself (`PatientRecord`, with its ranges and what a missing field means)
lives in `data.record`: the record is the data layer's other way to hold a stay's raw facts,
and its features come from the same transforms as training's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from data.record import Labs, Measurement, PatientRecord, Vitals

__all__ = [
    "MAX_BATCH",
    "REQUEST_ID_PATTERN",
    "BatchPrediction",
    "BatchRequest",
    "Evidence",
    "Factor",
    "Feedback",
    "Labs",
    "Measurement",
    "PatientRecord",
    "Prediction",
    "Vitals",
    "risk_band",
]

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
MAX_BATCH = 256


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[PatientRecord] = Field(..., min_length=1, max_length=MAX_BATCH)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(..., pattern=REQUEST_ID_PATTERN)
    outcome: bool = Field(..., description="Readmitted within 30 days.")
    source: str | None = Field(None, max_length=64)


class Evidence(BaseModel):
    """Where the note says it: character offsets into the submitted `clinical_note`."""

    start: int
    end: int
    text: str = Field(..., description="The matched words only (never the note).")
    status: str = Field(..., description="present, absent, family, hypothetical or historical")
    cue: str | None = Field(None, description="The words that decided the status (e.g. 'denies').")


class Factor(BaseModel):
    feature: str
    label: str = Field(..., description="What the feature is, in clinical terms.")
    value: float | str | None
    display: str = Field(..., description="The value as read, with its unit; says 'unknown' when missing.")
    unit: str | None = None
    known: bool = Field(
        ..., description="False: the input was not given and the model treated it as unknown."
    )
    direction: Literal["raises", "lowers"]
    contribution: float = Field(..., description="Log-odds pushed up (+) or down (-).")
    evidence: list[Evidence] = Field(default_factory=list, description="Note spans behind a note factor.")


class Prediction(BaseModel):
    request_id: str
    risk: float
    risk_band: Literal["low", "medium", "high"]
    variant: str
    model_versions: dict[str, str | None]
    components: dict[str, float | None]
    note_used: bool
    explanation: str
    missing: list[str] = Field(..., description="Inputs not given (treated as unknown, not as zero).")
    completeness: float = Field(..., description="Share of the record's inputs that were given.")
    top_factors: list[Factor]


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


def risk_band(risk: float, medium: float, high: float) -> Literal["low", "medium", "high"]:
    return "high" if risk >= high else "medium" if risk >= medium else "low"
