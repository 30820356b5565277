"""The feature folder: the one layout every source ends in and every model reads.

    OUT/manifest.json          what is inside (features and types, counts, label rate, source)
    OUT/{train,valid,test}/    parquet files, one row per admission

Rows are split by a salted hash of the patient id, so a patient never appears in two splits
and the split does not change when rows are added or reordered.

A step that reads the rows opens the folder once as a `FeatureFolder` (resolved and verified)
and passes that object on, rather than the path, to the steps after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from data.schema import SCHEMA_VERSION
from data.storage import MANIFEST_NAME, Location, resolve, staged_output

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SALT = "mediscale-split-v1"
LABEL = "label"
SPLIT_COLUMN = "split"
FEATURE_FORMAT = "mediscale-features"


class FeatureFolderError(ValueError):
    """A feature folder is missing, incomplete or not what the caller expects."""


def split_of(patient_ids: Sequence[Any], fractions: Sequence[float] = DEFAULT_FRACTIONS) -> np.ndarray:
    """Deterministic split name per patient id: stable across runs, machines and row order."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1: {fractions}")
    bounds = np.cumsum(np.asarray(fractions) * 10_000)
    buckets = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(f"{SPLIT_SALT}:{pid}".encode(), digest_size=8).digest(), "big")
            % 10_000
            for pid in patient_ids
        ),
        dtype=np.int64,
        count=len(patient_ids),
    )
    index = np.searchsorted(bounds, buckets, side="right")
    return np.asarray(SPLITS, dtype=object)[np.minimum(index, 2)]


@dataclass
class FeatureSpec:
    """What a feature folder holds, beyond its rows: written as manifest.json."""

    source: dict[str, Any]
    id_columns: list[str]
    text_column: str | None = None
    label_column: str = LABEL
    fractions: Sequence[float] = DEFAULT_FRACTIONS
    extra: dict[str, Any] = field(default_factory=dict)


def feature_type(dtype: pa.DataType) -> str:
    """How a model should treat a column: numeric, boolean or categorical."""
    if pa.types.is_boolean(dtype):
        return "boolean"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return "numeric"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_dictionary(dtype):
        return "categorical"
    raise FeatureFolderError(f"unsupported feature type {dtype}")


def _split_stats(folder: Location, split: str, spec: FeatureSpec) -> tuple[dict[str, Any], pa.Schema | None]:
    files = folder.child(split).list_files(".parquet")
    if not files:
        return {"rows": 0, "patients": 0, "positives": 0, "label_rate": None, "files": 0}, None
    dataset = pads.dataset(files, filesystem=folder.fs, format="parquet")
    patient_col = spec.id_columns[-1]
    table = dataset.to_table(columns=[patient_col, spec.label_column])
    labels = table.column(spec.label_column).to_numpy(zero_copy_only=False)
    rows = table.num_rows
    positives = int(np.sum(labels))
    stats = {
        "rows": rows,
        "patients": len(table.column(patient_col).unique()),
        "positives": positives,
        "label_rate": positives / rows if rows else None,
        "files": len(files),
    }
    return stats, dataset.schema


