"""Load test of POST /predict: the Ray Serve app against a plain FastAPI process, and a ceiling.

Three things are measured in the same run, so a noisy shared machine affects them alike:

- `serve`: the Ray Serve application of serve/app.py (Router with its CombinedScorer ->
  TabularScorer + NoteScorer, both batching by arrival) on a local 2-CPU Ray, deployment options
  from serve/config.yaml (overridable), all traffic on the champion (weight 1.0, challenger
  0.0), shadow off. Each prediction is committed to its own SQLite store before the answer, as
  in production.
- `baseline`: one uvicorn process (one worker) with a plain FastAPI app that loads the same model
  versions from the registry and, per request, does what the Serve deployments do by calling
  serve.scoring as they do: `score_tabular` (features, calibrated tabular risk, top-5 factors),
  the note model's risk on a batch of one, `combine`, `to_prediction` for the answer (champion,
  the RouterConfig default risk bands) and `to_store_row` for the row it commits to its own SQLite
  store through serve.store.PredictionStore before answering. The endpoint is a sync `def`, so
  FastAPI runs it in its thread pool; torch uses 2 threads.
- `ceiling`: model compute only, in this process, no HTTP, no store: the same serve.scoring calls
  (`score_tabular`, note risk, `combine`) on batches of 8, 16 and 32 records, measured before and
  after the load windows; the best is reported.

Per window the report also has each server's CPU use from /proc (its process tree: for Serve every
Ray process of this run) and CPU ms per answered request, which the other jobs on the machine
distort much less than rps; and, for Serve, Ray's own metrics (time per deployment, NoteScorer
batches and mean batch size) and the replica counts seen (serve.status() every second).

The load generator is this process (asyncio + httpx, one connection per concurrent client, a
closed loop: each client sends its next request when the previous one is answered), with a
warm-up before each measured window. Requests carry a ~150-token discharge note (varied per
request), some tabular fields and a patient id. Throughput counts 200 answers completed inside
the window; p50/p99 are their latencies; errors are non-200 answers or exceptions. The client
shares the 2 cores with the servers: its CPU use is reported per window. Run:

    python bench/serve_load.py --json bench/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from common import emit  # noqa: E402

if TYPE_CHECKING:
    from serve.scoring import Scored

log = logging.getLogger("bench.serve_load")
HEADERS: dict[str, str] = {}  # the bench's own API key for the Serve app (set in start_serve)


def bench_key(folder: Path) -> dict[str, str]:
    """A `predict` key in a key file of the bench's own, used by the proxy gate and the Router
    (the environment is set before Ray starts, as `make run` does): auth is part of what is timed."""
    import os

    from serve.keys import FileKeys, create

    path = folder / "bench-keys.json"
    path.unlink(missing_ok=True)
    _, key = create(FileKeys(path), "bench", "predict", rate_per_minute=10_000_000)
    os.environ["MEDISCALE_API_KEYS_FILE"] = str(path)
    os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = "serve.gate:proxy_middlewares"
    return {"Authorization": f"Bearer {key}"}


TABULAR = "readmission-tabular"
NOTE = "readmission-notes"
APP_NAME = "mediscale"
DEPLOYMENTS = ("Router", "TabularScorer", "NoteScorer")
TOP_FACTORS = 5  # the Serve app's AppArgs.top_factors default
MEDIUM_RISK, HIGH_RISK = 0.10, 0.25  # RouterConfig defaults


# --------------------------------------------------------------------------- requests

CONDITIONS = [
    ("congestive heart failure exacerbation", "IV furosemide with good diuresis", "furosemide 40 mg daily"),
    ("community-acquired pneumonia", "IV ceftriaxone and azithromycin", "amoxicillin-clavulanate"),
    ("COPD exacerbation", "nebulized albuterol and a prednisone taper", "tiotropium inhaler daily"),
    ("NSTEMI", "heparin drip and cardiac catheterization with a DES to the LAD", "ticagrelor 90 mg BID"),
    ("cellulitis of the left leg", "IV cefazolin with decreasing erythema", "cephalexin 500 mg QID"),
    ("atrial fibrillation with RVR", "IV diltiazem, then oral metoprolol", "apixaban 5 mg BID"),
    ("diabetic ketoacidosis", "an insulin drip and IV fluids per protocol", "insulin glargine nightly"),
]
HISTORY = ["hypertension", "type 2 diabetes", "CKD stage 3", "CAD s/p CABG", "COPD", "depression", "obesity"]
DISPOSITIONS = ["home", "home with services", "skilled nursing facility", "rehabilitation facility"]
FOLLOW_UP = [
    "Follow up with PCP in 1 week and cardiology in 2 weeks.",
    "Repeat BMP in 3 days. Weigh daily and call for a gain of more than 3 lbs.",
    "Follow up in pulmonary clinic in 2 weeks. Return if short of breath.",
]


def make_note(rng: random.Random) -> str:
    """A discharge summary of about 150 MiniLM tokens; numbers and choices vary per call."""
    age, sex = rng.randint(45, 92), rng.choice(["M", "F"])
    pronoun = "He" if sex == "M" else "She"
    condition, treatment, med = rng.choice(CONDITIONS)
    history = ", ".join(rng.sample(HISTORY, 3))
    return (
        f"Discharge Summary. {age} y/o {sex} with a history of {history}, admitted with {condition}. "
        f"{pronoun} presented with {rng.randint(2, 7)} days of worsening symptoms. "
        f"Hospital course: treated with {treatment}. Creatinine {rng.uniform(0.8, 2.6):.1f}, "
        f"BNP {rng.randint(90, 1900)}, sodium {rng.randint(129, 144)}. "
        f"Vitals at discharge: BP {rng.randint(105, 165)}/{rng.randint(55, 95)}, "
        f"HR {rng.randint(58, 104)}, SpO2 {rng.randint(90, 99)}% on room air. "
        f"Discharge medications: {med}, aspirin 81 mg daily, atorvastatin 40 mg nightly. "
        f"Condition: stable. Disposition: {rng.choice(DISPOSITIONS)}. {rng.choice(FOLLOW_UP)}"
    )


def make_payload(i: int, rng: random.Random) -> dict[str, Any]:
    return {
        "patient_id": f"bench-{i:07d}",
        "age": rng.randint(45, 92),
        "sex": rng.choice(["M", "F"]),
        "admission_type": rng.choice(["EMERGENCY", "URGENT", "ELECTIVE"]),
        "los_days": round(rng.uniform(1, 14), 1),
        "prior_admissions_365d": rng.randint(0, 4),
        "blood_pressure": [rng.randint(105, 170), rng.randint(105, 170)],
        "heart_rate": rng.randint(58, 110),
        "labs": {"creatinine": [round(rng.uniform(0.7, 2.8), 2)], "sodium": rng.randint(129, 145)},
        "diagnoses": rng.sample(["I50.9", "J44.1", "E11.9", "N18.3", "I10", "J18.9"], 2),
        "clinical_note": make_note(rng),
    }


class Payloads:
    """Request bodies: a pool of varied notes and records; every request has its own patient id."""

    def __init__(self, size: int = 512, seed: int = 0):
        rng = random.Random(seed)
        self.pool = [make_payload(i, rng) for i in range(size)]
        self.count = 0

    def next(self) -> dict[str, Any]:
        body = dict(self.pool[self.count % len(self.pool)])
        body["patient_id"] = f"bench-{self.count:07d}"
        self.count += 1
        return body


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, ok=lambda body: True) -> dict:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                body = json.loads(reply.read())
                if ok(body):
                    return body
                last = str(body)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s ({last})")


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_cpu_s() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, user + system CPU seconds)} of every process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


def tree_cpu_s(roots: set[int], exclude: set[int], table: dict[int, tuple[int, float]]) -> float:
    """CPU seconds of the processes under `roots` (themselves included), minus `exclude` subtrees."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [r for r in roots if r in table]
    while stack:
        pid = stack.pop()
        if pid in exclude:
            continue
        total += table[pid][1]
        stack.extend(children.get(pid, []))
    return total


