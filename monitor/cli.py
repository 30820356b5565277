"""`python -m monitor ...`: report, decide (and apply), drift, the decision history and routing overrides.

Runs the same from a shell and as a Ray Job (`ray job submit --working-dir . -- python -m monitor
decide ...`): it needs the prediction store and the MLflow registry, not a Ray cluster.
"""

from __future__ import annotations

import getpass
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import typer

from data.runtime import setup_logging, user_errors

app = typer.Typer(
    help="MediScale monitoring: live performance and champion/challenger decisions.", no_args_is_help=True
)
log = logging.getLogger("monitor")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(verbose)


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{option}: {value!r} is not an ISO date or time (e.g. 2026-12-31T00:00)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _store(store_url: str | None):
    from serve.store import PredictionStore

    return PredictionStore(store_url)


def _routing(service: str | None, serve_config: Path | None):
    from data.config import Settings
    from monitor.service import routing

    return routing(service if service is not None else Settings.from_env().service_url, serve_config)


def _emit(result: dict, json_path: Path | None, text: str) -> None:
    body = json.dumps(result, indent=2, default=str, allow_nan=False)
    if json_path is not None and str(json_path) == "-":
        typer.echo(body)
        return
    typer.echo(text)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(body)


STORE_OPT = typer.Option(
    None, "--store-url", help="Prediction store URL; default MEDISCALE_STORE_URL or the data dir."
)
SERVICE_OPT = typer.Option(
    None,
    "--service",
    help="The running service, for its weights and bands; default MEDISCALE_SERVICE_URL or localhost:8000.",
)
CONFIG_OPT = typer.Option(None, "--serve-config", help="Fallback for weights: a serve config YAML.")
JSON_OPT = typer.Option(None, "--json", help="Write the full result here as JSON ('-' prints it instead).")
CHAMPION_OPT = typer.Option("champion", help="The champion's variant name in the Router config.")
CHALLENGER_OPT = typer.Option("challenger", help="The challenger's variant name in the Router config.")


@app.command("report")
@user_errors
def report_cmd(
    since: str | None = typer.Option(None, help="Only predictions made at or after this time (ISO)."),
    as_of: str | None = typer.Option(None, "--as-of", help="Report as the store knew it then (default now)."),
    json_path: Path | None = JSON_OPT,
    champion: str = CHAMPION_OPT,
    challenger: str = CHALLENGER_OPT,
    store_url: str | None = STORE_OPT,
    service: str | None = SERVICE_OPT,
    serve_config: Path | None = CONFIG_OPT,
    n_boot: int = typer.Option(200, min=0, max=5000, help="Bootstrap samples for AUPRC and ECE intervals."),
) -> None:
    """Live performance per variant: traffic, feedback, metrics with 95% CIs, subgroups, estimates."""
    from monitor.decide import read_rule
    from monitor.report import report, summary

    with _store(store_url) as store:
        result = report(
            store,
            _routing(service, serve_config),
            as_of=_time(as_of, "--as-of"),
            since=_time(since, "--since"),
            champion=champion,
            challenger=challenger,
            maturity_days=read_rule().maturity_days,
            n_boot=n_boot,
        )
    _emit(result, json_path, summary(result))


@app.command("decide")
@user_errors
def decide_cmd(
    as_of: str | None = typer.Option(None, "--as-of", help="Decide as the store knew it then (default now)."),
    apply_: bool = typer.Option(
        False, "--apply", help="Act: promote in the registry, or roll back in the service."
    ),
    json_path: Path | None = JSON_OPT,
    rule: Path | None = typer.Option(None, help="The declared rule (default monitor/rule.yaml)."),
    since: str | None = typer.Option(None, help="Ignore predictions before this time (ISO)."),
    champion: str = CHAMPION_OPT,
    challenger: str = CHALLENGER_OPT,
    store_url: str | None = STORE_OPT,
    service: str | None = SERVICE_OPT,
    serve_config: Path | None = CONFIG_OPT,
    applied_by: str | None = typer.Option(None, help="Who applies it (audit); default the OS user."),
    tag: bool = typer.Option(True, help="Tag the decision onto the challenger's model versions in MLflow."),
) -> None:
    """promote / keep_testing / rollback / inconclusive under the pre-registered rule; stored for audit."""
    from monitor.apply import apply, tag_versions
    from monitor.decide import decide, read_rule

    declared = read_rule(rule)
    with _store(store_url) as store:
        decision = decide(
            store,
            _routing(service, serve_config),
            declared,
            as_of=_time(as_of, "--as-of"),
            champion=champion,
            challenger=challenger,
            since=_time(since, "--since"),
        )
        result = decision.to_dict()
        if apply_:
            result["apply"] = apply(store, decision, applied_by or _user())
            result["applied"] = decision.applied
        if tag:
            result["tagged"] = tag_versions(decision)
    text = [
        f"decision #{decision.id} ({decision.experiment}, as of {decision.as_of}): {decision.outcome.upper()}"
    ]
    text += [f"  rule: {decision.rule}"] + [f"  - {r}" for r in decision.reasons]
    failed = [g for g in decision.gates if not g["passed"] or g["pending"]]
    text += [f"  gate {g['name']}: {'pending' if g['pending'] else 'FAILED'}: {g['detail']}" for g in failed]
    text += [f"  note: {n}" for n in decision.notes]
    if "apply" in result:
        text.append(f"  applied: {json.dumps(result['apply'], default=str)}")
    _emit(result, json_path, "\n".join(text))


