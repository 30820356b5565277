"""The HTTP API's own types: batches, feedback and the prediction a client receives.

The patient record itself (`PatientRecord`, with its ranges and what a missing field means)
lives in `data.record`: the record is the data layer's other way to hold a stay's raw facts,
and its features come from the same transforms as training's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from data.record import Labs, Measurement, PatientRecord, Text, Vitals

__all__ = [
    "Answer",
    "CHILD_SEPARATOR",
    "MAX_BATCH",
    "MAX_BATCH_ID",
    "MAX_BODY_BYTES",
    "REQUEST_ID_PATTERN",
    "STORED_ID_PATTERN",
    "BatchPrediction",
    "BatchRequest",
    "Evidence",
    "Factor",
    "Feedback",
    "FeedbackCorrected",
    "FeedbackCorrection",
    "FeedbackEvent",
    "FeedbackReceipt",
    "Labs",
    "Measurement",
    "PatientRecord",
    "Prediction",
    "Problem",
    "StoredFeedback",
    "StoredPrediction",
    "Vitals",
    "child_id",
    "risk_band",
]

MAX_BATCH = 256
# A full batch of 20,000-character notes fits with room; anything larger is refused (413) as it
# streams in, before JSON parsing.
MAX_BODY_BYTES = 16 * 1024 * 1024
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"  # what a client may send as x-request-id
# A batch record's id is `<batch id>~<index>`: "~" is not allowed in a client's id, so a child can
# never collide with a single prediction's id (`X-0` once blocked batch `X`), and the batch id
# leaves room for the suffix within the stored 128 characters.
CHILD_SEPARATOR = "~"
MAX_BATCH_ID = 128 - len(f"{CHILD_SEPARATOR}{MAX_BATCH - 1}")
STORED_ID_PATTERN = rf"^(?:[A-Za-z0-9._:-]{{1,128}}|[A-Za-z0-9._:-]{{1,{MAX_BATCH_ID}}}~[0-9]{{1,3}})$"


def child_id(batch_id: str, index: int) -> str:
    return f"{batch_id}{CHILD_SEPARATOR}{index}"


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[PatientRecord] = Field(..., min_length=1, max_length=MAX_BATCH)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(..., pattern=STORED_ID_PATTERN)
    outcome: bool = Field(..., strict=True, description="Readmitted within 30 days: true or false only.")
    source: Text | None = Field(None, max_length=64)


class FeedbackCorrection(BaseModel):
    """A corrected outcome (`PUT /feedback/{request_id}`, role admin): the old one is kept in the
    history with who corrected it and why."""

    model_config = ConfigDict(extra="forbid")

    outcome: bool = Field(..., strict=True, description="The corrected outcome: true or false only.")
    reason: Text = Field(..., min_length=1, max_length=512, description="Why (kept in the history).")
    source: Text | None = Field(None, max_length=64)

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, reason: str) -> str:
        """A history entry must say why (the fuzzer found that a reason of spaces was a 500)."""
        if not reason.strip():
            raise ValueError("must not be blank")
        return reason


class FeedbackReceipt(BaseModel):
    """`POST /feedback`'s answer: the outcome recorded against the prediction it judges."""

    request_id: str
    outcome: bool
    risk: float | None
    variant: str | None


class FeedbackEvent(BaseModel):
    """One entry of an outcome's history: the first report or a correction."""

    kind: Literal["first", "correction"]
    outcome: bool
    key_name: str | None = Field(None, description="The API key that sent it.")
    reason: str | None = None
    at: datetime | None = None


class FeedbackCorrected(BaseModel):
    """`PUT /feedback/{request_id}`'s answer: the outcome now, and every outcome before it."""

    request_id: str
    outcome: bool
    history: list[FeedbackEvent]


class Problem(BaseModel):
    """Every refusal but a validation error (401, 403, 404, 409, 413, 429, 503): what went wrong
    and, where it helps, what to do; never the request's own values."""

    detail: str


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


class Answer(BaseModel):
    """What every served answer says, fresh (`Prediction`) or read back (`StoredPrediction`)."""

    request_id: str
    risk: float
    risk_band: Literal["low", "medium", "high"]
    variant: str
    model_versions: dict[str, str | None]
    components: dict[str, float | None]


class Prediction(Answer):
    note_used: bool
    explanation: str
    missing: list[str] = Field(..., description="Inputs not given (treated as unknown, not as zero).")
    completeness: float = Field(..., description="Share of the record's inputs that were given.")
    top_factors: list[Factor]


class StoredFeedback(BaseModel):
    outcome: bool
    source: str | None = None
    recorded_at: datetime


class StoredPrediction(Answer):
    """A prediction as the store holds it (`GET /predictions/{request_id}`): the answer a client
    got, without the explanation (not stored) and without features or patient key."""

    created_at: datetime
    feedback: StoredFeedback | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StoredPrediction:
        """From `PredictionStore.get`'s row (shadow scores stay internal)."""
        given = row.get("feedback")
        return cls(
            request_id=row["request_id"],
            created_at=row["created_at"],
            risk=row["risk"],
            risk_band=row["risk_band"],
            variant=row["variant"],
            model_versions=row["model_versions"] or {},
            components=row["components"] or {},
            feedback=None
            if given is None
            else StoredFeedback(
                outcome=given["outcome"], source=given["source"], recorded_at=given["created_at"]
            ),
        )


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


def risk_band(risk: float, medium: float, high: float) -> Literal["low", "medium", "high"]:
    return "high" if risk >= high else "medium" if risk >= medium else "low"