class CpuMeter:
    """CPU seconds used by the Serve side (this process's descendants: Ray's GCS, raylet, proxy,
    controller and replicas) and by the baseline server, read from /proc."""

    def __init__(self, baseline_pid: int):
        self.baseline_pid = baseline_pid

    def __call__(self) -> dict[str, float]:
        table = process_cpu_s()
        me = os.getpid()
        ray_roots = {pid for pid, (ppid, _) in table.items() if ppid == me and pid != self.baseline_pid}
        return {
            "serve": tree_cpu_s(ray_roots, {self.baseline_pid}, table),
            "baseline": tree_cpu_s({self.baseline_pid}, set(), table),
        }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def configure_registry(data_dir: Path) -> None:
    from data.config import Settings
    from ml import registry

    registry.configure(Settings.from_env().model_copy(update={"data_dir": data_dir}))


def wait_for_models(data_dir: Path, timeout_s: float) -> dict[str, str]:
    """Champion versions of both models, once `make models` has registered champion and challenger."""
    from ml import registry

    configure_registry(data_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            versions = {name: registry.resolve(name, "champion") for name in (TABULAR, NOTE)}
            registry.resolve(NOTE, "challenger")  # the last model `make models` registers
            return versions
        except Exception as exc:  # not registered yet (or the db is being created)
            if time.monotonic() > deadline:
                raise TimeoutError(f"models not registered in {data_dir} ({exc})") from exc
            log.info("waiting for registered models in %s (%s)", data_dir, type(exc).__name__)
            time.sleep(20)


def load_models(data_dir: Path, versions: dict[str, str], runtime: str = "torch", threads: int | None = None):
    from ml import registry
    from ml.combine import RiskCombiner
    from ml.tabular import TabularPredictor
    from ml.text import NotePredictor

    configure_registry(data_dir)
    tabular = registry.load_verified(TABULAR, versions[TABULAR], TabularPredictor.load)
    note = registry.load_verified(NOTE, versions[NOTE], NotePredictor.load)
    if runtime != "torch":  # as NoteScorer does: the verified fp32 model, converted after loading
        note = note.with_runtime(runtime, threads)
    stored = note.extra.get("combiner")
    return tabular, note, RiskCombiner(**stored) if stored else RiskCombiner()


def score_records(tabular, note, combiner, records, note_batch: int) -> list[Scored]:
    """What one Serve request computes, for a list of records, through serve.scoring as the
    deployments call it: `score_tabular` (features, calibrated risk, top factors; TabularScorer),
    the note model's risk for the records that have a note (NoteScorer; only when a note model is
    given) and `combine` (the Router's CombinedScorer). Returns one `serve.scoring.Scored` per record."""
    from serve.scoring import combine, score_tabular

    results = score_tabular(tabular, records, TOP_FACTORS)
    texts = [r.note_text() for r in records]
    given = [t for t in texts if t] if note is not None else []
    note_risks = iter([float(r) for r in note.risk(given, note_batch)] if given else [])
    return [
        combine(result, next(note_risks) if text and given else None, combiner if given else None)
        for result, text in zip(results, texts, strict=True)
    ]


# --------------------------------------------------------------------------- baseline server


def baseline_server(args: argparse.Namespace) -> None:
    """The plain FastAPI app (run in a subprocess by the benchmark, with --baseline-server)."""
    import torch
    import uvicorn
    from fastapi import FastAPI, Request, Response

    from data.record import PatientRecord
    from serve.records import Prediction
    from serve.scoring import to_prediction, to_store_row
    from serve.store import PredictionStore

    torch.set_num_threads(args.threads)
    versions = {TABULAR: args.tabular_version, NOTE: args.note_version}
    tabular, note, combiner = load_models(Path(args.data_dir), versions, args.note_runtime, args.threads)
    store = PredictionStore(args.store_url)  # store_note_text=False, as the Router's default
    model_versions = {"tabular": args.tabular_version, "note": args.note_version}
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "versions": model_versions, "pid": os.getpid()}

    def predict(record: PatientRecord, request: Request, response: Response) -> Prediction:
        """Router._score for one record on the champion: scored, answered and stored alike."""
        import uuid

        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        [scored] = score_records(tabular, note, combiner, [record], 1)
        prediction = to_prediction(
            rid,
            scored,
            "champion",
            dict(model_versions),
            MEDIUM_RISK,
            HIGH_RISK,
            record.note_text() is not None,
        )
        store.log_predictions([to_store_row(prediction, record, scored)])
        response.headers["x-request-id"] = rid
        return prediction

    # Annotations are strings here (future import) naming local imports: give FastAPI the classes.
    predict.__annotations__ = {
        "record": PatientRecord,
        "request": Request,
        "response": Response,
        "return": Prediction,
    }
    app.add_api_route("/predict", predict, methods=["POST"], response_model=Prediction)
    uvicorn.run(app, host="127.0.0.1", port=args.port, workers=1, log_level="warning", access_log=False)


