"""`monitor drift`: do the requests a variant serves still look like the data its model was trained on?

Reference: the training reference recorded with the model version the variant serves (a seeded
sample of its train rows, their note descriptors and the model's own risk; `ml.registry.
load_reference`). Current: the features stored with that variant's predictions in a window
(only rows served by its newest model versions, so the risk is the same model's).

Per column, Evidently's default test for the column's type and reference size, taken from
Evidently's own stattest registry (the test its DataDriftPreset picks; Evidently 0.7: a reference
of <= 1,000 known values gets K-S for numbers and chi-square / Z-test for categories and for
numbers with <= 5 distinct values, drifted at p < 0.05; a larger one gets the normed Wasserstein
distance for numbers and the Jensen-Shannon distance for categories and few-valued numbers,
drifted at >= 0.1). The HTML report is Evidently's Report (DriftedColumnsCount over the tested
feature columns, ValueDrift for each drifted one, the risk and the descriptors); the tests are run
directly because the preset also draws a plot per column, ~0.15 s each, on every run.

Evidently drops unknown values before testing, so missingness is checked here, per column: a
column whose share of unknown values moved by `missing_threshold` or more (absolute; default
0.2), or which has values in the reference and none now (a lab feed that stopped: every
`<lab>_last/min/max/mean` unknown; its `<lab>_count`, 0 everywhere, fails its value test), is
drifted too.

`drift_share` = drifted model-feature columns / feature columns checked: the figure the
decision's drift gate compares with `max_drift_share` in monitor/rule.yaml. The predicted risk
(reference `risk` vs the served tabular risk) and the note descriptors (`desc_*`) are tested the
same way and reported apart (`risk_drift`, `descriptor_drift`): they do not count in the share.

Skipped, never a crash: columns unknown in every reference row (nothing to compare with) and
columns the current rows do not have at all. Constant reference columns are tested as they are
(a change away from the constant is drift).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from monitor.experiment import MonitorError, as_utc

if TYPE_CHECKING:
    from serve.store import PredictionStore

log = logging.getLogger(__name__)

RISK = "risk"
DESCRIPTOR_PREFIX = "desc_"
MIN_ROWS = 100
MAX_HTML_COLUMNS = 40  # drifted feature columns drawn in the HTML report (each is a plot)
MISSING_THRESHOLD = 0.2
MONITORING_EXPERIMENT = "mediscale-monitoring"
MODEL_NAMES = {"tabular": "readmission-tabular", "note": "readmission-notes"}


class NotEnoughRows(MonitorError):
    """Too few current rows for a drift check worth reading: exit 2, no result recorded."""


@dataclass(frozen=True)
class ColumnDrift:
    """One column's check. `statistic` is the distance for distance tests; `p_value` is set for
    p-value tests; `score` is Evidently's drift score either way (compared with `threshold`)."""

    column: str
    kind: str  # numerical | categorical
    test: str  # Evidently's test name, or "all_missing" when nothing is left to test
    score: float | None
    statistic: float | None
    p_value: float | None
    threshold: float | None
    value_drifted: bool
    missing_reference: float  # share unknown
    missing_current: float
    missing_drifted: bool

    @property
    def drifted(self) -> bool:
        return self.value_drifted or self.missing_drifted

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted}


