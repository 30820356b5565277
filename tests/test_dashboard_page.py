"""The monitoring page `GET /dashboard`: its renderers on real report dicts (fast), then the page
app on the session's Ray cluster, opened in headless Chromium and read back through the
`data-metric` hooks against `python -m monitor report --json -` on the same store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from prerequisites import missing
from test_monitor_decide import START, fill

from monitor import html, svg
from monitor.page import drift_rows, report_path
from monitor.report import report
from monitor.service import Routing
from serve.control import events, log_event
from serve.store import PredictionStore

REPO = Path(__file__).resolve().parents[1]
AS_OF = START + timedelta(days=45)  # about half the predictions matured
WEIGHTS = Routing({"champion": 0.5, "challenger": 0.5}, 0.25, "test")


# --------------------------------------------------------------------------- reading the page


class Hooks(HTMLParser):
    """Every element with a data-metric attribute, its attributes and its text; and every <svg>."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[dict] = []
        self.open: list[dict] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if "data-metric" in attributes:
            entry = {**attributes, "text": ""}
            self.hooks.append(entry)
            self.open.append(entry)
        elif self.open:
            self.open.append({})

    def handle_endtag(self, tag: str) -> None:
        if self.open:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for entry in self.open:
            if "data-metric" in entry:
                entry["text"] += data


def hooks(page: str) -> list[dict]:
    parser = Hooks()
    parser.feed(page)
    return parser.hooks


def svgs(page: str) -> list[str]:
    out, start = [], 0
    while (i := page.find("<svg", start)) >= 0:
        end = page.index("</svg>", i) + len("</svg>")
        out.append(page[i:end])
        start = end
    return out


def lookup(document: dict, path: str):
    node = document
    for part in path.split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def check_against(page: str, document: dict) -> int:
    """Every hooked number with a path equals the JSON's figure rounded as displayed."""
    checked = 0
    for hook in hooks(page):
        path = hook.get("data-path")
        if not path:
            continue
        value = lookup(document, path)
        digits = int(hook["data-digits"])
        expected = "" if value is None else f"{value:.{digits}f}"
        assert hook["data-value"] == expected, (hook["data-metric"], path, hook["data-value"], value)
        if path.endswith("/value"):
            ci = lookup(document, path[: -len("/value")]).get("ci95")
            if ci and value is not None:
                assert hook["data-low"] == f"{ci[0]:.{digits}f}"
                assert hook["data-high"] == f"{ci[1]:.{digits}f}"
        checked += 1
    return checked


# --------------------------------------------------------------------------- fast: renderers


@pytest.fixture
def store(tmp_path: Path):
    with PredictionStore(f"sqlite:///{tmp_path / 'predictions.db'}") as db:
        yield db


def _render(found: dict, drift: list | None = None, decisions: list | None = None) -> str:
    return html.page(found, decisions or [], drift or [], generated_at="2026-02-15T00:00:00+00:00")


def test_empty_store_is_a_plain_empty_page(store: PredictionStore) -> None:
    found = report(store, WEIGHTS, as_of=AS_OF, n_boot=0)
    page = _render(found)
    assert found["empty"] and "No experiment to show yet" in page and "no predictions" in page
    assert "No drift check yet" in page and "No decision yet" in page
    assert {h["data-metric"] for h in hooks(page)} == {"empty"}


def test_before_any_outcome_is_due_the_page_says_so_and_shows_estimates(store: PredictionStore) -> None:
    fill(store, 200, seed=2)
    found = report(store, WEIGHTS, as_of=START + timedelta(days=5), n_boot=0)
    page = _render(found)
    assert "No matured, labelled patients yet" in page and "No curves yet" in page
    assert check_against(page, json.loads(json.dumps(found))) > 10
    assert {"champion.expected_auroc", "traffic.srm_p"} <= {h["data-metric"] for h in hooks(page)}


def test_numbers_on_the_page_are_the_report_rounded_as_displayed(store: PredictionStore) -> None:
    fill(store, 500, seed=3)
    found = report(store, WEIGHTS, as_of=AS_OF, n_boot=20)
    page = _render(found)
    assert check_against(page, json.loads(json.dumps(found))) > 80
    names = {h["data-metric"]: h for h in hooks(page)}
    auroc = found["champion"]["served"]["auroc"]
    shown = names["champion.auroc"]["text"]
    assert shown == f"{auroc['value']:.3f} ({auroc['ci95'][0]:.3f}–{auroc['ci95'][1]:.3f})"
    hooked = ("challenger.brier", "champion.calibration_slope", "paired.brier_difference", "traffic.srm_p")
    for name in hooked:
        assert names[name]["data-value"], name
    assert "Sex: F" in page and "Age band: 45-64" in page
    assert names["champion.sensitivity"]["text"].split()[0].endswith("%")