def start_baseline(data_dir: Path, store_url: str, versions: dict[str, str], threads: int, runtime: str):
    port = free_port()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "MEDISCALE_DATA_DIR": str(data_dir),
    }
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--baseline-server",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--store-url",
        store_url,
        "--tabular-version",
        versions[TABULAR],
        "--note-version",
        versions[NOTE],
        "--threads",
        str(threads),
        "--note-runtime",
        runtime,
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", 300)
    except Exception:
        proc.kill()
        raise
    return proc, url


# --------------------------------------------------------------------------- Serve app


def deployment_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-deployment options from serve/config.yaml, with this run's overrides applied."""
    import yaml

    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    [application] = [a for a in config["applications"] if a["name"] == APP_NAME]
    keep = ("max_ongoing_requests", "autoscaling_config", "num_replicas", "ray_actor_options", "user_config")
    options = {d["name"]: {k: d[k] for k in keep if k in d} for d in application["deployments"]}
    for name in ("NoteScorer", "Router"):  # this run's own user_configs (start_serve)
        options[name].pop("user_config", None)
    if args.note_replicas:
        options["NoteScorer"].pop("autoscaling_config", None)
        options["NoteScorer"]["num_replicas"] = args.note_replicas
    if args.fixed_replicas:
        for name in DEPLOYMENTS:
            options[name].pop("autoscaling_config", None)
            options[name].setdefault("num_replicas", 1)
    if args.note_cpus is not None:
        options["NoteScorer"]["ray_actor_options"] = {"num_cpus": args.note_cpus}
    if args.small_cpus is not None:
        for name in ("Router", "TabularScorer"):
            options[name]["ray_actor_options"] = {"num_cpus": args.small_cpus}
    return options


