"""`python -m tune ...`: hyperparameter searches on Ray Tune, one command per model.

Each command is a thin shell over a pure function (`tune.xgboost_search.tune_xgboost`): it
joins the cluster (RAY_ADDRESS under `ray job submit`, else a local Ray), runs the search,
retrains and registers the best configuration (pending approval: `python -m ml registry approve`
exposes it), and prints the JSON result on stdout. Tune's progress table and the best-trials
summary go to stderr, so stdout can be piped.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import typer

from data.runtime import init_ray, setup_logging, user_errors

app = typer.Typer(help="MediScale hyperparameter searches (Ray Tune).", no_args_is_help=True)
log = logging.getLogger("tune")

# Shared by every search command.
NAME_OPTION = typer.Option(
    None, help="Experiment name: <data dir>/tune/NAME. New searches default to <model>-<timestamp>."
)
RESUME_OPTION = typer.Option(
    False, help="Resume the interrupted search NAME (default: the latest one); other options are ignored."
)
MAX_CONCURRENT_OPTION = typer.Option(None, min=1, help="Trials at once (default: the cluster's CPUs).")
JSON_OUT_OPTION = typer.Option(None, help="Also write the JSON result here.")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(verbose)


def _default_name(model: str) -> str:
    from datetime import datetime

    return f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _emit(result: dict, json_out: Path | None) -> None:
    from ml.cli import emit_json

    emit_json(result, json_out)


@app.command("xgboost")
@user_errors
def xgboost_search(
    features: str | None = typer.Option(None, help="Feature folder (local path or s3://)."),
    num_samples: int = typer.Option(16, min=1, help="Trials (the first is the TabularConfig default)."),
    max_concurrent: int | None = MAX_CONCURRENT_OPTION,
    resume: bool = RESUME_OPTION,
    name: str | None = NAME_OPTION,
    register: bool = typer.Option(True, help="Register the retrained best model (pending approval)."),
    max_rounds: int = typer.Option(400, min=1, help="Boosting rounds cap per trial."),
    report_every: int = typer.Option(10, min=1, help="Report to Tune every N rounds."),
    grace_period: int | None = typer.Option(None, min=1, help="ASHA grace period in rounds (2 x report)."),
    reduction_factor: float = typer.Option(3.0, min=1.01, help="ASHA reduction factor."),
    early_stopping_rounds: int = typer.Option(30, min=1),
    model_name: str = typer.Option("readmission-tabular", help="Registered model name."),
    n_boot: int = typer.Option(1000, min=10, help="Bootstrap resamples for the test CIs."),
    seed: int = typer.Option(0, help="Seeds the sampler and XGBoost."),
    json_out: Path | None = JSON_OUT_OPTION,
) -> None:
    """Tune the XGBoost readmission model (random search + ASHA), then retrain and register the best."""
    from data.featureset import FeatureFolder
    from tune.xgboost_search import (
        SearchConfig,
        SearchInterrupted,
        check_new,
        check_resumable,
        latest_experiment,
        tune_xgboost,
    )

    # Bad input fails here, before Ray starts.
    folder = None
    if resume:
        config = None
        name = name or latest_experiment()
        check_resumable(name)
    else:
        if not features:
            raise typer.BadParameter("--features is required for a new search", param_hint="--features")
        folder = FeatureFolder.open(features)  # once: the search and its retrain get this object
        config = SearchConfig(
            features=folder.uri,
            name=name or _default_name("xgboost"),
            num_samples=num_samples,
            max_concurrent=max_concurrent,
            max_rounds=max_rounds,
            report_every=report_every,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            early_stopping_rounds=early_stopping_rounds,
            seed=seed,
            model_name=model_name,
            register_best=register,
            n_boot=n_boot,
        )
        check_new(config.name)
    init_ray()
    try:
        # Tune prints its progress table on stdout; keep stdout for the JSON result.
        with contextlib.redirect_stdout(sys.stderr):
            result = tune_xgboost(
                config,
                resume_name=name if resume else None,
                on_summary=lambda table: typer.echo(f"\nbest trials:\n{table}\n", err=True),
                features=folder,
            )
    except SearchInterrupted as err:
        typer.echo(f"interrupted: {err}", err=True)
        raise typer.Exit(code=130) from None
    _emit(result, json_out)


@app.command("text")
@user_errors
def text_search(
    task: str = typer.Option("readmission", help="readmission, negex or mtsdialog."),
    features: str | None = typer.Option(None, help="Feature folder with notes (readmission task)."),
    datasets: str | None = typer.Option(None, help="Shared datasets folder (negex, mtsdialog)."),
    num_samples: int = typer.Option(4, min=1, help="Trials (the first is the TextConfig default)."),
    max_concurrent: int = typer.Option(1, min=1, help="Trials at once (each is a Ray Train run)."),
    resume: bool = RESUME_OPTION,
    name: str | None = NAME_OPTION,
    register: bool = typer.Option(True, help="Register the best trial's model (pending approval)."),
    max_steps: int = typer.Option(60, min=1, help="Optimizer steps per trial."),
    eval_every: int = typer.Option(20, min=1, help="Steps between validation reports (ASHA rungs)."),
    sample: int | None = typer.Option(None, min=10, help="Train rows per trial (quick searches)."),
    model: str | None = typer.Option(None, help="Hugging Face id or folder (default: the bundled MiniLM)."),
    max_length: int = typer.Option(128, min=8),
    cpus_per_worker: int = typer.Option(1, min=1),
    use_gpu: bool = typer.Option(False),
    n_boot: int = typer.Option(500, min=10),
    seed: int = typer.Option(0),
    json_out: Path | None = JSON_OUT_OPTION,
) -> None:
    """Tune the note model (random search + ASHA on validation loss); register the best trial."""
    from data.featureset import FeatureFolder
    from ml.text_tasks import check_task_inputs
    from tune.experiments import SearchInterrupted, check_new, check_resumable, latest_experiment
    from tune.text_search import TextSearchConfig, run_text_search

    folder = None
    if resume:
        search = None
        name = name or latest_experiment()
        check_resumable(name)
    else:
        source = check_task_inputs(task, features, datasets)  # before starting Ray
        folder = source if isinstance(source, FeatureFolder) else None  # the search gets it open
        search = TextSearchConfig(
            task=task,
            name=name or _default_name(f"text-{task}"),
            features=folder.uri if folder else features,
            datasets=datasets,
            sample=sample,
            num_samples=num_samples,
            max_concurrent=max_concurrent,
            max_steps=max_steps,
            eval_every=eval_every,
            model=model,
            max_length=max_length,
            cpus_per_worker=cpus_per_worker,
            use_gpu=use_gpu,
            seed=seed,
            register_best=register,
            n_boot=n_boot,
        )
        check_new(search.name)
    init_ray()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = run_text_search(search, resume_name=name if resume else None, features=folder)
    except SearchInterrupted as err:
        typer.echo(f"interrupted: {err}", err=True)
        raise typer.Exit(code=130) from None
    typer.echo(f"\nbest trials:\n{result.pop('table')}\n", err=True)
    _emit(result, json_out)