@dataclass
class DriftResult:
    """A drift check's answer (JSON via `to_dict`; no patient ids, note text or feature values)."""

    drift_share: float
    max_drift_share: float
    columns_checked: int
    drifted_columns: list[ColumnDrift]
    risk_drift: ColumnDrift | None
    descriptor_drift: list[ColumnDrift]
    n_reference: int
    n_current: int
    columns: list[ColumnDrift] = field(default_factory=list)  # every feature column checked
    skipped: dict[str, str] = field(default_factory=dict)
    evidently_drift_share: float | None = None  # value tests alone, over the columns they could test
    missing_threshold: float = MISSING_THRESHOLD
    variant: str | None = None
    model_versions: dict[str, str] = field(default_factory=dict)
    since: str | None = None
    until: str | None = None
    reference_source: str | None = None
    note_risk_drift: ColumnDrift | None = None
    notes: list[str] = field(default_factory=list)
    html: str | None = None
    mlflow_run_id: str | None = None
    event_id: int | None = None
    checked_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def dataset_drift(self) -> bool:
        return self.drift_share > self.max_drift_share

    def to_dict(self, with_columns: bool = True) -> dict[str, Any]:
        def one(c: ColumnDrift | None) -> dict[str, Any] | None:
            return None if c is None else c.to_dict()

        out = {
            "variant": self.variant,
            "model_versions": self.model_versions,
            "since": self.since,
            "until": self.until,
            "checked_at": self.checked_at,
            "drift_share": self.drift_share,
            "max_drift_share": self.max_drift_share,
            "dataset_drift": self.dataset_drift,
            "columns_checked": self.columns_checked,
            "drifted_columns": [c.to_dict() for c in self.drifted_columns],
            "risk_drift": one(self.risk_drift),
            "note_risk_drift": one(self.note_risk_drift),
            "descriptor_drift": [c.to_dict() for c in self.descriptor_drift],
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "evidently_drift_share": self.evidently_drift_share,
            "missing_threshold": self.missing_threshold,
            "skipped": self.skipped,
            "reference_source": self.reference_source,
            "notes": self.notes,
            "html": self.html,
            "mlflow_run_id": self.mlflow_run_id,
            "event_id": self.event_id,
        }
        if with_columns:
            out["columns"] = [c.to_dict() for c in self.columns]
        return _finite(out)

    def summary(self) -> str:
        names = ", ".join(c.column for c in self.drifted_columns[:8])
        more = f" (+{len(self.drifted_columns) - 8} more)" if len(self.drifted_columns) > 8 else ""
        risk = self.risk_drift
        lines = [
            f"drift share {self.drift_share:.2f} (max {self.max_drift_share:.2f}): "
            f"{len(self.drifted_columns)} of {self.columns_checked} feature columns drifted"
            + (f": {names}{more}" if names else ""),
            f"rows: {self.n_current} current, {self.n_reference} reference",
        ]
        if risk is not None:
            lines.append(f"predicted risk: {'DRIFTED' if risk.drifted else 'no drift'} ({_how(risk)})")
        moved = [c.column for c in self.descriptor_drift if c.drifted]
        if self.descriptor_drift:
            lines.append("note descriptors drifted: " + (", ".join(moved) if moved else "none"))
        return "\n".join(lines)


def _how(c: ColumnDrift) -> str:
    if c.test == "all_missing":
        return "all values now unknown"
    if c.p_value is not None:
        return f"{c.test} p = {c.p_value:.3g}, threshold {c.threshold}"
    return f"{c.test} {c.statistic:.3f}, threshold {c.threshold}"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------- the comparison