def write_manifest(folder: Location, spec: FeatureSpec) -> dict[str, Any]:
    """Count rows, patients and labels per split from the written files and save the manifest."""
    splits: dict[str, Any] = {}
    schema: pa.Schema | None = None
    for split in SPLITS:
        splits[split], split_schema = _split_stats(folder, split, spec)
        schema = schema or split_schema
    if schema is None:
        raise FeatureFolderError(f"{folder.uri}: no rows were written to any split")
    reserved = {*spec.id_columns, spec.label_column, spec.text_column, SPLIT_COLUMN}
    features = [
        {"name": f.name, "type": feature_type(f.type), "dtype": str(f.type)}
        for f in schema
        if f.name not in reserved
    ]
    manifest = {
        "format": FEATURE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": spec.source,
        "id_columns": spec.id_columns,
        "label_column": spec.label_column,
        "text_column": spec.text_column,
        "features": features,
        "split": {"method": "patient-hash", "salt": SPLIT_SALT, "fractions": list(spec.fractions)},
        "splits": splits,
        **spec.extra,
    }
    folder.child(MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return manifest


def hive_to_split_dirs(staging: Location) -> None:
    """Rename `split=train/` partitions (what partitioned parquet writers make) to `train/`."""
    for split in SPLITS:
        src, dest = staging.child(f"{SPLIT_COLUMN}={split}"), staging.child(split)
        if not src.exists():
            continue
        if not staging.is_s3:
            staging.fs.move(src.path, dest.path)
            continue
        for path in src.list_files():  # object stores move keys, not folders
            staging.fs.move(path, dest.path + path[len(src.path) :])


def write_feature_frame(
    df: pd.DataFrame, out: str, spec: FeatureSpec, overwrite: bool = False
) -> dict[str, Any]:
    """Split a pandas frame by patient and publish it as a feature folder (small sources)."""
    missing = [c for c in [*spec.id_columns, spec.label_column] if c not in df.columns]
    if missing:
        raise FeatureFolderError(f"feature frame lacks column(s) {missing}")
    if df.empty:
        raise FeatureFolderError("feature frame has no rows")
    table = _one_schema(pa.Table.from_pandas(df, preserve_index=False), spec)
    splits = split_of(df[spec.id_columns[-1]].to_numpy(), spec.fractions)
    target = resolve(out)
    with staged_output(target, overwrite) as staging:
        for split in SPLITS:
            part = table.filter(pa.array(splits == split))
            if part.num_rows == 0:
                continue
            dest = staging.child(split)
            staging.fs.create_dir(dest.path, recursive=True)
            pads.write_dataset(
                part,
                dest.path,
                filesystem=staging.fs,
                format="parquet",
                basename_template="part-{i}.parquet",
                max_rows_per_file=500_000,
                max_rows_per_group=100_000,
                existing_data_behavior="overwrite_or_ignore",
            )
        manifest = write_manifest(staging, spec)
    log.info("wrote feature folder %s: %s", target.uri, _counts(manifest))
    return manifest


def _one_schema(table: pa.Table, spec: FeatureSpec) -> pa.Table:
    """One schema for all splits: an all-null text column is text, an all-null feature an error."""
    for i, f in enumerate(table.schema):
        if pa.types.is_null(f.type):
            if f.name != spec.text_column:
                raise FeatureFolderError(f"column {f.name!r} has no values in any row")
            table = table.set_column(i, f.name, table.column(i).cast(pa.string()))
    return table


def _counts(manifest: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v['rows']}" for k, v in manifest["splits"].items())


def _read_manifest(location: Location) -> dict[str, Any]:
    manifest_file = location.child(MANIFEST_NAME)
    if not manifest_file.exists():
        raise FeatureFolderError(
            f"{location.uri}: no {MANIFEST_NAME} (not a feature folder, or an unfinished one)"
        )
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("format") != FEATURE_FORMAT:
        raise FeatureFolderError(f"{manifest_file.uri}: not a MediScale feature manifest")
    return manifest


def _split_files(location: Location, split: str) -> list[str]:
    if split not in SPLITS:
        raise FeatureFolderError(f"unknown split {split!r}; expected one of {SPLITS}")
    return location.child(split).list_files(".parquet")


def _read_files(location: Location, split: str, files: list[str], columns: list[str] | None) -> pd.DataFrame:
    if not files:
        raise FeatureFolderError(f"{location.uri}: split {split!r} has no rows")
    return pads.dataset(files, filesystem=location.fs, format="parquet").to_table(columns=columns).to_pandas()


def _label_problems(manifest: dict[str, Any], need_positives: bool) -> list[str]:
    train = manifest["splits"]["train"]
    if not train["rows"]:
        return ["train: no rows"]
    if need_positives and not train["positives"]:
        return [f"train: no positive labels in {manifest['label_column']!r}"]
    return []


def _schema_problems(location: Location, manifest: dict[str, Any], files: dict[str, list[str]]) -> list[str]:
    expected = {f["name"]: f["type"] for f in manifest["features"]}
    fixed = [*manifest["id_columns"], manifest["label_column"]]
    if manifest.get("text_column"):
        fixed.append(manifest["text_column"])
    problems: list[str] = []
    for split in SPLITS:
        if not files[split]:
            if manifest["splits"][split]["rows"]:
                problems.append(f"{split}: manifest says {manifest['splits'][split]['rows']} rows, no files")
            continue
        schema = pads.dataset(files[split], filesystem=location.fs, format="parquet").schema
        missing = [c for c in [*fixed, *expected] if c not in schema.names]
        extra = [c for c in schema.names if c not in expected and c not in fixed]
        if missing:
            problems.append(f"{split}: missing column(s) {missing}")
        if extra:
            problems.append(f"{split}: column(s) {extra} are not in the manifest")
        for name, kind in expected.items():
            if name in schema.names:
                try:
                    actual = feature_type(schema.field(name).type)
                except FeatureFolderError:
                    actual = str(schema.field(name).type)
                if actual != kind:
                    problems.append(f"{split}: column {name!r} is {actual}, manifest says {kind}")
    return problems


@dataclass(frozen=True)
class FeatureFolder:
    """A checked feature folder, opened once: where it is (with its filesystem client), its
    manifest and its files per split.

    Pass this down rather than the path: a path is resolved again at each step (a new S3 client
    each time) and, by the steps that need a sound folder, verified again. It pickles (pyarrow
    filesystems do, S3 keys included), so it can go to Ray workers as it is. The files are those
    listed when it was opened: every later read sees the same snapshot as the manifest.
    """

    location: Location
    manifest: dict[str, Any] = field(repr=False)
    files: dict[str, list[str]] = field(repr=False)

    @classmethod
    def open(
        cls, folder: str | os.PathLike[str] | FeatureFolder, need_positives: bool = True
    ) -> FeatureFolder:
        """Resolve and verify a feature folder; an already open one comes back as it is.

        Names the split and column for a missing or extra column, a type that no longer matches
        the manifest, an empty train split, or (`need_positives`) a train split without positive
        labels: what a model relies on.
        """
        if isinstance(folder, FeatureFolder):
            if problems := _label_problems(folder.manifest, need_positives):  # opened less strictly
                raise FeatureFolderError(f"{folder.uri}: " + "; ".join(problems))
            return folder
        location = resolve(folder)
        manifest = _read_manifest(location)
        files = {split: _split_files(location, split) for split in SPLITS}
        problems = _schema_problems(location, manifest, files) + _label_problems(manifest, need_positives)
        if problems:
            raise FeatureFolderError(f"{location.uri}: " + "; ".join(problems))
        return cls(location, manifest, files)

    @property
    def uri(self) -> str:
        return self.location.uri

    @property
    def fs(self) -> pafs.FileSystem:
        return self.location.fs

    @property
    def id_columns(self) -> list[str]:
        return list(self.manifest["id_columns"])

    @property
    def patient_column(self) -> str:
        """The id that splits and groups rows (the last id column)."""
        return self.manifest["id_columns"][-1]

    @property
    def label_column(self) -> str:
        return self.manifest["label_column"]

    @property
    def text_column(self) -> str | None:
        return self.manifest.get("text_column")

    @property
    def features(self) -> list[dict[str, Any]]:
        """The feature columns as the manifest lists them: name, type, dtype."""
        return self.manifest["features"]

    @property
    def feature_names(self) -> list[str]:
        return [f["name"] for f in self.manifest["features"]]

    def split_files(self, split: str) -> list[str]:
        """The parquet files of one split, as paths in `fs` (what Ray Data or pandas then reads)."""
        if split not in SPLITS:
            raise FeatureFolderError(f"unknown split {split!r}; expected one of {SPLITS}")
        return list(self.files[split])

    def read_split(self, split: str, columns: list[str] | None = None) -> pd.DataFrame:
        """One split as a pandas frame (for small data, evaluation and tests)."""
        return _read_files(self.location, split, self.split_files(split), columns)

    def __str__(self) -> str:
        return self.uri


def read_manifest(folder: str | os.PathLike[str] | FeatureFolder) -> dict[str, Any]:
    """The manifest of a complete feature folder, unverified (a quick look); a clear error if there
    is none. Steps that read the rows use `FeatureFolder.open`."""
    if isinstance(folder, FeatureFolder):
        return folder.manifest
    return _read_manifest(resolve(folder))


def read_split_pandas(
    folder: str | os.PathLike[str] | FeatureFolder, split: str, columns: list[str] | None = None
) -> pd.DataFrame:
    """One split as a pandas frame, without verifying the folder (tests, benchmarks)."""
    if isinstance(folder, FeatureFolder):
        return folder.read_split(split, columns)
    location = resolve(folder)
    return _read_files(location, split, _split_files(location, split), columns)
