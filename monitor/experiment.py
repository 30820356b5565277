"""The experiment as the store knew it at a moment: which predictions count, and for whom.

Rules (the same for the report and the decision):
- As of T: predictions made up to T; feedback and shadow scores written after T are unknown.
- A prediction is matured when created_at + maturity (30 days) <= T. A matured prediction
  without feedback is missing, never negative; a young one without feedback is normal.
- The experiment is the champion variant's current model versions against the challenger's
  (the newest prediction of each variant name up to T), from the first moment both served them.
  Rows served by older versions, or before that moment, belong to an earlier experiment.
- One row per patient: a patient's first matured prediction (admissions of one patient are not
  independent). Requests without a patient id count as their own patient.
- Paired: when the other arm's model scored the same request in shadow, both probabilities are
  known for that patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from serve.store import PredictionStore

AGE_BANDS = ((0, 45, "<45"), (45, 65, "45-64"), (65, 80, "65-79"), (80, 200, "80+"))


class MonitorError(ValueError):
    """The question cannot be answered from this store (empty, one variant, ...): exit 2."""


class NoPredictions(MonitorError):
    """Nothing in the window: `report` answers with an empty report, `decide` with exit 2."""


@dataclass(frozen=True)
class Arm:
    variant: str
    versions: dict[str, str]

    @property
    def key(self) -> str:
        from serve.control import versions_key

        return versions_key(self.versions)


@dataclass(frozen=True)
class Experiment:
    """What one look sees: the arms, every counted prediction row, and the labelled patients."""

    as_of: datetime
    since: datetime | None
    maturity: timedelta
    champion: Arm
    challenger: Arm
    rows: pd.DataFrame  # experiment predictions up to as_of, one per request
    patients: pd.DataFrame  # one per patient: matured, with p_champion / p_challenger / outcome

    @property
    def name(self) -> str:
        champ, chall = self.champion, self.challenger
        name = f"{champ.variant}[{champ.key}] vs {chall.variant}[{chall.key}]"
        # A window opened with --since is its own experiment: its looks and rule are its own.
        return name if self.since is None else f"{name} since {self.since.isoformat()}"

    @property
    def started(self) -> datetime:
        return self.rows["created_at"].min().to_pydatetime()

    def labelled(self, paired: bool | None = None) -> pd.DataFrame:
        frame = self.patients[self.patients["outcome"].notna()]
        if paired:
            frame = frame[frame["paired"]]
        return frame


def as_utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _versions_key(value: object) -> str:
    from serve.control import versions_key

    return versions_key(value if isinstance(value, dict) else None)


def age_band(age: float | None) -> str:
    if age is None or not np.isfinite(age):
        return "unknown"
    for low, high, name in AGE_BANDS:
        if low <= age < high:
            return name
    return "unknown"


def load(
    store: PredictionStore,
    as_of: datetime | None = None,
    since: datetime | None = None,
    maturity_days: int = 30,
    champion: str = "champion",
    challenger: str = "challenger",
) -> Experiment:
    """The experiment between two variant names as known at `as_of` (default: now)."""
    import pandas as pd

    as_of = as_utc(as_of) or datetime.now(UTC)
    since = as_utc(since)
    frame = store.joined(since=since, until=as_of)
    if frame.empty:
        where = f" since {since.isoformat()}" if since else ""
        raise NoPredictions(f"the prediction store has no predictions{where} up to {as_of.isoformat()}")
    stamp = pd.Timestamp(as_of)
    late_feedback = frame["feedback_at"].notna() & (frame["feedback_at"] > stamp)
    frame.loc[late_feedback, "outcome"] = pd.NA
    late_shadow = frame["shadow_at"].notna() & (frame["shadow_at"] > stamp)
    frame.loc[late_shadow, ["shadow_variant", "shadow_risk"]] = [None, np.nan]
    frame["versions"] = frame["model_versions"].map(_versions_key)
    frame["shadow_versions"] = frame["shadow_model_versions"].map(_versions_key)
    frame.loc[late_shadow, "shadow_versions"] = ""

    arms = {}
    for name in (champion, challenger):
        served = frame[frame["variant"] == name]
        if served.empty:
            seen = ", ".join(sorted(frame["variant"].unique()))
            raise MonitorError(
                f"no predictions from variant {name!r} up to {as_of.isoformat()} (variants seen: {seen}); "
                "a comparison needs both a champion and a challenger"
            )
        newest = served.iloc[-1]
        arms[name] = Arm(name, {str(k): str(v) for k, v in (newest["model_versions"] or {}).items()})
    champ, chall = arms[champion], arms[challenger]
    if champ.key == chall.key:
        raise MonitorError(
            f"variants {champion!r} and {challenger!r} serve the same models ({champ.key}): "
            "nothing to compare"
        )
    in_champ = (frame["variant"] == champion) & (frame["versions"] == champ.key)
    in_chall = (frame["variant"] == challenger) & (frame["versions"] == chall.key)
    # The experiment starts when both arms serve these versions: champion rows from before the
    # challenger's version arrived belong to an earlier experiment (and would skew the split).
    start = max(frame.loc[in_champ, "created_at"].min(), frame.loc[in_chall, "created_at"].min())
    rows = frame[(in_champ | in_chall) & (frame["created_at"] >= start)].copy()
    rows["arm"] = np.where(rows["variant"] == champion, "champion", "challenger")
    shadow_champ = (rows["shadow_variant"] == champion) & (rows["shadow_versions"] == champ.key)
    shadow_chall = (rows["shadow_variant"] == challenger) & (rows["shadow_versions"] == chall.key)
    rows["p_champion"] = np.where(
        rows["arm"] == "champion", rows["risk"], np.where(shadow_champ, rows["shadow_risk"], np.nan)
    )
    rows["p_challenger"] = np.where(
        rows["arm"] == "challenger", rows["risk"], np.where(shadow_chall, rows["shadow_risk"], np.nan)
    )
    rows["paired"] = rows["p_champion"].notna() & rows["p_challenger"].notna()
    rows["age_days"] = (stamp - rows["created_at"]).dt.total_seconds() / 86400.0
    rows["matured"] = rows["created_at"] + pd.Timedelta(days=maturity_days) <= stamp
    feats = rows["features"].map(lambda f: f if isinstance(f, dict) else {})
    rows["sex"] = feats.map(lambda f: f.get("sex") or "unknown")
    rows["age_band"] = feats.map(lambda f: age_band(_number(f.get("age"))))
    rows["patient"] = rows["patient_key"].where(rows["patient_key"].notna(), "request:" + rows["request_id"])
    rows = rows.drop(columns=["features"])

    matured = rows[rows["matured"]]
    patients = matured.drop_duplicates("patient", keep="first").reset_index(drop=True)
    return Experiment(as_of, since, timedelta(days=maturity_days), champ, chall, rows, patients)


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