def serve_application(app_args: dict, router: dict, note_batch: dict, options: dict):
    from serve.app import NoteScorer, Router, TabularScorer

    tabular = TabularScorer.options(**options["TabularScorer"]).bind(
        app_args["tabular_model"], app_args["data_dir"]
    )
    note = NoteScorer.options(**options["NoteScorer"], user_config=note_batch).bind(
        app_args["note_model"], app_args["data_dir"], None, app_args["note_runtime"]
    )
    return Router.options(**options["Router"], user_config=router).bind(tabular, note, app_args)


def batch_stats() -> dict[str, Any]:
    """Each scorer's batch counters (serve/batching.py), as one replica of it reports them."""
    from ray import serve

    return {
        name: serve.get_deployment_handle(name, APP_NAME).batch_stats.remote().result(timeout_s=30)
        for name in ("TabularScorer", "NoteScorer")
    }


def mean_batch_sizes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    """Requests per batch over a window (warm-up included) of the replica that answered: exact
    while a scorer has one replica (replicas_during_top_concurrency says whether it had more)."""
    out: dict[str, float | None] = {}
    for name in after:
        batches = after[name].batches - before[name].batches
        out[name] = round((after[name].items - before[name].items) / batches, 2) if batches else None
    return out


def replica_counts() -> dict[str, dict[str, int]]:
    from ray import serve

    status = serve.status().applications[APP_NAME].deployments
    return {
        name: {str(getattr(state, "value", state)): n for state, n in status[name].replica_states.items()}
        for name in DEPLOYMENTS
        if name in status
    }


class ReplicaPoller:
    """serve.status() every second in a thread: replica states per deployment over a window."""

    def __init__(self, every_s: float = 1.0):
        self.every_s = every_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append(
                    {"t_s": round(time.perf_counter() - self._t0, 1), "replicas": replica_counts()}
                )
            self._stop.wait(self.every_s)

    def __enter__(self) -> ReplicaPoller:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict:
        running: dict[str, list[int]] = {}
        for sample in self.samples:
            for name, states in sample["replicas"].items():
                running.setdefault(name, []).append(states.get("RUNNING", 0))
        changes, last = [], None
        for sample in self.samples:
            if sample["replicas"] != last:
                changes.append(sample)
                last = sample["replicas"]
        return {
            "running_min_max": {n: [min(v), max(v)] for n, v in running.items()},
            "changes": changes,
            "samples": len(self.samples),
        }


# Prometheus metrics of Ray Serve, scraped around each Serve window (deltas). Ray records a
# histogram observation as its bucket's midpoint, so histogram means are approximate; the batch
# size is exact: NoteScorer requests / batches processed.
METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
WANTED = {
    "ray_serve_deployment_processing_latency_ms": "processing_ms",
    "ray_serve_batch_execution_time_ms": "batch_execution_ms",
    "ray_serve_batch_wait_time_ms": "batch_wait_ms",
    "ray_serve_batches_processed": "batches",
}


def scrape(port: int | None) -> dict[tuple[str, str], float]:
    """{(metric_sum|_count|_total, deployment): value} for the series in WANTED."""
    if port is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if not match:
            continue
        base, _, kind = match["name"].rpartition("_")
        if kind not in ("sum", "count", "total") or base not in WANTED:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        key = (f"{WANTED[base]}_{kind}", labels.get("deployment") or labels.get("function_name") or "?")
        out[key] = out.get(key, 0.0) + float(match["value"])
    return out


