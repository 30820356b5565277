"""`python -m data ...`: generate, import, validate and featurize EHR data."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from data.runtime import init_ray, setup_logging, user_errors

app = typer.Typer(help="MediScale data layer: raw EHR folders and feature folders.", no_args_is_help=True)
import_app = typer.Typer(help="Convert a real public dataset.", no_args_is_help=True)
app.add_typer(import_app, name="import")
log = logging.getLogger("data")

JSON_OPTION = typer.Option(None, "--json", help="Also write the full manifest to this file.")


def _summary(manifest: dict[str, Any], json_path: Path | None) -> None:
    """Counts for people on stdout; the whole manifest for scripts in --json (Ray may log to stdout)."""
    counts = manifest.get("splits") or manifest.get("tables")
    typer.echo(json.dumps(counts, indent=2))
    if json_path:
        json_path.write_text(json.dumps(manifest, indent=2))


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(verbose)


@app.command()
@user_errors
def synth(
    patients: int = typer.Option(..., min=1, help="Number of patients to generate."),
    out: str = typer.Option(..., help="Raw EHR folder to write (local path or s3://)."),
    seed: int = typer.Option(0, help="Same seed and patient count, same data."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
    shift: list[str] = typer.Option(
        [],
        "--shift",
        help="Shifted scenario, repeatable or comma-separated: older_hf, creatinine_umol, "
        "note_template, missing_lab_feed (see data/README.md). Default: none.",
    ),
    json_path: Path | None = JSON_OPTION,
) -> None:
    """Generate a synthetic MIMIC-style raw EHR folder with Ray tasks."""
    from data.synth import generate, parse_shifts

    shifts = parse_shifts(shift)  # a typo fails here, before Ray starts
    init_ray()
    _summary(generate(patients, seed, out, overwrite=overwrite, shift=shifts), json_path)


@app.command()
@user_errors
def validate(raw: str = typer.Argument(..., help="Raw EHR folder (local path or s3://).")) -> None:
    """Check a raw EHR folder against the schema; lists every problem at once."""
    from data.validate import validate_raw

    report = validate_raw(raw)
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(report.summary(), err=not report.ok)
    if not report.ok:
        raise typer.Exit(code=1)


@app.command()
@user_errors
def features(
    raw: str = typer.Option(..., help="Raw EHR folder (local path or s3://)."),
    out: str = typer.Option(..., help="Feature folder to write (local path or s3://)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
    json_path: Path | None = JSON_OPTION,
    partitions: int = typer.Option(0, min=0, help="Shuffle partitions; 0 picks from data size."),
    shuffle: bool = typer.Option(
        False, help="Shuffle on the patient even when the raw folder is written in patient parts."
    ),
) -> None:
    """Validate, engineer per-admission features and split by patient, with Ray Data."""
    from data.features import build_features

    init_ray()
    manifest = build_features(raw, out, overwrite=overwrite, partitions=partitions or None, shuffle=shuffle)
    _summary(manifest, json_path)


@app.command()
@user_errors
def records(
    raw: str = typer.Option(..., help="Raw EHR folder (local path or s3://)."),
    out: Path = typer.Option(..., help="JSON lines file to write: one {admission_id, split, record} a line."),
    split: str | None = typer.Option(None, help="Only this split's admissions (train, valid or test)."),
    limit: int | None = typer.Option(None, min=1, help="At most this many admissions."),
) -> None:
    """`POST /predict` bodies for the admissions of a raw folder, to replay real rows."""
    from data.replay import write_records

    typer.echo(json.dumps({"records": write_records(raw, str(out), split, limit), "out": str(out)}))


@app.command()
def schema() -> None:
    """Print the raw EHR schema every source converts into."""
    from data.schema import describe

    typer.echo(describe())


@import_app.command("uci-diabetes")
@user_errors
def import_uci(
    src: Path = typer.Option(..., help="dataset_diabetes.zip, diabetic_data.csv or their folder."),
    out: str = typer.Option(..., help="Feature folder to write."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
    json_path: Path | None = JSON_OPTION,
) -> None:
    """UCI Diabetes 130-US hospitals -> feature folder split by patient_nbr."""
    from data.sources import import_uci_diabetes

    _summary(import_uci_diabetes(str(src), out, overwrite=overwrite), json_path)


@import_app.command("mimic3")
@user_errors
def import_mimic(
    src: Path = typer.Option(..., help="Folder with the MIMIC-III CSV files."),
    out: str = typer.Option(..., help="Raw EHR folder to write."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
    json_path: Path | None = JSON_OPTION,
) -> None:
    """MIMIC-III (full or demo) -> raw EHR folder; then run `features` on it."""
    from data.sources import import_mimic3

    _summary(import_mimic3(str(src), out, overwrite=overwrite), json_path)