def test_no_patient_key_request_id_or_feature_value_reaches_the_page(store: PredictionStore) -> None:
    from serve.store import patient_key

    fill(store, 300, seed=4)
    page = _render(report(store, WEIGHTS, as_of=AS_OF, n_boot=0))
    frame = store.joined()
    assert not frame.empty
    for key in frame["patient_key"].dropna().unique()[:50]:
        assert key not in page
    assert patient_key("s4-p0", salt="test") not in page
    assert "s4-r" not in page and "s4-p" not in page  # request ids and patient ids of fill()
    assert '"age"' not in page


def test_every_plot_is_well_formed_svg(store: PredictionStore) -> None:
    fill(store, 400, seed=5)
    page = _render(report(store, WEIGHTS, as_of=AS_OF, n_boot=0))
    plots = svgs(page)
    assert len(plots) >= 6  # traffic, coverage, ROC + calibration, and again on the same patients
    for plot in plots:
        root = ET.fromstring(plot)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert root.find("{http://www.w3.org/2000/svg}title") is not None
    roc = next(p for p in plots if "ROC curve" in p)
    assert roc.count("<polyline") == 2 and "chance" in roc
    ET.fromstring(svg.roc_plot({"champion": None}))  # nothing to draw is still a valid picture


def test_drift_summary_shows_the_newest_check_per_variant_and_only_named_fields(
    store: PredictionStore, tmp_path: Path
) -> None:
    assert drift_rows(events(store, kind="drift")) == []
    old = log_event(store, "drift", "old", {"report_path": "/nowhere.html"}, "t", variant="challenger")
    new = log_event(
        store,
        "drift",
        "newer",
        {
            "report_path": str(tmp_path / "r.html"),
            "mlflow_run_id": "abc123",
            "drifted_columns": ["age", "creatinine_last"],
            "sample": [{"patient": "p-secret"}],
        },
        "t",
        variant="challenger",
        model_versions={"tabular": "2"},
        drift_share=0.25,
    )
    rows = drift_rows(events(store, kind="drift"))
    assert [r["id"] for r in rows] == [new] and old != new
    page = _render(report(store, WEIGHTS, as_of=AS_OF, n_boot=0), drift=rows)
    assert f'href="/dashboard/drift/{new}"' in page and "creatinine_last" in page and "abc123" in page
    assert "p-secret" not in page and "No drift check yet" not in page
    assert report_path({"html": {"path": "/x.html"}}) == "/x.html" and report_path({}) is None


def test_decision_reasons_and_gates_in_plain_words(store: PredictionStore) -> None:
    from monitor.decide import decide, history
    from monitor.rule import RuleConfig

    fill(store, 800, seed=6, challenger_sd=0.5)
    rule = RuleConfig(min_labels=200, min_events=20, cs_n_opt=1000, max_labels=3000, looks=6)
    decide(store, WEIGHTS, rule, as_of=START + timedelta(days=40))
    decided = decide(store, WEIGHTS, rule, as_of=AS_OF)
    page = _render(report(store, WEIGHTS, as_of=AS_OF, n_boot=0), decisions=history(store))
    assert html.OUTCOMES[decided.outcome][0] in page
    assert "Traffic split matches the configured weights" in page and "Decision history" in page
    assert page.count("<tr>") > 10 and f"#{decided.id}" in page
    for reason in decided.reasons:
        assert html.escape(reason) in page


# --------------------------------------------------------------------------- the real page in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    if CHROMIUM:
        return CHROMIUM
    missing("chromium not installed: the browser test needs headless Chromium")


