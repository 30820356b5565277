"""`monitor report` / `decide` / `--apply` on a real SQLite store and a real MLflow registry, with
predictions, shadow scores and outcomes written through the store's own API. No Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from monitor.decide import decide, read_rule
from monitor.experiment import MonitorError
from monitor.report import report
from monitor.rule import RuleConfig
from monitor.service import Routing
from serve.control import effective_weights, latest_overrides
from serve.store import PredictionRecord, PredictionStore, feedback, patient_key, shadows

REPO = Path(__file__).resolve().parents[1]
START = datetime(2026, 1, 1, tzinfo=UTC)
EVEN = Routing({"champion": 0.5, "challenger": 0.5}, 0.25, "test")
RULE = RuleConfig(min_labels=200, min_events=20, cs_n_opt=1000, max_labels=3000, looks=6)
VERSIONS = {"champion": {"tabular": "1"}, "challenger": {"tabular": "2"}}


def _calibrated(score: np.ndarray, y: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(score[:, None], y).predict_proba(score[:, None])[:, 1]


def fill(
    store: PredictionStore,
    n: int,
    seed: int = 0,
    challenger_sd: float = 0.5,
    shadow: bool = True,
    coverage: float = 0.9,
    start: datetime = START,
    hours_apart: float = 1.0,
    split: float = 0.5,
    challenger_map=None,
    versions: dict | None = None,
) -> None:
    """n patients, one prediction each, an hour apart; outcomes recorded 30 days after."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    y = rng.random(n) < 1 / (1 + np.exp(-(-2.0 + 1.6 * z)))
    shared = rng.normal(size=n)
    p0 = _calibrated(z + (np.sqrt(0.5) * shared + np.sqrt(0.5) * rng.normal(size=n)), y)
    p1 = _calibrated(z + challenger_sd * (np.sqrt(0.5) * shared + np.sqrt(0.5) * rng.normal(size=n)), y)
    if challenger_map is not None:
        p1 = challenger_map(p1, z)
    versions = versions or VERSIONS
    arms = np.where(rng.random(n) < split, "challenger", "champion")
    created = [start + timedelta(hours=hours_apart * i) for i in range(n)]
    store.log_predictions(
        PredictionRecord(
            request_id=f"s{seed}-r{i}",
            variant=str(arms[i]),
            model_versions=versions[str(arms[i])],
            risk=float(p1[i] if arms[i] == "challenger" else p0[i]),
            risk_band="low",
            components={},
            features={"sex": "F" if i % 2 else "M", "age": float(30 + i % 60)},
            patient_key=patient_key(f"s{seed}-p{i}", salt="test"),
            created_at=created[i],
        )
        for i in range(n)
    )
    # Shadow scores and outcomes in one transaction each (row by row through log_shadow /
    # add_feedback is what serving does, tested in test_store.py; here it would only be slow).
    labelled = rng.random(n) < coverage
    shadow_rows, feedback_rows = [], []
    for i in range(n):
        other = "champion" if arms[i] == "challenger" else "challenger"
        shadow_rows.append(
            {
                "request_id": f"s{seed}-r{i}",
                "variant": other,
                "model_versions": versions[other],
                "risk": float(p0[i] if other == "champion" else p1[i]),
                "created_at": store.to_db_time(created[i]),
            }
        )
        if labelled[i]:
            feedback_rows.append(
                {
                    "request_id": f"s{seed}-r{i}",
                    "outcome": bool(y[i]),
                    "source": "test",
                    "created_at": store.to_db_time(created[i] + timedelta(days=30)),
                }
            )
    with store.transaction() as conn:
        if shadow:
            conn.execute(shadows.insert(), shadow_rows)
        if feedback_rows:
            conn.execute(feedback.insert(), feedback_rows)


@pytest.fixture
def store(tmp_path: Path):
    with PredictionStore(f"sqlite:///{tmp_path / 'predictions.db'}") as db:
        yield db


