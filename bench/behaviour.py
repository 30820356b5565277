"""Behavioural probes (CheckList: invariance, directional expectation, monotonicity) against a
running MediScale service.

Sends every body of every probe in ml/behaviour.py as `POST {url}/predict` (httpx, one at a time),
checks the risks with `run_probes`, prints a table (per category passed/total, then each failure
with its risks and reason) and writes the JSON report. The bodies of one probe share a patient id,
so a service that routes by patient id answers them from one variant; `--mixed-variants` gives
every body its own id instead. Nothing of a note is printed or written: probes are named, bodies
are labelled ("denied", "reported", ...), and for a refused body only the status and the error
locations are kept (a 422 detail echoes the input).

Exit status: 0 every probe passed, 1 some failed, 2 the service could not be reached. Run:

    python bench/behaviour.py --url http://127.0.0.1:8000 --json bench/results/behaviour.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ml.behaviour import BehaviourReport, ProbeError, ProbeResult, build_probes, run_probes  # noqa: E402

log = logging.getLogger("bench.behaviour")


def _detail(reply: httpx.Response) -> str:
    """Why a body was refused, without echoing the input: status and error locations only."""
    try:
        detail = reply.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # FastAPI validation errors: keep where, never the input
        where = [".".join(str(p) for p in e.get("loc", ())) for e in detail if isinstance(e, dict)]
        return f"HTTP {reply.status_code} at {', '.join(where) or '?'}"
    if isinstance(detail, str) and len(detail) <= 160:
        return f"HTTP {reply.status_code}: {detail}"
    return f"HTTP {reply.status_code}"


class HttpScorer:
    """`score` for run_probes: each body as POST /predict; a refused body is a ProbeError, an
    unreachable service an httpx.TransportError (which ends the run). Remembers the model versions
    each variant answered with, for the report."""

    def __init__(self, client: httpx.Client, url: str):
        self.client = client
        self.url = url.rstrip("/")
        self.served: dict[str, Any] = {}

    def __call__(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i, body in enumerate(bodies):
            reply = self.client.post(f"{self.url}/predict", json=body)
            if reply.status_code != 200:
                raise ProbeError(f"body {i}: {_detail(reply)}")
            try:
                answer = reply.json()
            except ValueError:
                raise ProbeError(f"body {i}: the answer is not JSON") from None
            if isinstance(answer, dict) and answer.get("variant"):
                self.served.setdefault(str(answer["variant"]), answer.get("model_versions"))
            out.append(answer)
        return out


def table(report: BehaviourReport) -> str:
    lines = [f"{'category':28s} passed/total"]
    for category, counts in report.by_category.items():
        lines.append(f"{category:28s} {counts['passed']:>6d}/{counts['total']}")
    lines.append(f"{'all':28s} {report.passed:>6d}/{len(report.results)}")
    failures = report.failures()
    if failures:
        lines += ["", f"{len(failures)} failed:"]
        lines += [failure_line(r) for r in failures]
    return "\n".join(lines)


def failure_line(result: ProbeResult) -> str:
    risks = ", ".join(f"{label}={risk:.4f}" for label, risk in zip(result.labels, result.risks, strict=False))
    return f"  {result.category}/{result.name} [{result.kind}] {risks or 'no risks'}\n      {result.reason}"


def run(
    url: str,
    mixed_variants: bool = False,
    timeout: float = 30.0,
    transport: httpx.BaseTransport | None = None,
) -> tuple[BehaviourReport, dict[str, Any]]:
    """The report and its JSON form; raises httpx.TransportError when the service is unreachable."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    start = time.monotonic()
    probes = build_probes(mixed_variants=mixed_variants)
    from data.config import Settings

    headers = Settings.from_env().service_headers()  # a `predict` or `admin` key (MEDISCALE_API_KEY)
    with httpx.Client(timeout=timeout, transport=transport, headers=headers) as client:
        scorer = HttpScorer(client, url)
        report = run_probes(
            scorer,
            probes,
            progress=lambda r: log.info("%s: %s", r.name, "pass" if r.passed else "FAIL"),
        )
    return report, {
        **report.to_dict(),
        "url": url,
        "started_at": started_at,
        "seconds": round(time.monotonic() - start, 2),
        "mixed_variants": mixed_variants,
        "served": scorer.served,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--mixed-variants", action="store_true", help="one patient id per body")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, transport: httpx.BaseTransport | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse(argv)
    try:
        report, out = run(args.url, args.mixed_variants, args.timeout, transport)
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        print(f"cannot reach the service at {args.url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"report: {args.json}")
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
