"""Check a raw EHR folder against data.schema and report every problem at once.

A hospital export that fails should fail with the whole list (missing tables, missing or
mistyped columns, null ids, impossible values, dangling keys), each naming the table, column
and number of bad rows, so one round trip fixes it. Values are checked in streamed record
batches with pyarrow compute, so memory stays bounded by a batch plus the id sets.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from data.raw import table_files
from data.schema import ITEM_RANGES, OPTIONAL_TABLES, REQUIRED_TABLES, TABLES
from data.storage import Location, resolve

log = logging.getLogger(__name__)

# Tables that may legitimately be empty (e.g. the MIMIC-III demo has no lab or chart events).
MAY_BE_EMPTY = ("diagnoses", "labs", "vitals", "notes")
VALID_SEX = ("M", "F", "U")


@dataclass(frozen=True)
class Problem:
    table: str
    column: str | None
    kind: str
    rows: int
    detail: str

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        count = f" ({self.rows} rows)" if self.rows else ""
        return f"{where}: {self.kind}{count}: {self.detail}"


@dataclass
class ValidationReport:
    source: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"{self.source}: valid ({', '.join(f'{t}={n}' for t, n in self.rows.items())})"
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise RawDataError(self)


class RawDataError(ValueError):
    """The raw folder is not usable; carries the full report."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.summary())
        self.report = report


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Types we accept because they cast losslessly enough for the pipeline."""
    if actual.equals(expected) or pa.types.is_null(actual):
        return True
    if pa.types.is_dictionary(actual):
        return _compatible(actual.value_type, expected)
    groups = (
        (pa.types.is_string, lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
        (pa.types.is_floating, lambda t: pa.types.is_integer(t) or pa.types.is_floating(t)),
        (pa.types.is_integer, pa.types.is_integer),
        (pa.types.is_timestamp, lambda t: pa.types.is_timestamp(t) and t.tz is None),
        (pa.types.is_date, lambda t: pa.types.is_date(t) or pa.types.is_timestamp(t)),
        (pa.types.is_boolean, pa.types.is_boolean),
    )
    return any(is_expected(expected) and accepts(actual) for is_expected, accepts in groups)


class _TableCheck:
    """Streams one table's batches and counts rule violations."""

    def __init__(self, folder: Location, name: str, report: ValidationReport):
        self.name = name
        self.report = report
        self.files = table_files(folder, name)
        self.fs = folder.fs
        self.counts: Counter[tuple[str | None, str, str]] = Counter()
        self.other_units: Counter[tuple[str, str]] = Counter()  # (item, unit) -> rows
        self.columns: list[str] = []

    def problem(self, column: str | None, kind: str, rows: int, detail: str) -> None:
        self.report.problems.append(Problem(self.name, column, kind, rows, detail))

    def check_schema(self) -> bool:
        if not self.files:
            if self.name in REQUIRED_TABLES:
                self.problem(
                    None, "missing table", 0, f"expected {self.name}/*.parquet or {self.name}.parquet"
                )
            return False
        try:
            actual = pads.dataset(self.files, filesystem=self.fs, format="parquet").schema
        except (pa.ArrowInvalid, OSError) as err:
            self.problem(None, "unreadable", 0, str(err))
            return False
        for f in TABLES[self.name]:
            if f.name not in actual.names:
                self.problem(f.name, "missing column", 0, f"expected {f.type}")
            elif not _compatible(actual.field(f.name).type, f.type):
                self.problem(f.name, "wrong type", 0, f"found {actual.field(f.name).type}, expected {f.type}")
            else:
                self.columns.append(f.name)
        return True

    def scan(self, id_sets: dict[str, pa.Array]) -> None:
        dataset = pads.dataset(self.files, filesystem=self.fs, format="parquet")
        columns = [c for c in self.columns if c != "text"]
        rows = 0
        for batch in dataset.to_batches(columns=columns, batch_size=256_000):
            rows += batch.num_rows
            self._check_batch(batch, id_sets)
        if "text" in self.columns:  # note text only needs a null count; read nothing else
            for batch in dataset.to_batches(columns=["text"], batch_size=64_000):
                self._count("text", "null text", batch.column(0).null_count, "note without text")
        self.report.rows[self.name] = rows
        if rows == 0:
            if self.name in MAY_BE_EMPTY:
                self.report.warnings.append(f"{self.name} is empty")
            else:
                self.problem(None, "empty table", 0, "no rows")
        for (column, kind, detail), n in sorted(self.counts.items(), key=str):
            self.problem(column, kind, n, detail)
        for (item, unit), n in sorted(self.other_units.items()):
            expected = ITEM_RANGES[self.name][item].unit
            self.report.warnings.append(
                f"{self.name}: {n} {item} rows in {unit}, not {expected}: not range-checked, "
                "and the features use the values as given"
            )

    def _count(self, column: str | None, kind: str, n: int, detail: str) -> None:
        if n:
            self.counts[(column, kind, detail)] += int(n)

    def _check_batch(self, batch: pa.RecordBatch, id_sets: dict[str, pa.Array]) -> None:
        schema = TABLES[self.name]
        for f in schema:
            if f.name in batch.schema.names and not f.nullable:
                self._count(f.name, "null values", batch.column(f.name).null_count, "id must not be null")
        for key, parent in (("patient_id", "patients"), ("admission_id", "admissions")):
            if key in batch.schema.names and parent != self.name and parent in id_sets:
                keys = pc.drop_null(batch.column(key)).cast(pa.string())
                dangling = pc.sum(pc.invert(pc.is_in(keys, value_set=id_sets[parent])))
                self._count(
                    key, "dangling foreign key", dangling.as_py() or 0, f"no matching row in {parent}"
                )
        names = batch.schema.names
        if self.name == "admissions" and {"admit_time", "discharge_time"} <= set(names):
            admit = batch.column("admit_time").cast(pa.timestamp("us"))
            discharge = batch.column("discharge_time").cast(pa.timestamp("us"))
            bad = pc.sum(pc.less(discharge, admit)).as_py() or 0
            self._count("discharge_time", "impossible value", bad, "discharge before admission")
        if self.name == "patients" and "sex" in names:
            bad = pc.sum(pc.invert(pc.is_in(batch.column("sex"), value_set=pa.array(VALID_SEX)))).as_py()
            self._count("sex", "invalid value", bad or 0, f"expected one of {VALID_SEX}")
        if self.name == "diagnoses" and "icd_version" in names:
            bad = pc.sum(
                pc.invert(pc.is_in(batch.column("icd_version").cast(pa.int64()), value_set=pa.array([9, 10])))
            ).as_py()
            self._count("icd_version", "invalid value", bad or 0, "expected 9 or 10")
        if self.name in ITEM_RANGES and {"item", "value"} <= set(names):
            self._check_ranges(batch)

    def _check_ranges(self, batch: pa.RecordBatch) -> None:
        """Ranges hold in the schema's unit; a row whose `unit` names another unit (a lab that
        switched creatinine to umol/L) is a warning, not an error: the values may well be right,
        and refusing the whole extract would stop every downstream stage."""
        items = batch.column("item")
        values = batch.column("value").cast(pa.float64())
        units = batch.column("unit").cast(pa.string()) if "unit" in batch.schema.names else None
        for item, r in ITEM_RANGES[self.name].items():
            mask = pc.equal(items, item)
            if units is not None:
                other = pc.fill_null(pc.and_(mask, pc.not_equal(units, r.unit)), False)
                if pc.any(other).as_py():
                    for unit, n in Counter(pc.filter(units, other).to_pylist()).items():
                        self.other_units[(item, unit)] += n
                    mask = pc.and_(mask, pc.invert(other))
            out = pc.or_(pc.less(values, r.low), pc.greater(values, r.high))
            bad = pc.sum(pc.and_(mask, out)).as_py() or 0
            self._count("value", "impossible value", bad, f"{item} outside {r.low}-{r.high} {r.unit}")