def metric_means(before: dict, after: dict) -> dict[str, Any]:
    """Per deployment over a window: request count, approximate mean processing time, and the
    scorers' batches, mean batch size (exact), approximate batch wait and execution times."""

    def delta(name: str, key: str) -> float:
        return after.get((name, key), 0.0) - before.get((name, key), 0.0)

    out: dict[str, Any] = {}
    for name, key in after:
        if not name.endswith("_count"):
            continue
        base, count = name[: -len("_count")], delta(name, key)
        if count > 0:
            out.setdefault(f"{base}_approx_mean", {})[key] = round(delta(f"{base}_sum", key) / count, 1)
            if base == "processing_ms":
                out.setdefault("requests", {})[key] = int(count)
    for deployment, prefix in (("NoteScorer", "note"), ("TabularScorer", "tabular")):
        batches = delta("batches_total", deployment)
        if batches > 0:
            out[f"{prefix}_batches"] = int(batches)
            out[f"{prefix}_mean_batch_size"] = round(delta("processing_ms_count", deployment) / batches, 2)
    return out


def start_serve(args: argparse.Namespace, data_dir: Path, store_url: str, options: dict):
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import LoggingConfig

    HEADERS.update(bench_key(data_dir))
    metrics_port = free_port()
    log.info("Ray metrics on port %d", metrics_port)
    for attempt in range(5):  # an overloaded machine can miss Ray's fixed 30 s raylet start-up wait
        try:
            ray.init(
                address="local",
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="WARNING",
                _metrics_export_port=metrics_port,
                _system_config={"metrics_report_interval_ms": 1000},
            )
            break
        except Exception as exc:
            log.warning("ray.init failed (attempt %d): %s", attempt + 1, exc)
            with contextlib.suppress(Exception):
                ray.shutdown()
            if attempt == 4:
                raise
            time.sleep(30)
    port = free_port()
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=port, request_timeout_s=30))
    app_args = {
        "tabular_model": TABULAR,
        "note_model": NOTE,
        "data_dir": str(data_dir),
        "store_url": store_url,
        "top_factors": TOP_FACTORS,
        "note_runtime": args.note_runtime,
    }
    router = {
        "variants": {
            "champion": {"weight": 1.0, "tabular": "champion", "note": "champion"},
            "challenger": {"weight": 0.0, "tabular": "challenger", "note": "challenger"},
        },
        "shadow": False,
        "alias_refresh_s": 30,
    }
    note_batch = {"max_batch_size": args.max_batch_size}
    serve.run(
        serve_application(app_args, router, note_batch, options),
        name=APP_NAME,
        route_prefix="/",
        logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False),
    )
    url = f"http://127.0.0.1:{port}"
    health = wait_http(f"{url}/healthz", 300, ok=lambda body: body.get("status") == "ok")
    return url, metrics_port, health, {"router": router, "note_batch": note_batch}


def stop_serve() -> None:
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        serve.shutdown()
    with contextlib.suppress(Exception):
        ray.shutdown()


# --------------------------------------------------------------------------- load generator


