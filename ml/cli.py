"""`python -m ml ...`: train models and manage the MLflow registry."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from data.runtime import init_ray, setup_logging, user_errors

app = typer.Typer(help="MediScale models: training and the MLflow registry.", no_args_is_help=True)
registry_app = typer.Typer(
    help="Registered models, their approval and their champion/challenger aliases.", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")
log = logging.getLogger("ml")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(verbose)


def emit_json(result: dict, path: Path | None) -> None:
    """Print a command's JSON result on stdout and, if asked, also write it to `path`."""
    from ml.experiment import as_json

    text = as_json(result)
    typer.echo(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _scale_pos_weight(value: str | None) -> float | str | None:
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(f"--scale-pos-weight must be a number or 'auto', got {value!r}") from None


@app.command("score")
@user_errors
def score(
    features: str = typer.Option(..., help="Feature folder (local path or s3://)."),
    model: str = typer.Option(..., help="NAME@ALIAS_OR_VERSION, e.g. readmission-tabular@champion or @3."),
    out: str = typer.Option(..., help="Folder to write the scores to as parquet (local path or s3://)."),
    split: list[str] = typer.Option(None, help="Only these splits (repeat); default all."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary here."),
) -> None:
    """Batch-score a feature folder with a registered tabular model (Ray Data, one load per worker)."""
    from data.featureset import FeatureFolder
    from ml.batch import score_features

    folder = FeatureFolder.open(features, need_positives=False)  # bad input fails before Ray starts
    init_ray()
    emit_json(score_features(folder, model, out, split or None, overwrite), json_out)


@app.command("train-tabular")
@user_errors
def train_tabular(
    features: str = typer.Option(..., help="Feature folder (local path or s3://)."),
    register: bool = typer.Option(
        False, help="Register the model, pending approval (the first version becomes champion)."
    ),
    metrics_out: Path | None = typer.Option(None, help="Write the test metrics here as JSON."),
    model_name: str = typer.Option("readmission-tabular", help="Registered model name."),
    num_workers: int = typer.Option(1, min=1, help="Ray Train workers."),
    cpus_per_worker: int = typer.Option(1, min=1, help="XGBoost threads per worker."),
    use_gpu: bool = typer.Option(False, help="Train on GPUs (one per worker)."),
    max_rounds: int = typer.Option(400, min=1),
    learning_rate: float = typer.Option(0.05),
    max_depth: int = typer.Option(5, min=1),
    scale_pos_weight: str | None = typer.Option(None, help="A number, 'auto' (neg/pos) or unset."),
    calibration: str = typer.Option("auto", help="auto, isotonic, platt or none."),
    n_boot: int = typer.Option(1000, min=10, help="Bootstrap resamples for the CIs."),
    seed: int = typer.Option(0),
) -> None:
    """Train the XGBoost readmission model on Ray Train, evaluate, log to MLflow."""
    from data.featureset import FeatureFolder
    from ml.experiment import train_tabular as run
    from ml.tabular import TabularConfig

    folder = FeatureFolder.open(features)  # bad input fails before Ray starts

    config = TabularConfig(
        num_workers=num_workers,
        cpus_per_worker=cpus_per_worker,
        use_gpu=use_gpu,
        max_rounds=max_rounds,
        learning_rate=learning_rate,
        max_depth=max_depth,
        scale_pos_weight=_scale_pos_weight(scale_pos_weight),
        calibration=calibration,
        seed=seed,
    )
    init_ray()
    result = run(folder, config, register=register, model_name=model_name, n_boot=n_boot)
    emit_json(result, metrics_out)


@app.command("train-notes")
@user_errors
def train_notes(
    task: str = typer.Option("readmission", help="readmission, negex or mtsdialog."),
    features: str | None = typer.Option(None, help="Feature folder with notes (readmission task)."),
    datasets: str | None = typer.Option(None, help="Shared datasets folder (negex, mtsdialog)."),
    model: str = typer.Option(
        "sentence-transformers/all-MiniLM-L6-v2",
        help="Hugging Face id or local folder; production: emilyalsentzer/Bio_ClinicalBERT.",
    ),
    register: bool = typer.Option(
        False, help="Register the model, pending approval (the first version becomes champion)."
    ),
    model_name: str | None = typer.Option(None, help="Registered name (default per task)."),
    metrics_out: Path | None = typer.Option(None, help="Write the test metrics here as JSON."),
    sample: int | None = typer.Option(None, min=10, help="Train on at most this many rows (quick runs)."),
    epochs: float = typer.Option(3.0, min=0.01),
    max_steps: int | None = typer.Option(None, min=1),
    max_length: int = typer.Option(256, min=8),
    head_tokens: int = typer.Option(64, min=0, help="Tokens kept from the start of a long text."),
    batch_size: int = typer.Option(16, min=1, help="Micro-batch per worker."),
    grad_accum: int = typer.Option(1, min=1),
    learning_rate: float = typer.Option(5e-5),
    class_weight: str = typer.Option("none", help="none or balanced."),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16."),
    num_workers: int = typer.Option(1, min=1, help="Ray Train workers (data parallel)."),
    cpus_per_worker: int = typer.Option(1, min=1, help="Torch threads per worker."),
    use_gpu: bool = typer.Option(False, help="One GPU per worker."),
    checkpoint_every: int = typer.Option(0, min=0, help="Steps between checkpoints (0: at the end)."),
    resume_from: str | None = typer.Option(None, help="Continue from this checkpoint folder."),
    n_boot: int = typer.Option(1000, min=10),
    seed: int = typer.Option(0),
) -> None:
    """Fine-tune the note model on Ray Train (TorchTrainer), evaluate, log to MLflow."""
    from data.featureset import FeatureFolder
    from ml.experiment import train_text
    from ml.text import TextConfig
    from ml.text_tasks import check_task_inputs

    source = check_task_inputs(task, features, datasets)  # before starting Ray; the folder comes back open
    config = TextConfig(
        model=model,
        max_length=max_length,
        head_tokens=head_tokens,
        batch_size=batch_size,
        grad_accum=grad_accum,
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        class_weight=class_weight,
        precision=precision,
        num_workers=num_workers,
        cpus_per_worker=cpus_per_worker,
        use_gpu=use_gpu,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    init_ray()
    result = train_text(
        task,
        config,
        features=source if isinstance(source, FeatureFolder) else None,
        datasets=datasets,
        register=register,
        model_name=model_name,
        n_boot=n_boot,
        sample=sample,
        resume_from=resume_from,
    )
    emit_json(result, metrics_out)


@registry_app.command("list")
@user_errors
def list_models() -> None:
    """Every registered version with its aliases and approval state (pending, approved, rejected,
    bootstrap; `-` for versions registered before approvals)."""
    from ml import registry

    registry.configure()
    typer.echo(registry.format_table(registry.list_models()))


@registry_app.command("promote")
@user_errors
def promote(
    model: str = typer.Option(..., help="Registered model name."),
    version: str = typer.Option(..., help="Version to make champion."),
) -> None:
    """Make VERSION the champion (the previous champion is remembered for rollback)."""
    from ml import registry

    registry.configure()
    info = registry.promote(model, version)
    typer.echo(f"{info.name} v{info.version} is now {registry.CHAMPION}")


@registry_app.command("rollback")
@user_errors
def rollback(model: str = typer.Option(..., help="Registered model name.")) -> None:
    """Give the champion alias back to the version that held it before the last promotion."""
    from ml import registry

    registry.configure()
    info = registry.rollback(model)
    typer.echo(f"{info.name} v{info.version} is {registry.CHAMPION} again")


def _audit_approval(info, decision: str, approver: str, reason: str, store_url: str | None) -> None:
    """The approval's row in the audit table (monitor_events, kind `approval`); MLflow already has it,
    so an unreachable store is a loud warning, not a failure."""
    from data.config import Settings
    from monitor.decide import code_version
    from serve import control
    from serve.store import PredictionStore, StoreError

    url = store_url or Settings.from_env().resolved_store_url()
    try:
        with PredictionStore(url) as store:
            event_id = control.log_approval(
                store, decision, info.name, info.version, approver, reason, code_version()
            )
    except Exception as err:  # the store's kind of failure only: its message may hold the URL
        why = str(err) if isinstance(err, StoreError) else type(err).__name__
        typer.echo(
            f"WARNING: {info.name} v{info.version} is {decision} in MLflow, but the audit row was NOT "
            f"written to the prediction store ({why}). Record it in the audit trail by hand.",
            err=True,
        )
        return
    typer.echo(f"audit: monitor_events #{event_id} ({decision} by {approver})")


APPROVER_OPT = typer.Option(..., "--by", help="Who decides: a named person (recorded).")
REASON_OPT = typer.Option(..., "--reason", help="Why (recorded with the decision).")
AUDIT_STORE_OPT = typer.Option(
    None,
    "--store-url",
    help="Prediction store for the audit row; default MEDISCALE_STORE_URL or the data dir.",
)


@registry_app.command("approve")
@user_errors
def approve(
    model: str = typer.Argument(..., metavar="NAME", help="Registered model name."),
    version: str = typer.Argument(..., metavar="VERSION", help="Version number to approve."),
    by: str = APPROVER_OPT,
    reason: str = REASON_OPT,
    store_url: str | None = AUDIT_STORE_OPT,
) -> None:
    """Approve VERSION for patients: it becomes the challenger (its configured share of traffic
    within one alias refresh). Recorded as version tags, in the model's approval history and as an
    `approval` row of the audit table. Rejected versions cannot be approved."""
    from ml import registry

    registry.configure()
    info = registry.approve(model, version, by, reason)
    typer.echo(
        f"{info.name} v{info.version} approved by {info.tags.get('approved_by')} at "
        f"{info.tags.get('approved_at')}: now {registry.CHALLENGER} (aliases: {', '.join(info.aliases)})"
    )
    _audit_approval(info, registry.APPROVED, info.tags.get("approved_by", by), reason.strip(), store_url)


@registry_app.command("reject")
@user_errors
def reject(
    model: str = typer.Argument(..., metavar="NAME", help="Registered model name."),
    version: str = typer.Argument(..., metavar="VERSION", help="Version number to reject."),
    by: str = APPROVER_OPT,
    reason: str = REASON_OPT,
    store_url: str | None = AUDIT_STORE_OPT,
) -> None:
    """Reject VERSION: it can never be approved or promoted (register a new version instead). A
    rejected challenger is withdrawn (challenger goes back to the champion's version). Audited like
    approve."""
    from ml import registry

    registry.configure()
    info = registry.reject(model, version, by, reason)
    aliases = ", ".join(info.aliases) or "none"
    typer.echo(
        f"{info.name} v{info.version} rejected by {info.tags.get('rejected_by')} at "
        f"{info.tags.get('rejected_at')} (aliases now: {aliases})"
    )
    _audit_approval(info, registry.REJECTED, info.tags.get("rejected_by", by), reason.strip(), store_url)