@app.command("drift")
@user_errors
def drift_cmd(
    since: str | None = typer.Option(None, help="Only predictions made at or after this time (ISO)."),
    until: str | None = typer.Option(None, help="Only predictions made up to this time (ISO; default now)."),
    variant: str = typer.Option("challenger", help="The variant whose traffic is checked."),
    json_path: Path | None = JSON_OPT,
    html: Path | None = typer.Option(
        None,
        "--html",
        help="Write Evidently's HTML report here (default: a temporary file, logged to MLflow).",
    ),
    min_rows: int = typer.Option(100, "--min-rows", min=1, help="Fewer current predictions: exit 2."),
    max_drift_share: float | None = typer.Option(
        None, "--max-drift-share", min=0.0, max=1.0, help="Default: max_drift_share in the rule file."
    ),
    missing_threshold: float = typer.Option(
        0.2,
        "--missing-threshold",
        min=0.0,
        max=1.0,
        help="A column whose unknown share moves this much drifts.",
    ),
    rule: Path | None = typer.Option(None, help="The declared rule (default monitor/rule.yaml)."),
    tabular_model: str = typer.Option("readmission-tabular", help="Registered name of the tabular model."),
    note_model: str = typer.Option("readmission-notes", help="Registered name of the note model."),
    mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log a run to mediscale-monitoring."),
    record: bool = typer.Option(True, "--record/--no-record", help="Add a drift event to the store."),
    store_url: str | None = STORE_OPT,
) -> None:
    """Feature, predicted-risk and note-descriptor drift of a variant's traffic against its model's
    training reference (Evidently); recorded for the decision's drift gate."""
    from data.config import Settings
    from monitor.decide import read_rule
    from monitor.drift import check_drift

    share = max_drift_share if max_drift_share is not None else read_rule(rule).max_drift_share
    if html is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        html = Settings.from_env().data_dir / "monitoring" / f"drift-{variant}-{stamp}.html"
    with _store(store_url) as store:
        result = check_drift(
            store,
            variant,
            since=_time(since, "--since"),
            until=_time(until, "--until"),
            min_rows=min_rows,
            max_drift_share=share,
            missing_threshold=missing_threshold,
            html=html,
            model_names={"tabular": tabular_model, "note": note_model},
            log_mlflow=mlflow_log,
            record=record,
        )
    body = result.to_dict()
    where = [f"report: {html}"]
    where += [f"MLflow run: {result.mlflow_run_id}"] if result.mlflow_run_id else []
    where += [f"drift event #{result.event_id}"] if result.event_id is not None else []
    text = f"drift check of {variant} ({_versions(result.model_versions)}):\n" + result.summary()
    _emit(body, json_path, "\n".join([text, *where, *[f"note: {n}" for n in result.notes]]))


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} v{v}" for k, v in sorted(versions.items())) or "no versions"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@app.command("history")
@user_errors
def history_cmd(
    limit: int = typer.Option(20, min=1, max=1000),
    json_path: Path | None = JSON_OPT,
    store_url: str | None = STORE_OPT,
) -> None:
    """The decision audit trail, newest first."""
    from monitor.decide import history

    with _store(store_url) as store:
        rows = history(store, limit)
    text = "\n".join(
        f"#{r['id']} {r['as_of']} {r['experiment']}: {r['outcome']} ({r['rule']})"
        + (f", applied by {r['applied']['by']} at {r['applied']['at']}" if r.get("applied") else "")
        for r in rows
    )
    _emit({"decisions": rows}, json_path, text or "no decisions yet")