def _browser(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [_chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )


COLUMNS = [{"column": "creatinine_last", "drifted": True}]
SCREENSHOT = Path(os.environ.get("MEDISCALE_DASHBOARD_SCREENSHOT", "/tmp/mediscale-dashboard.png"))


@pytest.mark.slow
@pytest.mark.ray
def test_the_page_in_a_browser_shows_the_cli_report(serve_port: int, tmp_path: Path) -> None:
    from serving import KEYS, auth, deploy

    _chromium()  # skip (or fail under CI) before deploying anything
    url = f"sqlite:///{tmp_path / 'page.db'}"
    with PredictionStore(url) as db:
        fill(db, 400, seed=7, challenger_sd=0.5)
    as_of = AS_OF.isoformat()
    deploy(
        {
            "name": "dashboard",
            "route_prefix": "/dashboard",
            "import_path": "monitor.page:build_app",
            "args": {"store_url": url, "service_url": ""},
            "deployments": [{"name": "Dashboard", "ray_actor_options": {"num_cpus": 0.1}}],
        }
    )
    base = f"http://127.0.0.1:{serve_port}/dashboard"
    # The browser logs in with HTTP Basic auth (any user name, the key as the password), as a
    # clinician's browser does after the page's 401 prompt.
    signed_in = f"http://reader:{KEYS['read']}@127.0.0.1:{serve_port}/dashboard"
    try:
        refused = _browser("--dump-dom", f"{base}?as_of={as_of.replace('+', '%2B')}")
        assert "<svg" not in refused.stdout and "champion" not in refused.stdout  # 401: no page
        page_url = f"{signed_in}?as_of={as_of.replace('+', '%2B')}"
        shot = _browser(f"--screenshot={SCREENSHOT}", "--window-size=1400,3000", page_url)
        assert SCREENSHOT.is_file(), shot.stderr[-2000:]
        png = SCREENSHOT.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
        dom = _browser("--dump-dom", page_url)
        assert dom.returncode == 0 and "<svg" in dom.stdout, dom.stderr[-2000:]

        cli = subprocess.run(
            [sys.executable, "-m", "monitor", "report", "--as-of", as_of, "--store-url", url, "--service", "",
             "--json", "-"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr[-2000:]
        expected = json.loads(cli.stdout)
        assert check_against(dom.stdout, expected) > 80
        shown = {h["data-metric"]: h for h in hooks(dom.stdout)}
        auroc = expected["champion"]["served"]["auroc"]["value"]
        assert shown["champion.auroc"]["data-value"] == f"{auroc:.3f}"
        assert "No drift check yet" in dom.stdout
        assert "s7-r" not in dom.stdout and "s7-p" not in dom.stdout  # fill()'s request and patient ids

        with httpx.Client(headers=auth(), timeout=60, follow_redirects=True) as http:
            assert http.get(f"{base}/drift/999").status_code == 404
            served = http.get(f"{base}/report.json", params={"as_of": as_of}).json()
            assert served["paired"]["brier_difference"] == expected["paired"]["brier_difference"]
            assert http.get(f"{base}/healthz").json() == {"ok": True}
            direct = http.get(base, params={"as_of": as_of}, follow_redirects=False)
            assert direct.status_code == 200 and direct.headers["content-type"].startswith("text/html")
            assert http.get(base, params={"as_of": "yesterday"}).status_code == 422
            report_file = tmp_path / "drift.html"
            report_file.write_text("<html><body><h1>Evidently data drift</h1></body></html>")
            with PredictionStore(url) as db:
                good = log_event(
                    db, "drift", "2 of 8 columns drifted",
                    {"html": str(report_file), "mlflow_run_id": "run-1", "drifted_columns": COLUMNS},
                    "test", variant="challenger", model_versions={"tabular": "2"}, drift_share=0.25,
                )  # fmt: skip
                gone = log_event(
                    db, "drift", "no file", {"html": str(tmp_path / "gone.html")}, "test",
                    variant="champion", drift_share=0.0,
                )  # fmt: skip
            http.get(base, params={"as_of": "2026-02-01"})  # a fresh cache key: the cache is per query
            page = http.get(base, params={"as_of": as_of}).text
            page = page if f"/drift/{good}" in page else _wait_for(http, base, as_of, f"/drift/{good}")
            assert f'href="/dashboard/drift/{good}"' in page and "No drift check yet" not in page
            opened = http.get(f"{base}/drift/{good}")
            assert opened.status_code == 200 and "Evidently data drift" in opened.text
            missing = http.get(f"{base}/drift/{gone}")
            assert missing.status_code == 404 and "no longer on disk" in missing.text
            assert http.get(f"{base}/drift/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
        clicked = _browser("--dump-dom", f"{signed_in}/drift/{good}")
        assert "Evidently data drift" in clicked.stdout
    finally:
        deploy(remove="dashboard")


def _wait_for(http: httpx.Client, base: str, as_of: str, text: str, timeout: float = 15.0) -> str:
    """The page caches each query for a few seconds: wait until it shows `text`."""
    import time

    deadline = time.time() + timeout
    while True:
        page = http.get(base, params={"as_of": as_of}).text
        if text in page or time.time() > deadline:
            return page
        time.sleep(1)


def test_report_as_of_matches_page_query_format() -> None:
    """The page reads `as_of` as the CLI reads --as-of (naive = UTC)."""
    from monitor.page import parse_time

    assert parse_time("2026-02-15T00:00", "as_of") == datetime(2026, 2, 15, tzinfo=UTC)
    assert parse_time(None, "as_of") is None
    with pytest.raises(ValueError, match="as_of"):
        parse_time("yesterday", "as_of")