def _distinct_ids(check: _TableCheck, column: str) -> pa.Array:
    dataset = pads.dataset(check.files, filesystem=check.fs, format="parquet")
    ids = dataset.to_table(columns=[column]).column(column).combine_chunks().cast(pa.string())
    distinct = pc.unique(ids.drop_null())
    duplicates = len(ids) - ids.null_count - len(distinct)
    if duplicates:
        check.problem(column, "duplicate key", duplicates, f"{column} must be unique in {check.name}")
    return distinct


def validate_raw(path: str) -> ValidationReport:
    """Validate the raw EHR folder at `path` (local or s3://); never raises for bad data."""
    folder = resolve(path)
    report = ValidationReport(source=folder.uri)
    if not folder.exists():
        report.problems.append(Problem("(folder)", None, "missing folder", 0, f"{folder.uri} does not exist"))
        return report
    checks = {name: _TableCheck(folder, name, report) for name in (*REQUIRED_TABLES, *OPTIONAL_TABLES)}
    readable = {name: check.check_schema() for name, check in checks.items()}
    id_sets: dict[str, pa.Array] = {}
    for parent, key in (("patients", "patient_id"), ("admissions", "admission_id")):
        if readable[parent] and key in checks[parent].columns:
            id_sets[parent] = _distinct_ids(checks[parent], key)
    for name, check in checks.items():
        if readable[name]:
            check.scan(id_sets)
    for warning in report.warnings:
        log.warning("%s: %s", folder.uri, warning)
    return report
