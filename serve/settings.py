"""The application's settings: `build_app` arguments and the deployments' hot `user_config`s
(variants, shadow, alias refresh, risk bands; note batching)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ml.note_runtime import NoteRuntime

TABULAR_MODEL = "readmission-tabular"
NOTE_MODEL = "readmission-notes"
MODELS_KEPT = 4  # versions each scorer keeps loaded (old ones stay during a switch)


class AppArgs(BaseModel):
    """`build_app` arguments (the `args:` block of serve/config.yaml)."""

    tabular_model: str = TABULAR_MODEL
    note_model: str = NOTE_MODEL
    data_dir: str | None = Field(None, description="MLflow/store data dir; default MEDISCALE_DATA_DIR.")
    store_url: str | None = Field(
        None, description="Prediction store URL; default MEDISCALE_STORE_URL, else SQLite in the data dir."
    )
    store_note_text: bool = Field(False, description="Keep note text in the prediction store.")
    max_note_chars: int = Field(20_000, ge=1, description="Longer notes are refused with 413.")
    top_factors: int = Field(5, ge=0, le=50)
    note_runtime: NoteRuntime = Field(
        "onnx-int8",
        description="What runs an opaque note model's forward pass (ml/note_runtime.py): ONNX Runtime "
        "with int8 weights, the fastest on CPU within 0.005 AUROC of fp32 (bench/note_inference.py); "
        "'torch' is the fp32 model as trained.",
    )


class VariantSpec(BaseModel):
    weight: float = Field(..., ge=0)
    tabular: str = Field(..., min_length=1, description="Alias or version of the tabular model.")
    note: str | None = Field(
        None,
        min_length=1,
        description="Alias or version of an opaque note model stacked on the tabular risk; "
        "None (the default): the note counts through its concepts in the tabular model only.",
    )


class RouterConfig(BaseModel):
    """The Router's hot `user_config`."""

    variants: dict[str, VariantSpec] = Field(
        default_factory=lambda: {
            "champion": VariantSpec(weight=0.9, tabular="champion"),
            "challenger": VariantSpec(weight=0.1, tabular="challenger"),
        }
    )
    shadow: bool = False
    max_shadow_tasks: int = Field(
        64,
        ge=0,
        description="Shadow scorings in flight per Router replica; beyond, shadows are dropped (counted).",
    )
    saturated_in_flight: int = Field(
        96,
        ge=1,
        description="/healthz answers 503 'saturated' when this replica has this many requests in "
        "flight (keep it under the Router's max_ongoing_requests, 128 in serve/config.yaml).",
    )
    alias_refresh_s: float = Field(30.0, ge=0, description="0 turns alias polling off.")
    medium_risk: float = Field(0.10, gt=0, lt=1)
    high_risk: float = Field(0.25, gt=0, lt=1)

    @field_validator("variants")
    @classmethod
    def _some_weight(cls, variants: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        if not variants or sum(v.weight for v in variants.values()) <= 0:
            raise ValueError("variants: at least one variant needs a positive weight")
        return variants


class NoteBatchConfig(BaseModel):
    """The NoteScorer's hot `user_config`: notes that arrive while a forward pass runs go together
    in the next pass (serve/batching.py), up to `max_batch_size`."""

    model_config = ConfigDict(extra="forbid")  # a misspelt or retired setting is an error

    max_batch_size: int = Field(16, ge=1, le=256)


class TabularBatchConfig(BaseModel):
    """The TabularScorer's hot `user_config`. A call's cost is mostly fixed (feature frames and a
    DMatrix over ~200 columns: about 75 ms of CPU for 1 record, 6-7 ms per record in a call of
    16-32), so the requests that arrive while a call runs are scored together in the next one
    (serve/batching.py), up to `max_batch_size` requests per call."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1, le=256)
