"""`python -m serve keys ...`: the service's API keys (create prints a key once; only its hash is kept)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from data.runtime import setup_logging, user_errors

app = typer.Typer(help="MediScale service administration.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys with roles: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

FILE_OPT = typer.Option(
    None, "--file", help="Key file to manage (default MEDISCALE_API_KEYS_FILE, else the store database)."
)
STORE_OPT = typer.Option(None, "--store-url", help="Prediction store database (default: the settings').")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(verbose)


def _source(file: Path | None, store_url: str | None):
    """`--file`, else `--store-url`'s table, else the settings' choice (key file, else store)."""
    from data.config import Settings
    from serve.keys import DatabaseKeys, FileKeys, open_source
    from serve.store import PredictionStore

    if file is not None:
        return FileKeys(file)
    if store_url is not None:
        return DatabaseKeys(PredictionStore(store_url))
    return open_source(Settings.from_env())


@keys_app.command("create")
@user_errors
def create(
    role: str = typer.Option(..., "--role", help="predict, feedback, read or admin."),
    name: str = typer.Option(..., "--name", help="Who or what holds the key (appears in the audit)."),
    rate_per_minute: int | None = typer.Option(
        None, "--rate-per-minute", help="Own limit (default: the settings')."
    ),
    file: Path | None = FILE_OPT,
    store_url: str | None = STORE_OPT,
    quiet: bool = typer.Option(False, "--quiet", help="Print only the key."),
) -> None:
    """Create a key and print it once: it cannot be shown again (only its hash is stored)."""
    from serve.keys import create as create_key

    record, secret = create_key(_source(file, store_url), name, role, rate_per_minute)
    if quiet:
        typer.echo(secret)
        return
    typer.echo(f"created key {record.name!r} (role {record.role}); it is shown only now:")
    typer.echo(secret)


@keys_app.command("list")
@user_errors
def list_keys(
    file: Path | None = FILE_OPT,
    store_url: str | None = STORE_OPT,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Names, roles, limits and dates (never a key or its hash)."""
    records = _source(file, store_url).records()
    rows = [
        {
            "name": r.name,
            "role": r.role,
            "rate_per_minute": r.rate_per_minute,
            "created_at": r.created_at,
            "revoked_at": r.revoked_at,
        }
        for r in records
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        typer.echo(f"{row['name']:<24} {row['role']:<9} {state:<32} created {row['created_at']}")


@keys_app.command("revoke")
@user_errors
def revoke(
    name: str = typer.Argument(..., help="The key's name."),
    file: Path | None = FILE_OPT,
    store_url: str | None = STORE_OPT,
) -> None:
    """Revoke a key: every proxy and replica refuses it within a few seconds."""
    record = _source(file, store_url).revoke(name)
    typer.echo(f"revoked key {record.name!r} (role {record.role}) at {record.revoked_at}")