@pytest.fixture
def registry_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real MLflow registry with readmission-tabular v1 (champion) and v2 (approved challenger)."""
    from ml import registry

    home = tmp_path / "home"
    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.configure()
    client = registry._client()
    client.create_registered_model("readmission-tabular")
    for _ in range(2):
        source = tmp_path / "model-files"
        source.mkdir(exist_ok=True)
        client.create_model_version("readmission-tabular", source=str(source))
    client.set_registered_model_alias("readmission-tabular", "champion", "1")
    registry.approve("readmission-tabular", "2", "test fixture", "the challenger under test")
    return home


def test_better_challenger_is_promoted_once_outcomes_mature(store: PredictionStore) -> None:
    fill(store, 1500, challenger_sd=0.5)
    early = decide(store, EVEN, RULE, as_of=START + timedelta(days=20))  # nothing matured yet
    assert early.outcome == "keep_testing"
    assert early.figures["labelled"] == 0
    later = decide(store, EVEN, RULE, as_of=START + timedelta(days=90))
    assert later.outcome == "promote", later.reasons
    assert later.figures["paired"] is True
    brier = later.figures["brier_difference"]
    assert brier["upper"] < 0 and brier["estimate"] < 0
    assert {g["name"] for g in later.gates} >= {
        "sample_ratio",
        "feedback_coverage",
        "calibration",
        "subgroups",
        "drift",
    }
    assert later.figures["secondary_chi_square_on_accuracy"]["what"].startswith("secondary")
    assert later.code_version and later.rule_digest == RULE.digest()


def test_equal_models_keep_testing_through_many_looks(store: PredictionStore) -> None:
    fill(store, 2400, challenger_sd=1.0)
    outcomes = [decide(store, EVEN, RULE, as_of=START + timedelta(days=d)).outcome for d in range(35, 131, 8)]
    assert len(outcomes) == 12 and set(outcomes) == {"keep_testing"}


def test_only_matured_predictions_count_and_late_feedback_is_unknown(store: PredictionStore) -> None:
    fill(store, 400, coverage=1.0)
    # As of day 40: predictions from the first ~10 days are matured; feedback recorded later is unknown.
    as_of = START + timedelta(days=40)
    decision = decide(store, EVEN, RULE, as_of=as_of)
    coverage = decision.figures["coverage"]
    matured = coverage["champion"]["matured"] + coverage["challenger"]["matured"]
    assert 0 < matured < 400
    assert matured == pytest.approx(24 * 10, abs=2)
    assert coverage["champion"]["coverage"] == pytest.approx(1.0)  # matured ones all have feedback by then
    young = report(store, EVEN, as_of=as_of, n_boot=0)
    due = young["feedback"]["by_prediction_age"][0]
    assert due["matured"] is False and due["labelled"] == 0 and due["predictions"] > 0


def test_deciding_twice_for_the_same_as_of_changes_nothing(store: PredictionStore) -> None:
    fill(store, 600)
    as_of = START + timedelta(days=60)
    first = decide(store, EVEN, RULE, as_of=as_of)
    fill(store, 200, seed=9, start=START + timedelta(days=1))  # new data arrives afterwards
    again = decide(store, EVEN, RULE, as_of=as_of)
    assert again.id == first.id and again.stored_before
    assert again.figures == first.figures and again.outcome == first.outcome


def test_the_rule_cannot_change_during_an_experiment(store: PredictionStore) -> None:
    fill(store, 600)
    decide(store, EVEN, RULE, as_of=START + timedelta(days=40))
    with pytest.raises(MonitorError, match="cannot change"):
        decide(store, EVEN, RULE.model_copy(update={"margin": 0.01}), as_of=START + timedelta(days=50))


def test_auroc_looks_spend_alpha_once_per_planned_look(store: PredictionStore) -> None:
    fill(store, 2000, challenger_sd=1.0)
    looks = []
    for day in range(40, 120, 4):
        auroc = decide(store, EVEN, RULE, as_of=START + timedelta(days=day)).figures["auroc"]
        if auroc:
            looks.append((auroc["look"]["look"], auroc["n"], auroc["boundary"]))
    numbers = [k for k, _, _ in looks]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 2
    assert all(n >= RULE.look_at(k) for k, n, _ in looks)
    assert all(a > b for (_, _, a), (_, _, b) in zip(looks, looks[1:], strict=False))  # boundaries fall


def test_unpaired_comparison_without_shadow_scores(store: PredictionStore) -> None:
    fill(store, 2000, challenger_sd=0.4, shadow=False)
    decision = decide(store, EVEN, RULE, as_of=START + timedelta(days=150))
    assert decision.figures["paired"] is False
    assert "unpaired" in decision.figures["note"]
    assert decision.figures["brier_difference"]["estimate"] < 0


def test_a_miscalibrated_challenger_is_rolled_back(store: PredictionStore) -> None:
    def overpredict(p, z):
        logit = np.log(p / (1 - p))
        return 1 / (1 + np.exp(-(logit + 1.2)))

    fill(store, 1500, challenger_sd=1.0, challenger_map=overpredict)
    decision = decide(store, EVEN, RULE, as_of=START + timedelta(days=100))
    assert decision.outcome == "rollback", decision.reasons
    assert decision.rule in {"guardrail", "brier_lower_bound_above_threshold"}


def test_a_challenger_better_overall_but_worse_for_one_subgroup_is_not_promoted(
    store: PredictionStore,
) -> None:
    def worse_for_the_oldest(p, z):  # ages are 30 + i % 60 in `fill`: reverse the ranking for 80+
        out = p.copy()
        oldest = (30 + np.arange(len(p)) % 60) >= 80
        group = p[oldest]
        reversed_ = np.empty_like(group)
        reversed_[np.argsort(group)] = np.sort(group)[::-1]
        out[oldest] = reversed_
        return out

    fill(store, 3000, challenger_sd=0.2, challenger_map=worse_for_the_oldest)
    decision = decide(store, EVEN, RULE, as_of=START + timedelta(days=150))
    assert decision.figures["brier_difference"]["estimate"] < 0  # better overall
    subgroups = next(g for g in decision.gates if g["name"] == "subgroups")
    assert not subgroups["passed"] and "age_band=80+" in subgroups["detail"]
    assert "sex=" not in subgroups["detail"].split("for", 1)[1]
    assert decision.outcome != "promote"


def test_sample_ratio_mismatch_invalidates_the_comparison(store: PredictionStore) -> None:
    fill(store, 1500, challenger_sd=0.5, split=0.5)
    skewed = Routing({"champion": 0.9, "challenger": 0.1}, 0.25, "test")
    decision = decide(store, skewed, RULE, as_of=START + timedelta(days=90))
    assert decision.outcome == "keep_testing" and decision.rule == "sample_ratio_mismatch"


def test_apply_promotes_in_the_registry_once_and_tags_the_version(
    store: PredictionStore, registry_home: Path
) -> None:
    from ml import registry
    from monitor.apply import apply, tag_versions

    fill(store, 1500, challenger_sd=0.5)
    decision = decide(store, EVEN, RULE, as_of=START + timedelta(days=90))
    assert decision.outcome == "promote"
    done = apply(store, decision, "ml-lead")
    assert done["changed"] and registry.version_for("readmission-tabular", "champion") == "2"
    tag_versions(decision)
    again = decide(store, EVEN, RULE, as_of=START + timedelta(days=90))
    assert again.applied and again.applied["by"] == "ml-lead"
    assert apply(store, again, "someone-else")["changed"] is False
    registry.rollback("readmission-tabular")  # a second apply must not have promoted again
    assert registry.version_for("readmission-tabular", "champion") == "1"
    tags = registry._client().get_model_version("readmission-tabular", "2").tags
    summary = json.loads(tags["mediscale.decision.last"])
    assert summary["outcome"] == "promote" and summary["id"] == decision.id


def test_apply_rollback_sets_the_weight_to_zero_for_those_versions_only(store: PredictionStore) -> None:
    from monitor.apply import apply

    def overpredict(p, z):
        return 1 / (1 + np.exp(-(np.log(p / (1 - p)) + 1.2)))

    fill(store, 1500, challenger_sd=1.0, challenger_map=overpredict)
    decision = decide(store, EVEN, RULE, as_of=START + timedelta(days=100))
    assert decision.outcome == "rollback"
    apply(store, decision, "ml-lead")
    overrides = latest_overrides(store)
    assert overrides["challenger"].weight == 0.0 and overrides["challenger"].decision_id == decision.id
    configured = {"champion": 0.9, "challenger": 0.1}
    same = effective_weights(configured, {"challenger": {"tabular": "2"}}, overrides)
    assert same["challenger"] == 0.0
    newer = effective_weights(configured, {"challenger": {"tabular": "3"}}, overrides)
    assert newer["challenger"] == 0.1  # a new challenger version is a new experiment


# --------------------------------------------------------------------------- the CLI


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args, *([] if args[0] == "history" else ["--service", ""])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_cli_bad_inputs_are_clear_messages_not_tracebacks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    empty = _cli("decide", "--store-url", url, "--no-tag")
    assert empty.returncode == 2 and "no predictions" in empty.stderr and "Traceback" not in empty.stderr
    with PredictionStore(url) as db:
        fill(db, 50, split=0.0)  # champion only
    one = _cli("decide", "--store-url", url, "--no-tag", "--as-of", "2026-06-01")
    assert one.returncode == 2 and "challenger" in one.stderr and "Traceback" not in one.stderr
    bad_time = _cli("report", "--store-url", url, "--as-of", "yesterday")
    assert bad_time.returncode == 2 and "--as-of" in bad_time.stderr
    bad_rule = _cli("decide", "--store-url", url, "--rule", str(tmp_path / "missing.yaml"))
    assert bad_rule.returncode == 2 and "missing.yaml" in bad_rule.stderr
    future = _cli("report", "--store-url", url, "--since", "2030-01-01", "--json", "-")
    assert future.returncode == 0
    body = json.loads(future.stdout)
    assert body["empty"] is True and "after" in body["message"]


def test_cli_report_and_decide_write_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with PredictionStore(url) as db:
        fill(db, 800, challenger_sd=0.5, split=0.1)  # weights come from serve/config.yaml: 0.9 / 0.1
    out = tmp_path / "report.json"
    done = _cli("report", "--store-url", url, "--as-of", "2026-03-15", "--json", str(out), "--n-boot", "50")
    assert done.returncode == 0, done.stderr
    body = json.loads(out.read_text())
    auroc = body["champion"]["served"]["auroc"]
    # The bootstrap CI brackets the served AUROC (measured: 0.639 < 0.692 < 0.745).
    assert auroc["ci95"][0] < auroc["value"] < auroc["ci95"][1]
    assert body["paired"]["patients"] > 0 and body["traffic"]["sample_ratio"]["p_value"] > 0.001
    assert "experiment champion[tabular:1] vs challenger[tabular:2]" in done.stdout
    decided = _cli("decide", "--store-url", url, "--as-of", "2026-03-15", "--no-tag", "--json", "-")
    assert decided.returncode == 0, decided.stderr
    assert json.loads(decided.stdout)["outcome"] in {"promote", "keep_testing"}
    history = _cli("history", "--store-url", url, "--json", "-")
    assert json.loads(history.stdout)["decisions"][0]["as_of"].startswith("2026-03-15")
    assert read_rule().digest() == RuleConfig.model_validate(read_rule().model_dump()).digest()


def test_decide_and_rollback_on_postgresql(fresh_postgres_url: str) -> None:
    """The same loop on the PostgreSQL store: decision log, idempotence and routing override."""
    from monitor.apply import apply

    def overpredict(p, z):
        return 1 / (1 + np.exp(-(np.log(p / (1 - p)) + 1.2)))

    with PredictionStore(fresh_postgres_url) as db:
        fill(db, 1500, challenger_sd=1.0, challenger_map=overpredict)
        decision = decide(db, EVEN, RULE, as_of=START + timedelta(days=100))
        assert decision.outcome == "rollback"
        assert decide(db, EVEN, RULE, as_of=START + timedelta(days=100)).id == decision.id
        apply(db, decision, "ml-lead")
        assert latest_overrides(db)["challenger"].weight == 0.0


def test_report_with_one_variant_only_is_an_error_but_an_empty_window_is_an_empty_report(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    with PredictionStore(url) as db:
        fill(db, 40, split=0.0)
    one = _cli("report", "--store-url", url, "--as-of", "2026-06-01")
    assert one.returncode == 2 and "'challenger'" in one.stderr and "Traceback" not in one.stderr
    before = _cli("report", "--store-url", url, "--as-of", "2025-06-01", "--json", "-")
    assert before.returncode == 0 and json.loads(before.stdout)["empty"] is True


def test_the_experiment_starts_when_both_arms_serve_their_versions(store: PredictionStore) -> None:
    """Champion rows from before the challenger's version arrived are another experiment's."""
    earlier = {"champion": {"tabular": "1"}, "challenger": {"tabular": "0"}}
    fill(store, 300, seed=3, versions=earlier)  # the champion against an older challenger
    fill(store, 600, seed=4, start=START + timedelta(days=20))
    decision = decide(store, EVEN, RULE, as_of=START + timedelta(days=90))
    counts = decision.figures["predictions"]
    assert counts["champion"] + counts["challenger"] == 600
    assert next(g for g in decision.gates if g["name"] == "sample_ratio")["passed"]