def _typed(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> tuple[dict, dict, dict]:
    """Both frames' columns with one type each, decided by the reference: numbers (booleans as
    0/1) are numerical, everything else categorical (text)."""
    kinds, ref, cur = {}, {}, {}
    for name in columns:
        r = reference[name]
        c = current[name]
        if pd.api.types.is_bool_dtype(r) or pd.api.types.is_numeric_dtype(r):
            kinds[name] = "numerical"
            ref[name] = pd.to_numeric(r.astype(object), errors="coerce").astype("float64")
            cur[name] = pd.to_numeric(c.astype(object), errors="coerce").astype("float64")
        else:
            kinds[name] = "categorical"
            ref[name] = r.astype(object).where(r.notna(), None).map(lambda v: v if v is None else str(v))
            cur[name] = c.astype(object).where(c.notna(), None).map(lambda v: v if v is None else str(v))
    return kinds, ref, cur


def _tests(
    ref: pd.DataFrame, cur: pd.DataFrame, kinds: dict[str, str]
) -> dict[str, tuple[str, float, float]]:
    """Per column, Evidently's default test for its type and size (the one DataDriftPreset picks,
    from Evidently's stattest registry) on the known values: (test name, score, threshold)."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    types = {"numerical": ColumnType.Numerical, "categorical": ColumnType.Categorical}
    found: dict[str, tuple[str, float, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's divide warnings on constant columns
        for name, kind in kinds.items():
            r, c = ref[name].dropna(), cur[name].dropna()
            if kind == "numerical":
                r = r[np.isfinite(r)]
                c = c[np.isfinite(c)]
            if r.empty or c.empty:
                continue
            test = get_stattest(r, c, types[kind], None)
            outcome = test(r, c, types[kind], None)
            found[name] = (test.display_name, float(outcome.drift_score), float(outcome.actual_threshold))
    return found


def write_report(
    reference: pd.DataFrame, current: pd.DataFrame, result: DriftResult, path: str | Path
) -> Path:
    """Evidently's HTML report: the drifted share over the tested feature columns, then each
    drifted feature column, the risk and the note descriptors with their distributions."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    every = [*result.columns, *result.descriptor_drift, *([result.risk_drift] if result.risk_drift else [])]
    tested = [c for c in every if c.test != "all_missing"]
    kinds = {c.column: c.kind for c in tested}
    features = [c.column for c in result.columns if c.test != "all_missing"]
    shown = [c.column for c in result.drifted_columns if c.test != "all_missing"][:MAX_HTML_COLUMNS]
    shown += [c.column for c in result.descriptor_drift if c.test != "all_missing"]
    if result.risk_drift is not None and result.risk_drift.test != "all_missing":
        shown.append(result.risk_drift.column)
    _, ref, cur = _typed(reference, current, list(kinds))
    names = list(kinds)
    definition = DataDefinition(
        numerical_columns=[n for n in names if kinds[n] == "numerical"],
        categorical_columns=[n for n in names if kinds[n] == "categorical"],
    )
    metrics: list[Any] = [DriftedColumnsCount(columns=features)] if features else []
    metrics += [ValueDrift(column=name) for name in dict.fromkeys(shown)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report(metrics).run(
            Dataset.from_pandas(pd.DataFrame(cur)[names], data_definition=definition),
            Dataset.from_pandas(pd.DataFrame(ref)[names], data_definition=definition),
        )
        snapshot.save_html(str(path))
    return path


def _is_p_value(test: str) -> bool:
    return "p_value" in test.replace("-", "_").lower()


def _column(
    name: str,
    kind: str,
    ref: pd.Series,
    cur: pd.Series,
    tested: tuple[str, float, float] | None,
    missing_threshold: float,
) -> ColumnDrift:
    miss_ref = float(ref.isna().mean()) if len(ref) else 0.0
    miss_cur = float(cur.isna().mean()) if len(cur) else 0.0
    missing_moved = abs(miss_cur - miss_ref) >= missing_threshold
    if tested is None:  # values in the reference, none now: nothing left for a value test
        return ColumnDrift(name, kind, "all_missing", None, None, None, None, True, miss_ref, miss_cur, True)
    test, score, threshold = tested
    p_test = _is_p_value(test)
    drifted = score < threshold if p_test else score >= threshold
    return ColumnDrift(
        column=name,
        kind=kind,
        test=test,
        score=score,
        statistic=None if p_test else score,
        p_value=score if p_test else None,
        threshold=threshold,
        value_drifted=bool(drifted),
        missing_reference=miss_ref,
        missing_current=miss_cur,
        missing_drifted=bool(missing_moved),
    )


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str] | None = None,
    descriptors: Sequence[str] | None = None,
    risk: str | None = RISK,
    max_drift_share: float = 0.5,
    missing_threshold: float = MISSING_THRESHOLD,
    html: str | Path | None = None,
) -> DriftResult:
    """Reference vs current, no store: per-column drift (Evidently's default tests plus the
    missing-share check), the drifted share of feature `columns` (default: every reference
    column but `risk` and `desc_*`), risk drift and descriptor drift (default: `desc_*`)."""
    if columns is None:
        columns = [c for c in reference.columns if c != risk and not str(c).startswith(DESCRIPTOR_PREFIX)]
    if descriptors is None:
        descriptors = [c for c in reference.columns if str(c).startswith(DESCRIPTOR_PREFIX)]
    wanted = [*columns, *descriptors, *([risk] if risk and risk in reference.columns else [])]
    skipped: dict[str, str] = {}
    usable = []
    for name in dict.fromkeys(wanted):
        if name not in reference.columns or name not in current.columns:
            where = "reference" if name not in reference.columns else "current rows"
            skipped[name] = f"not in the {where}"
        elif reference[name].isna().all():
            skipped[name] = "unknown in every reference row"
        else:
            usable.append(name)
    kinds, ref, cur = _typed(reference, current, usable)
    ref_frame = pd.DataFrame(ref, index=reference.index)
    cur_frame = pd.DataFrame(cur, index=current.index)
    tests = _tests(ref_frame, cur_frame, kinds)
    checked = {
        n: _column(n, kinds[n], ref_frame[n], cur_frame[n], tests.get(n), missing_threshold) for n in usable
    }
    features = [checked[c] for c in columns if c in checked]
    drifted = [c for c in features if c.drifted]
    share = len(drifted) / len(features) if features else 0.0
    flagged = [c for c in features if c.test != "all_missing"]
    result = DriftResult(
        drift_share=share,
        max_drift_share=max_drift_share,
        columns_checked=len(features),
        drifted_columns=drifted,
        risk_drift=checked.get(risk) if risk else None,
        descriptor_drift=[checked[c] for c in descriptors if c in checked],
        n_reference=len(reference),
        n_current=len(current),
        columns=features,
        skipped=skipped,
        evidently_drift_share=sum(c.value_drifted for c in flagged) / len(flagged) if flagged else None,
        missing_threshold=missing_threshold,
    )
    if html:
        result.html = str(write_report(reference, current, result, html).resolve())
    return result