@app.command("routing")
@user_errors
def routing_cmd(
    clear: str | None = typer.Option(None, help="Return this variant to its configured weight (audited)."),
    by: str | None = typer.Option(None, help="Who clears it (audit); default the OS user."),
    store_url: str | None = STORE_OPT,
    json_path: Path | None = JSON_OPT,
) -> None:
    """Routing overrides in force (a rollback's weight 0), or clear one."""
    from dataclasses import asdict

    from serve.control import latest_overrides, set_override

    with _store(store_url) as store:
        if clear is not None:
            current = latest_overrides(store).get(clear)
            if current is None:
                raise ValueError(f"variant {clear!r} has no routing override")
            set_override(store, clear, current.model_versions, None, "cleared by an operator", by or _user())
        overrides = {k: asdict(v) for k, v in latest_overrides(store).items()}
    text = "\n".join(
        f"{name}: weight {o['weight'] if o['weight'] is not None else 'as configured'} while serving "
        f"{o['model_versions']} ({o['reason']}, by {o['created_by']})"
        for name, o in overrides.items()
    )
    _emit({"overrides": overrides}, json_path, text or "no routing overrides")


@app.command("watch")
@user_errors
def watch_cmd(
    features: str | None = typer.Option(
        None,
        help="A feature folder, or a folder of feature folders (the newest manifest wins); "
        "default <MEDISCALE_DATA_DIR>/features.",
    ),
    config: Path | None = typer.Option(None, help="The watch config (default monitor/watch.yaml)."),
    variant: str | None = typer.Option(
        None, help="Whose traffic is checked (default the config's: champion)."
    ),
    threshold: float | None = typer.Option(None, min=0, max=1, help="Drift share that triggers retraining."),
    share: float | None = typer.Option(
        None, min=0.001, max=0.999, help="Traffic share for the new challenger, once approved."
    ),
    since: str | None = typer.Option(
        None, help="Check predictions from this time (ISO; default: window_days ago)."
    ),
    runner: str = typer.Option("job", help="job: each training as a Ray Job; local: as a subprocess."),
    ray_address: str | None = typer.Option(None, help="The Ray job API (default RAY_ADDRESS, else local)."),
    json_path: Path | None = JSON_OPT,
    store_url: str | None = STORE_OPT,
    service: str | None = SERVICE_OPT,
) -> None:
    """One pass of drift-triggered retraining: check drift; over the threshold, retrain the models on the
    newest feature folder as Ray Jobs and register them PENDING APPROVAL: nothing new is served until a
    named person runs `python -m ml registry approve MODEL VERSION --by WHO --reason TEXT` (the result's
    `approve_commands`); then the challenger gets its configured share of traffic. It never approves and
    never promotes (`monitor decide` does). Every pass is audited (monitor_events)."""
    from data.config import Settings
    from monitor.watch import LocalRunner, RayJobRunner, WatchConfig, run_pass

    if runner not in {"job", "local"}:
        raise typer.BadParameter(f"--runner: {runner!r} is neither job nor local")
    settings = Settings.from_env()
    cfg = WatchConfig.load(config)
    updates = {k: v for k, v in {"variant": variant, "challenger_share": share}.items() if v is not None}
    if updates:
        cfg = WatchConfig.model_validate({**cfg.model_dump(), **updates})
    with _store(store_url) as store:
        result = run_pass(
            store,
            cfg,
            features or str(settings.data_dir / "features"),
            service if service is not None else settings.service_url,
            RayJobRunner(ray_address) if runner == "job" else LocalRunner(),
            threshold=threshold,
            since=_time(since, "--since"),
            created_by=f"monitor watch ({getpass.getuser()})",
        )
    _emit(result.as_dict(), json_path, f"watch #{result.event_id}: {result.outcome}. {result.reason}")


@app.command("submit-rayjob")
@user_errors
def submit_rayjob_cmd(
    manifest: Path = typer.Argument(..., help="A RayJob manifest (kuberay/rayjob-watch.yaml)."),
    namespace: str | None = typer.Option(None, help="Default: this pod's namespace."),
) -> None:
    """Create a RayJob (with a generated name) from inside a pod: the nightly CronJob's step."""
    from monitor.k8s import submit

    typer.echo(f"created RayJob {submit(manifest, namespace)}")
