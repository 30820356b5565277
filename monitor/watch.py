"""`python -m monitor watch`: one pass of drift-triggered retraining.

A pass checks drift on the watched variant's recent traffic (monitor/drift.py). If the drift
share is over the threshold it retrains the models on the newest feature folder, each as a Ray
Job (`ml train-* --register`). The new versions are registered *pending approval*: nothing
reaches patients until a named person runs `python -m ml registry approve MODEL VERSION --by WHO
--reason TEXT` (the pass reports the exact commands in `pending_approval` / `approve_commands`),
which makes them `challenger`. The pass also records a routing override that gives the
challenger variant its configured share of traffic *once it serves the new versions*: it is
keyed to those versions, so it takes effect only after approval, at the Router's next alias
refresh. It never approves and never promotes (`monitor decide` does, under the pre-registered
rule). Every pass, whatever it found, is one row of the audit table (`monitor_events`, kind
`watch`).

Why Ray Jobs: training needs the cluster's CPUs/GPUs and its own driver. A pass may itself run
as a RayJob (kuberay/rayjob-watch.yaml, submitted on a schedule by kuberay/cronjob-watch.yaml)
and submits the training jobs to the same cluster's job API. `--runner local` runs the same
command lines as subprocesses, for a machine with no job API.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

WATCH_YAML = Path(__file__).with_name("watch.yaml")
# Environment passed to training jobs: where the data, registry and object store are. Secrets
# travel only as environment, never on the command line or in the audit row.
FORWARDED_ENV = (
    "MEDISCALE_DATA_DIR",
    "MLFLOW_TRACKING_URI",
    "MEDISCALE_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "MLFLOW_DISABLE_TELEMETRY",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)


class WatchError(ValueError):
    """A watch pass cannot run as asked (bad option, no feature folder, unknown variant)."""


class TrainSpec(BaseModel):
    """One model to retrain: its component in a variant (`tabular` / `note`), its registered
    name, and the command (`{features}` is the newest feature folder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    component: str = Field(pattern="^(tabular|note)$")
    model: str
    command: str


class WatchConfig(BaseModel):
    """monitor/watch.yaml: what a pass watches and what it does when drift is found."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    variant: str = Field("champion", description="Whose traffic is checked for drift.")
    window_days: float = Field(7.0, gt=0, description="Check the predictions of the last N days.")
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Drift share that triggers retraining (default: rule.yaml max_drift_share).",
    )
    challenger_variant: str = "challenger"
    challenger_share: float = Field(
        0.1, gt=0, lt=1, description="Traffic share for the retrained challenger."
    )
    job_timeout_s: float = Field(3600.0, gt=0)
    train: list[TrainSpec] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None = None) -> WatchConfig:
        source = Path(path) if path is not None else WATCH_YAML
        try:
            raw = yaml.safe_load(source.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise WatchError(f"{source}: cannot read the watch config ({type(err).__name__})") from None
        return cls.model_validate(raw)


@dataclass(frozen=True)
class JobResult:
    component: str
    job_id: str
    status: str  # SUCCEEDED, FAILED, STOPPED, TIMEOUT
    seconds: float
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "SUCCEEDED"


@dataclass
class WatchPass:
    """What one pass found and did (the audit row's payload)."""

    outcome: str  # no_drift | insufficient_data | retrained | retrain_failed | error
    variant: str
    started_at: str
    drift_share: float | None = None
    threshold: float | None = None
    drift_event_id: int | None = None
    drifted_columns: list[str] = field(default_factory=list)
    features: str | None = None
    jobs: list[JobResult] = field(default_factory=list)
    new_versions: dict[str, str] = field(default_factory=dict)  # component -> version registered
    # registered model -> version awaiting `python -m ml registry approve` (nothing served before)
    pending_approval: dict[str, str] = field(default_factory=dict)
    approve_commands: list[str] = field(default_factory=list)
    # what the challenger variant serves once the new versions are approved (the override's key)
    challenger_versions: dict[str, str] = field(default_factory=dict)
    challenger_weight: float | None = None
    override_id: int | None = None
    reason: str = ""
    event_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Runner(Protocol):
    def run(self, component: str, argv: list[str], env: Mapping[str, str], timeout_s: float) -> JobResult: ...


class RayJobRunner:
    """Submits each training command as a Ray Job and waits for it (the cluster's job API)."""

    TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

    def __init__(self, address: str | None = None, poll_s: float = 2.0) -> None:
        self.address = address
        self.poll_s = poll_s

    def run(self, component: str, argv: list[str], env: Mapping[str, str], timeout_s: float) -> JobResult:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.address)
        started = time.monotonic()
        job_id = client.submit_job(
            entrypoint=shlex.join(argv),
            runtime_env={"env_vars": dict(env)},
            metadata={"mediscale": "monitor-watch", "component": component},
        )
        log.info("watch: submitted %s training as Ray Job %s", component, job_id)
        status = "PENDING"
        while time.monotonic() - started < timeout_s:
            status = str(client.get_job_status(job_id).value)
            if status in self.TERMINAL:
                break
            time.sleep(self.poll_s)
        else:
            client.stop_job(job_id)
            return JobResult(
                component, job_id, "TIMEOUT", time.monotonic() - started, f"over {timeout_s:.0f} s"
            )
        info = client.get_job_info(job_id)
        # The job's message is Ray's (exit code, entrypoint failure), not the job's output: training
        # output stays in the job's own log, out of the audit row.
        message = (info.message or "")[:300] if status != "SUCCEEDED" else ""
        return JobResult(component, job_id, status, time.monotonic() - started, message)


class LocalRunner:
    """Runs each training command as a subprocess of this one (no job API needed)."""

    def run(self, component: str, argv: list[str], env: Mapping[str, str], timeout_s: float) -> JobResult:
        started = time.monotonic()
        job_id = f"local-{component}-{os.getpid()}-{int(time.time())}"
        try:
            done = subprocess.run(
                argv,
                env={**os.environ, **env},
                timeout=timeout_s,
                capture_output=True,
                text=True,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return JobResult(
                component, job_id, "TIMEOUT", time.monotonic() - started, f"over {timeout_s:.0f} s"
            )
        status = "SUCCEEDED" if done.returncode == 0 else "FAILED"
        message = "" if done.returncode == 0 else f"exit code {done.returncode}"
        return JobResult(component, job_id, status, time.monotonic() - started, message)


def newest_feature_folder(path: str) -> str:
    """`path` itself if it is a feature folder (has manifest.json), else its child feature folder
    whose manifest was created last (a folder of dated feature sets, local or s3://)."""
    import json

    from data.storage import resolve

    root = resolve(path)
    if root.child("manifest.json").exists():
        return str(path)
    found: list[tuple[str, str]] = []
    prefix = root.path.rstrip("/") + "/"
    relative = [f[len(prefix) :] for f in root.list_files("manifest.json") if f.startswith(prefix)]
    for name in sorted({f.split("/")[0] for f in relative if f.count("/") == 1}):
        manifest = root.child(name, "manifest.json")
        try:
            created = str(json.loads(manifest.read_text()).get("created_at") or "")
        except (OSError, ValueError):
            continue
        found.append((created, name))
    if not found:
        raise WatchError(f"--features {path}: neither a feature folder nor a folder of feature folders")
    return str(path).rstrip("/") + "/" + max(found)[1]


def challenger_share_weight(share: float, weights: Mapping[str, float], challenger: str) -> float:
    """The challenger weight that gives it `share` of traffic, the other variants' weights kept."""
    others = sum(w for name, w in weights.items() if name != challenger)
    if others <= 0:
        raise WatchError("no other variant has traffic: a challenger share needs a champion")
    return share * others / (1.0 - share)


def _service_variants(service_url: str) -> dict[str, Any]:
    import httpx

    from data.config import Settings

    headers = Settings.from_env().service_headers()  # role read (MEDISCALE_API_KEY)
    response = httpx.get(service_url.rstrip("/") + "/variants", headers=headers, timeout=10.0)
    response.raise_for_status()
    return response.json()["variants"]


def _versions_after(
    spec: Mapping[str, Any], new_versions: Mapping[str, str], models: Mapping[str, str]
) -> dict[str, str]:
    """The versions the challenger variant serves once the new versions are approved (and the
    Router re-resolves its references)."""
    from ml.registry import resolve

    out: dict[str, str] = {}
    for component in ("tabular", "note"):
        ref = spec.get(component)
        if ref is None:
            continue
        ref = str(ref)
        if ref == "challenger" and component in new_versions:
            out[component] = new_versions[component]
        else:
            out[component] = resolve(models[component], ref)
    return out


def run_pass(
    store: Any,
    config: WatchConfig,
    features: str,
    service_url: str,
    runner: Runner,
    drift_check: Callable[..., Any] | None = None,
    threshold: float | None = None,
    now: datetime | None = None,
    since: datetime | None = None,
    created_by: str = "monitor watch",
) -> WatchPass:
    """One watch pass; always ends with an audit row (its id in `event_id`)."""
    from monitor.decide import code_version
    from serve import control

    now = now or datetime.now(UTC)
    limit = threshold if threshold is not None else config.threshold
    if limit is None:
        from monitor.decide import read_rule

        limit = read_rule().max_drift_share
    result = WatchPass(
        outcome="no_drift", variant=config.variant, started_at=now.isoformat(), threshold=limit
    )
    try:
        start = since or now - timedelta(days=config.window_days)
        _run(result, store, config, features, service_url, runner, drift_check, limit, start, now, created_by)
    except Exception as err:  # audited as what it is, never as the last outcome set before it
        result.outcome = "error"
        result.reason = f"{type(err).__name__}: {str(err)[:300]}"
        raise
    finally:
        share = result.drift_share
        summary = (
            f"{result.outcome}: drift share "
            + ("n/a" if share is None else f"{share:.2f}")
            + f" (threshold {limit:.2f}) on {config.variant}"
            + (f"; {result.reason}" if result.reason else "")
        )
        result.event_id = control.log_event(
            store,
            "watch",
            summary,
            result.as_dict(),
            code_version(),
            variant=config.challenger_variant if result.challenger_versions else config.variant,
            model_versions=result.challenger_versions or None,
            drift_share=share,
        )
    return result


def _run(
    result: WatchPass,
    store: Any,
    config: WatchConfig,
    features: str,
    service_url: str,
    runner: Runner,
    drift_check: Callable[..., Any] | None,
    limit: float,
    since: datetime,
    now: datetime,
    created_by: str,
) -> None:
    from serve import control

    if drift_check is None:
        from monitor.drift import check_drift as drift_check
    from monitor.experiment import MonitorError

    try:
        drift = drift_check(
            store,
            config.variant,
            since=since,
            until=now,
            max_drift_share=limit,
            html=_report_path(config.variant, now),
        )
    except MonitorError as err:  # too few recent predictions: nothing to judge yet
        result.outcome, result.reason = "insufficient_data", str(err)
        return
    result.drift_share = float(drift.drift_share)
    result.drift_event_id = getattr(drift, "event_id", None)
    result.drifted_columns = [str(getattr(c, "column", c)) for c in getattr(drift, "drifted_columns", [])][
        :50
    ]
    if result.drift_share <= limit:
        result.reason = "drift share within the threshold: nothing retrained"
        return
    if not config.train:
        result.outcome, result.reason = (
            "retrain_failed",
            "drift over the threshold but watch.yaml lists no model to train",
        )
        return
    result.features = newest_feature_folder(features)
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    models = {spec.component: spec.model for spec in config.train}
    from ml.registry import newest_version

    before = {spec.component: newest_version(spec.model) for spec in config.train}
    for spec in config.train:
        argv = command_argv(spec.command, result.features)
        job = runner.run(spec.component, argv, env, config.job_timeout_s)
        result.jobs.append(job)
        if not job.ok:
            result.outcome = "retrain_failed"
            result.reason = (
                f"{spec.component} training {job.status.lower()} ({job.job_id}); routing unchanged"
            )
            return
    from ml.registry import PENDING

    for spec in config.train:
        new, old = newest_version(spec.model), before[spec.component]
        if new is None or (old is not None and int(new.version) <= int(old.version)):
            result.outcome = "retrain_failed"
            result.reason = (
                f"{spec.component} training succeeded but registered no new version of {spec.model} "
                "(does its command have --register?); routing unchanged"
            )
            return
        result.new_versions[spec.component] = new.version
        if new.tags.get("approval") == PENDING:  # not a model's bootstrap first version
            result.pending_approval[spec.model] = new.version
            result.approve_commands.append(
                f"python -m ml registry approve {spec.model} {new.version} --by NAME --reason TEXT"
            )
    variants = _service_variants(service_url)
    if config.challenger_variant not in variants:
        raise WatchError(
            f"the service has no variant {config.challenger_variant!r} (has {', '.join(variants)})"
        )
    spec = variants[config.challenger_variant]
    all_models = {
        "tabular": models.get("tabular", "readmission-tabular"),
        "note": models.get("note", "readmission-notes"),
    }
    result.challenger_versions = _versions_after(spec, result.new_versions, all_models)
    # The other variants' weights as the Router applies them (an override counts).
    weights = {name: float(v.get("effective_weight", v["weight"])) for name, v in variants.items()}
    result.challenger_weight = challenger_share_weight(
        config.challenger_share, weights, config.challenger_variant
    )
    result.override_id = control.set_override(
        store,
        config.challenger_variant,
        result.challenger_versions,
        result.challenger_weight,
        reason=f"monitor watch: retrained after drift share {result.drift_share:.2f} > {limit:.2f}; "
        f"{config.challenger_share:.0%} of traffic to the new challenger once approved",
        created_by=created_by,
    )
    result.outcome = "retrained"
    pending = ", ".join(f"{m} v{v}" for m, v in result.pending_approval.items())
    result.reason = (
        f"retrained {', '.join(f'{c} v{v}' for c, v in result.new_versions.items())}; "
        + (
            f"APPROVAL NEEDED: {pending} pending; nothing new is served until approved "
            f"(python -m ml registry approve MODEL VERSION --by NAME --reason TEXT), then the "
            f"challenger gets {config.challenger_share:.0%} of traffic"
            if pending
            else f"challenger gets {config.challenger_share:.0%} of traffic"
        )
        + " (never approved or promoted here)"
    )


def _report_path(variant: str, now: datetime) -> Path:
    """Where a pass writes its Evidently report (the dashboard links it through the drift event)."""
    from data.config import Settings

    folder = Settings.from_env().data_dir / "monitor"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"drift-{variant}-{now:%Y%m%dT%H%M%SZ}.html"


def command_argv(command: str, features: str) -> list[str]:
    """A watch.yaml command as argv; `python -m ...` runs with this interpreter (the project's
    venv or image), so a job on the same machine or image uses the same environment."""
    argv = shlex.split(command.format(features=shlex.quote(features)))
    if not argv:
        raise WatchError("watch.yaml: an empty training command")
    if argv[0] in {"python", "python3"}:
        argv[0] = sys.executable
    return argv