# --------------------------------------------------------------------------- from the store


@dataclass(frozen=True)
class Current:
    """What a variant served in a window: stored features, served risks, and the versions."""

    variant: str
    model_versions: dict[str, str]
    frame: pd.DataFrame  # one column per stored feature / descriptor, plus risk and note_risk
    rows_other_versions: int


def current_rows(
    store: PredictionStore, variant: str, since: datetime | None = None, until: datetime | None = None
) -> Current:
    """The stored features of `variant`'s predictions in the window, served by its newest versions."""
    from serve.control import versions_key

    frame = store.joined(since=since, until=until, expand_features=True)
    mine = frame[frame["variant"] == variant] if not frame.empty else frame
    if mine.empty:
        seen = ", ".join(sorted(frame["variant"].unique())) if not frame.empty else "none"
        window = f" since {since.isoformat()}" if since else ""
        raise MonitorError(f"no predictions from variant {variant!r}{window} (variants seen: {seen})")
    newest = mine.iloc[-1]["model_versions"] or {}
    versions = {str(k): str(v) for k, v in newest.items()}
    keys = mine["model_versions"].map(lambda v: versions_key(v if isinstance(v, dict) else None))
    same = mine[keys == versions_key(versions)]
    drop = {
        "request_id", "created_at", "variant", "model_versions", "risk_band", "components", "patient_key",
        "note_chars", "shadow_variant", "shadow_model_versions", "shadow_risk", "shadow_at", "outcome",
        "feedback_source", "feedback_at",
    }  # fmt: skip
    out = same.drop(columns=[c for c in same.columns if c in drop or c == RISK])
    components = same["components"].map(lambda c: c if isinstance(c, dict) else {})
    tabular = pd.to_numeric(components.map(lambda c: c.get("tabular")), errors="coerce")
    out[RISK] = tabular.where(tabular.notna(), same[RISK]).astype("float64")  # the tabular model's own
    out["note_risk"] = pd.to_numeric(components.map(lambda c: c.get("note")), errors="coerce")
    return Current(variant, versions, out.reset_index(drop=True), len(mine) - len(same))


