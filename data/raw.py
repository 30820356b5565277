"""Reading and writing raw EHR folders (`DIR/<table>/*.parquet` or `DIR/<table>.parquet`).

Every source (the synthetic generator, the MIMIC-III adapter, a hospital's own export)
produces this layout, so the validator and the feature pipeline have one input format.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data.schema import SCHEMA_VERSION, TABLES
from data.storage import MANIFEST_NAME, Location, resolve, staged_output

log = logging.getLogger(__name__)

RAW_FORMAT = "mediscale-raw"


def table_files(folder: Location, table: str) -> list[str]:
    """Parquet files holding `table`: a `table/` folder of parts, or one `table.parquet`."""
    single = folder.child(f"{table}.parquet")
    if single.is_file():
        return [single.path]
    return folder.child(table).list_files(".parquet")


def to_raw_table(frame: pd.DataFrame | pa.Table, table: str) -> pa.Table:
    """Cast a frame to the schema of `table`, naming the column when a cast is impossible."""
    schema = TABLES[table]
    arrow = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    missing = [f.name for f in schema if f.name not in arrow.column_names]
    if missing:
        raise ValueError(f"table {table!r} lacks column(s) {missing}")
    columns = []
    for f in schema:
        try:
            columns.append(arrow.column(f.name).cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise ValueError(f"table {table!r} column {f.name!r}: cannot cast to {f.type}: {err}") from err
    return pa.Table.from_arrays(columns, schema=schema)


def part_file(part: int) -> str:
    """The file name of part `part` of a table (what `write_part` writes)."""
    return f"part-{part:05d}.parquet"


def write_part(folder: Location, table: str, data: pa.Table, part: int) -> str:
    """Write one part file of a table; parts of one table can be written by parallel tasks."""
    dest = folder.child(table)
    folder.fs.create_dir(dest.path, recursive=True)
    path = dest.child(part_file(part)).path
    pq.write_table(data, path, filesystem=folder.fs, compression="zstd")
    return path


PARTITION_KEY = "patient_id"


def write_raw_manifest(
    folder: Location, source: dict[str, Any], rows: dict[str, int], patient_parts: int | None = None
) -> dict[str, Any]:
    """`patient_parts` = N claims that `part-k` of every table (k < N) holds exactly the rows of
    one set of patients, their stays and everything recorded during those stays: the feature
    pipeline then needs no shuffle (`data.features`), and checks the claim part by part."""
    manifest: dict[str, Any] = {
        "format": RAW_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "tables": rows,
    }
    if patient_parts is not None:
        manifest["partitioning"] = {"key": PARTITION_KEY, "parts": patient_parts}
    folder.child(MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return manifest


def write_raw_folder(
    out: str, tables: dict[str, pd.DataFrame | pa.Table], source: dict[str, Any], overwrite: bool = False
) -> dict[str, Any]:
    """Publish whole tables (small sources) as a raw EHR folder, all or nothing."""
    arrow = {name: to_raw_table(frame, name) for name, frame in tables.items()}
    target = resolve(out)
    with staged_output(target, overwrite) as staging:
        for name, data in arrow.items():
            write_part(staging, name, data, 0)
        manifest = write_raw_manifest(staging, source, {n: t.num_rows for n, t in arrow.items()})
    log.info("wrote raw EHR folder %s: %s", target.uri, manifest["tables"])
    return manifest
