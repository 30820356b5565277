"""`python -m ml ...`: train models and manage the MLflow registry."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from data.runtime import init_ray, setup_logging, user_errors

app = typer.Typer(help="MediScale models: training and the MLflow registry.", no_args_is_help=True)
registry_app = typer.Typer(
    help="Registered models and their champion/challenger aliases.", no_args_is_help=True
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
    from ml.batch import score_features

    init_ray()
    emit_json(score_features(features, model, out, split or None, overwrite), json_out)


@app.command("train-tabular")
@user_errors
def train_tabular(
    features: str = typer.Option(..., help="Feature folder (local path or s3://)."),
    register: bool = typer.Option(False, help="Register the model (alias challenger; champion if first)."),
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
    from ml.experiment import train_tabular as run
    from ml.tabular import TabularConfig

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
    result = run(features, config, register=register, model_name=model_name, n_boot=n_boot)
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
    register: bool = typer.Option(False, help="Register the model (alias challenger; champion if first)."),
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
    from ml.experiment import train_text
    from ml.text import TextConfig
    from ml.text_tasks import check_task_inputs

    check_task_inputs(task, features, datasets)  # before starting Ray
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
        features=features,
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
    """Every registered version with its aliases."""
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