def check_drift(
    store: PredictionStore,
    variant: str,
    since: datetime | None = None,
    until: datetime | None = None,
    min_rows: int = MIN_ROWS,
    max_drift_share: float | None = None,
    missing_threshold: float = MISSING_THRESHOLD,
    html: str | Path | None = None,
    model_names: dict[str, str] | None = None,
    log_mlflow: bool = True,
    record: bool = True,
    code_version: str | None = None,
) -> DriftResult:
    """Check a variant's served traffic against its model's training reference; write the HTML
    report, log a run to MLflow (`mediscale-monitoring`) and a `drift` event to the store."""
    from ml import registry

    names = {**MODEL_NAMES, **(model_names or {})}
    since, until = as_utc(since), as_utc(until)
    if max_drift_share is None:
        from monitor.decide import read_rule

        max_drift_share = read_rule().max_drift_share
    served = current_rows(store, variant, since, until)
    if len(served.frame) < min_rows:
        raise NotEnoughRows(
            f"variant {variant!r} has {len(served.frame)} predictions from its current models "
            f"({_key(served.model_versions)}) in the window; a drift check needs at least {min_rows} "
            "(--min-rows, or a longer --since window)"
        )
    tabular = served.model_versions.get("tabular")
    if tabular is None:
        raise MonitorError(f"variant {variant!r} serves no tabular model ({served.model_versions})")
    reference = registry.load_reference(names["tabular"], tabular)
    current = served.frame.drop(columns=["note_risk"])
    result = compare(
        reference,
        current,
        max_drift_share=max_drift_share,
        missing_threshold=missing_threshold,
        html=html,
    )
    result.variant, result.model_versions = variant, served.model_versions
    result.since = since.isoformat() if since else None
    result.until = until.isoformat() if until else None
    result.reference_source = reference.attrs.get("source")
    if served.rows_other_versions:
        result.notes.append(
            f"{served.rows_other_versions} predictions served by earlier model versions are not counted"
        )
    holdout = registry.load_risk_holdout(names["tabular"], tabular)
    if holdout is not None and RISK in holdout and RISK in current:
        # The risk on held-out rows is the fair reference (on training rows it is optimistic).
        result.risk_drift = compare(holdout[[RISK]], current[[RISK]], columns=[], descriptors=[]).risk_drift
        result.notes.append("risk reference: the model's risk on its validation split (held out)")
    note = served.model_versions.get("note")
    if note is not None:
        result.note_risk_drift = _note_risk(names["note"], note, served.frame, result)
    if log_mlflow:
        result.mlflow_run_id = _log_mlflow(result)
    if record:
        from serve.control import log_event

        if code_version is None:
            from monitor.decide import code_version as current_code

            code_version = current_code()
        result.event_id = log_event(
            store,
            "drift",
            result.summary().splitlines()[0],
            result.to_dict(with_columns=False),
            code_version,
            variant=variant,
            model_versions=served.model_versions,
            drift_share=result.drift_share,
        )
    log.info(
        "drift check of %s (%s): share %.2f over %d columns, %d current rows",
        variant,
        _key(served.model_versions),
        result.drift_share,
        result.columns_checked,
        result.n_current,
    )
    return result


def _key(versions: dict[str, str]) -> str:
    from serve.control import versions_key

    return versions_key(versions)


def _note_risk(name: str, version: str, frame: pd.DataFrame, result: DriftResult) -> ColumnDrift | None:
    """The note model's served risk against its own reference risk, when it has a reference."""
    from ml import registry

    try:
        reference = registry.load_reference(name, version)
    except registry.RegistryError as err:
        result.notes.append(f"note model risk not checked: {err}")
        return None
    served = frame[["note_risk"]].rename(columns={"note_risk": RISK}).dropna()
    if served.empty:
        result.notes.append("note model risk not checked: no stored note risk")
        return None
    return compare(reference[[RISK]], served, columns=[], descriptors=[]).risk_drift


def _log_mlflow(result: DriftResult) -> str:
    """One run in the monitoring experiment: the drift share and counts as metrics, the HTML
    report and the JSON result as artifacts."""
    import json
    import tempfile

    import mlflow

    from ml import registry

    registry.configure()
    experiment_id = registry.experiment(MONITORING_EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift {result.variant}") as run:
        mlflow.set_tags(
            {"kind": "drift", "variant": str(result.variant), "versions": _key(result.model_versions)}
        )
        mlflow.log_params(
            {"since": result.since, "until": result.until, "max_drift_share": result.max_drift_share}
        )
        metrics = {
            "drift_share": result.drift_share,
            "drifted_columns": float(len(result.drifted_columns)),
            "columns_checked": float(result.columns_checked),
            "n_current": float(result.n_current),
            "n_reference": float(result.n_reference),
        }
        if result.risk_drift is not None and result.risk_drift.score is not None:
            metrics["risk_drift_score"] = result.risk_drift.score
            metrics["risk_drifted"] = float(result.risk_drift.drifted)
        mlflow.log_metrics(metrics)
        if result.html and Path(result.html).is_file():
            mlflow.log_artifact(result.html, "drift")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "drift.json"
            path.write_text(json.dumps({**result.to_dict(), "mlflow_run_id": run.info.run_id}, indent=2))
            mlflow.log_artifact(str(path), "drift")
        return run.info.run_id