async def load_window(
    url: str, payloads: Payloads, concurrency: int, warmup_s: float, duration_s: float, meter, server: str
):
    """Closed loop with `concurrency` clients; results of requests answered inside the window."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done: list[tuple[float, float, str]] = []  # (answered at, latency s, "200" / status / exception)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=httpx.Timeout(120.0), headers=HEADERS
    ) as client:
        started = time.perf_counter()
        window_start, window_end = started + warmup_s, started + warmup_s + duration_s
        marks: dict[str, Any] = {}

        async def one_client() -> None:
            while time.perf_counter() < window_end:
                body = payloads.next()
                sent = time.perf_counter()
                try:
                    outcome = str((await client.post("/predict", json=body)).status_code)
                except Exception as exc:
                    outcome = type(exc).__name__
                answered = time.perf_counter()
                done.append((answered, answered - sent, outcome))

        async def mark_window() -> None:
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            marks["start"] = (time.process_time(), cpu_times(), os.getloadavg()[0], meter())
            await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
            marks["end"] = (time.process_time(), cpu_times(), meter())

        await asyncio.gather(mark_window(), *(one_client() for _ in range(concurrency)))
    inside = [(lat, outcome) for at, lat, outcome in done if window_start <= at <= window_end]
    latencies = [lat * 1000 for lat, outcome in inside if outcome == "200"]
    failures = Counter(outcome for _, outcome in inside if outcome != "200")
    (cpu0, (busy0, total0), load1, trees0), (cpu1, (busy1, total1), trees1) = marks["start"], marks["end"]
    server_cpu = trees1[server] - trees0[server]
    other = "baseline" if server == "serve" else "serve"
    return {
        "rps": round(len(latencies) / duration_s, 2),
        "p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "errors": sum(failures.values()),
        "error_kinds": dict(failures),
        "requests": len(inside),
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "server_cpu_ms_per_request": round(1000 * server_cpu / len(latencies), 1) if latencies else None,
        "server_cpu_pct": round(100 * server_cpu / duration_s, 1),
        "idle_other_server_cpu_pct": round(100 * (trees1[other] - trees0[other]) / duration_s, 1),
        "client_cpu_pct": round(100 * (cpu1 - cpu0) / duration_s, 1),
        "machine_cpu_busy_pct": round(100 * (busy1 - busy0) / max(total1 - total0, 1), 1),
        "loadavg_1m_at_start": round(load1, 2),
    }


def check(url: str, payloads: Payloads) -> dict:
    """One request before any load: it must succeed (a broken set-up is not a benchmark)."""
    import httpx

    reply = httpx.post(f"{url}/predict", json=payloads.next(), headers=HEADERS, timeout=120)
    if reply.status_code != 200:
        raise RuntimeError(f"{url}/predict answered {reply.status_code}: {reply.text[:500]}")
    return reply.json()


def measure(
    url: str, payloads: Payloads, concurrency: int, args: argparse.Namespace, meter, server: str
) -> dict:
    result = asyncio.run(load_window(url, payloads, concurrency, args.warmup, args.duration, meter, server))
    log.info("%s c=%d: %s", url, concurrency, result)
    return result


# --------------------------------------------------------------------------- ceiling


def ceiling(tabular, note, combiner, payloads: Payloads, batch_sizes: list[int], seconds: float) -> dict:
    """score_records (serve.scoring, as the deployments) per batch, for `seconds` per batch size."""
    from data.record import PatientRecord

    records = [PatientRecord.model_validate(payloads.next()) for _ in range(256)]
    by_batch = {}
    for size in batch_sizes:
        score_records(tabular, note, combiner, records[:size], size)  # warm-up
        per_record, n, started, i = [], 0, time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            batch = [records[(i + k) % len(records)] for k in range(size)]
            i += size
            t0 = time.perf_counter()
            score_records(tabular, note, combiner, batch, size)
            per_record.append((time.perf_counter() - t0) * 1000 / size)
            n += size
        elapsed = time.perf_counter() - started
        by_batch[size] = {
            "rps": round(n / elapsed, 2),
            "p50_ms": round(percentile(per_record, 50), 2),
            "p99_ms": round(percentile(per_record, 99), 2),
            "errors": 0,
            "batch_size": size,
            "batches": len(per_record),
        }
        log.info("ceiling batch %d: %s", size, by_batch[size])
    return by_batch


def component_costs(tabular, note, payloads: Payloads, threads: int, repeats: int = 10) -> dict:
    """CPU milliseconds per record (process time, so less sensitive to other jobs than wall time)
    of the tabular path (serve.scoring.score_tabular: features + risk + top factors, as
    TabularScorer does per call) and of the note model (torch on 1 thread, as a NoteScorer replica
    with num_cpus 1), per call of 1 record and of 16 records."""
    import torch

    from data.record import PatientRecord
    from serve.scoring import score_tabular

    records = [PatientRecord.model_validate(payloads.next()) for _ in range(16)]

    def tab(batch):
        score_tabular(tabular, batch, TOP_FACTORS)

    def cpu_ms_per_record(fn, batch) -> float:
        fn(batch)
        started = time.process_time()
        for _ in range(repeats):
            fn(batch)
        return round((time.process_time() - started) * 1000 / repeats / len(batch), 1)

    out: dict[str, float] = {}
    for size in (1, 16):
        out[f"tabular_batch{size}"] = cpu_ms_per_record(tab, records[:size])
    torch.set_num_threads(1)  # CPU time of 2 threads counts OpenMP spinning too
    for size in (1, 16):
        out[f"note_batch{size}"] = cpu_ms_per_record(
            lambda batch: note.risk([r.note_text() for r in batch], len(batch)), records[:size]
        )
    torch.set_num_threads(threads)
    return out


def note_tokens(note, payloads: Payloads) -> dict:
    from ml.text import encode

    texts = [p["clinical_note"] for p in payloads.pool]
    raw = [len(ids) for ids in note.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    model_in = [
        len(ids) for ids in encode(note.tokenizer, texts, note.config.max_length, note.config.head_tokens)
    ]
    return {
        "note_tokens_mean": round(statistics.fmean(raw), 1),
        "note_tokens_min_max": [min(raw), max(raw)],
        "note_chars_mean": round(statistics.fmean(len(t) for t in texts)),
        "model_input_tokens_mean": round(statistics.fmean(model_in), 1),
        "note_model_max_length": note.config.max_length,
        "note_model_head_tokens": note.config.head_tokens,
    }


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict:
    import torch

    data_dir = Path(args.data_dir).resolve()
    os.environ["MEDISCALE_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    versions = wait_for_models(data_dir, args.wait_models_s)
    load_at_start = round(os.getloadavg()[0], 2)
    log.info("champion versions: %s", versions)
    store_dir = data_dir / "bench" / "serve"
    store_dir.mkdir(parents=True, exist_ok=True)
    stores = {name: store_dir / f"{name}_predictions.db" for name in ("serve", "baseline")}
    for path in stores.values():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    payloads = Payloads(seed=args.seed)
    torch.set_num_threads(args.threads)
    tabular, note, combiner = load_models(data_dir, versions, args.note_runtime, args.threads)
    tokens = note_tokens(note, payloads)
    model = note.model
    note_info = {
        "base": note.config.model,
        "architecture": type(model).__name__,
        "layers": model.config.num_hidden_layers,
        "hidden": model.config.hidden_size,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }
    log.info("note model %s, tokens %s", note_info, tokens)

    costs = component_costs(tabular, note, payloads, args.threads)
    log.info("CPU ms per record: %s", costs)
    # The ceiling is measured before the load windows and again after them (servers idle), and the
    # faster of the two is kept per batch size: an upper bound is best estimated by the max.
    ceilings = [ceiling(tabular, note, combiner, payloads, args.ceiling_batches, args.ceiling_seconds)]

    options = deployment_options(args)
    report: dict[str, Any] = {"serve": {}, "baseline": {}, "ceiling": {}}
    serve_extra: dict[str, Any] = {}
    proc = None
    try:
        proc, baseline_url = start_baseline(
            data_dir, f"sqlite:///{stores['baseline']}", versions, args.threads, args.note_runtime
        )
        serve_url, metrics_port, health, user_configs = start_serve(
            args, data_dir, f"sqlite:///{stores['serve']}", options
        )
        served = {v["tabular"] for v in health["variants"].values()} | {
            v["note"] for v in health["variants"].values()
        }
        if health["variants"]["champion"] != {"tabular": versions[TABULAR], "note": versions[NOTE]}:
            raise RuntimeError(f"Serve resolved other versions than the baseline: {served} vs {versions}")
        answers = {"serve": check(serve_url, payloads), "baseline": check(baseline_url, payloads)}
        for name, answer in answers.items():
            log.info("%s answers: %s", name, {k: answer[k] for k in ("risk", "model_versions", "components")})
        replicas_at_start = replica_counts()
        meter = CpuMeter(proc.pid)
        for k, concurrency in enumerate(args.concurrency):
            order = ["serve", "baseline"] if k % 2 == 0 else ["baseline", "serve"]
            for which in order:
                if which == "baseline":
                    report["baseline"][str(concurrency)] = measure(
                        baseline_url, payloads, concurrency, args, meter, "baseline"
                    )
                    continue
                before = scrape(metrics_port)
                batches_before = batch_stats()
                with ReplicaPoller() as poller:
                    report["serve"][str(concurrency)] = measure(
                        serve_url, payloads, concurrency, args, meter, "serve"
                    )
                time.sleep(2.5)  # metrics are reported every second
                serve_extra[str(concurrency)] = {
                    "metrics_means": metric_means(before, scrape(metrics_port)),
                    "mean_batch_size": mean_batch_sizes(batches_before, batch_stats()),
                    "replicas": poller.summary(),
                }
        replicas_at_end = replica_counts()
        ceilings.append(
            ceiling(tabular, note, combiner, payloads, args.ceiling_batches, args.ceiling_seconds)
        )
    finally:
        stop_serve()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    del tabular, note, combiner
    by_batch = {size: max((c[size] for c in ceilings), key=lambda r: r["rps"]) for size in ceilings[0]}
    best = max(by_batch.values(), key=lambda r: r["rps"])
    for concurrency in args.concurrency:
        report["ceiling"][str(concurrency)] = {k: best[k] for k in ("rps", "p50_ms", "p99_ms", "errors")} | {
            "batch_size": best["batch_size"]
        }
    top = str(max(args.concurrency))
    s, b, c = report["serve"][top], report["baseline"][top], best
    report["setup"] = {
        "versions": {
            "models": {TABULAR: versions[TABULAR], NOTE: versions[NOTE]},
            "note_model": note_info,
            "python": platform.python_version(),
            **{m: __import__(m).__version__ for m in ("ray", "torch", "fastapi", "uvicorn", "httpx")},
        },
        "machine": {
            "cpus": os.cpu_count(),
            "ray_num_cpus": 2,
            "shared_with_other_jobs": True,
            "loadavg_1m_at_start_and_end": [load_at_start, round(os.getloadavg()[0], 2)],
        },
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "request": {
            **tokens,
            "fields": sorted(payloads.pool[0]),
            "variation": "note numbers/choices and tabular values vary (pool of 512), unique patient_id",
        },
        "serve": {
            "batching": user_configs["note_batch"],
            "router_user_config": user_configs["router"],
            "deployment_options": options,
            "replicas_at_start": replicas_at_start,
            "replicas_at_end": replicas_at_end,
            "replicas_during_top_concurrency": serve_extra.get(top, {}).get("replicas"),
            "ray_serve_metrics_by_concurrency": {k: v["metrics_means"] for k, v in serve_extra.items()},
            "mean_batch_size_by_concurrency": {k: v["mean_batch_size"] for k, v in serve_extra.items()},
            "ray_serve_metrics_note": "deltas over warm-up + window; histogram means are approximate "
            "(Ray records bucket midpoints); *_mean_batch_size is exact (requests / batches)",
            "store": str(stores["serve"]),
            "note_torch_threads": "int(NoteScorer num_cpus), as serve.app._threads sets it",
        },
        "baseline": {
            "server": "FastAPI sync endpoint (thread pool) on uvicorn, 1 process, 1 worker, no batching",
            "torch_threads": args.threads,
            "note_runtime": args.note_runtime,
            "per_request": "serve.scoring as the deployments call it: score_tabular (features, tabular "
            "risk, top-5 factors), note risk (batch 1), combine, to_prediction, and to_store_row's "
            "PredictionStore row (SQLite, committed before the answer)",
            "store": str(stores["baseline"]),
        },
        "ceiling": {
            "what": "in-process, no HTTP, no store: serve.scoring score_tabular (features, tabular "
            "risk, top-5 factors) + note risk + combine per batch; p50/p99 are batch time per record",
            "torch_threads": args.threads,
            "seconds_per_batch_size": args.ceiling_seconds,
            "rps_before_and_after_load_windows": {
                str(size): [c[size]["rps"] for c in ceilings] for size in ceilings[0]
            },
            "by_batch_size": {str(k): v for k, v in by_batch.items()},
        },
        "component_cpu_ms_per_record": costs,
        "client": "this process: asyncio + httpx.AsyncClient, max_connections = concurrency, closed loop; "
        "shares the 2 cores with the servers (client_cpu_pct per window)",
        "cpu_accounting": "server_cpu_ms_per_request / server_cpu_pct: user+system CPU of the server's "
        "process tree over the window from /proc (serve: every Ray process this run started - GCS, "
        "raylet, proxy, controller, replicas; baseline: the uvicorn process); idle_other_server_cpu_pct "
        "is what the other, idle server used meanwhile; 100% = one core",
        "order": "per concurrency both servers are up; serve and baseline windows alternate order",
    }
    report["targets"] = {
        "concurrency": int(top),
        "serve_rps_over_baseline_rps": round(s["rps"] / b["rps"], 2) if b["rps"] else None,
        "serve_p99_ms": s["p99_ms"],
        "baseline_p99_ms": b["p99_ms"],
        "serve_p99_over_baseline_p99": round(s["p99_ms"] / b["p99_ms"], 2)
        if s["p99_ms"] and b["p99_ms"]
        else None,
        "serve_rps_over_ceiling_rps": round(s["rps"] / c["rps"], 2) if c["rps"] else None,
        "serve_cpu_ms_per_request": s.get("server_cpu_ms_per_request"),
        "baseline_cpu_ms_per_request": b.get("server_cpu_ms_per_request"),
        "loadavg_1m_at_window_start": {
            "serve": s["loadavg_1m_at_start"],
            "baseline": b["loadavg_1m_at_start"],
        },
    }
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    from ml.note_runtime import RUNTIMES
    from serve.settings import AppArgs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per window")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before each window")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--data-dir", default="artifacts")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (baseline and ceiling)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="NoteScorer notes per forward pass")
    parser.add_argument("--note-replicas", type=int, default=0, help="fixed NoteScorer replicas (0: config)")
    parser.add_argument("--fixed-replicas", action="store_true", help="no autoscaling: 1 replica each")
    parser.add_argument("--note-cpus", type=float, help="NoteScorer num_cpus (default: config.yaml)")
    parser.add_argument("--small-cpus", type=float, help="Router/TabularScorer num_cpus")
    parser.add_argument(
        "--note-runtime",
        choices=RUNTIMES,
        default=AppArgs.model_fields["note_runtime"].default,
        help="note model runtime for serve, baseline and ceiling alike (default: the served default)",
    )
    parser.add_argument("--ceiling-batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--ceiling-seconds", type=float, default=10.0)
    parser.add_argument("--wait-models-s", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=0)
    # internal: the baseline server subprocess
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store-url", help=argparse.SUPPRESS)
    parser.add_argument("--tabular-version", help=argparse.SUPPRESS)
    parser.add_argument("--note-version", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse(argv)
    if args.baseline_server:
        baseline_server(args)
        return
    emit(run(args), args.json)


if __name__ == "__main__":
    main()
