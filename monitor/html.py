"""The dashboard page as HTML, rendered from a `monitor report` dict, the decision history and
the newest drift checks. Pure functions: no store, no network, so they are tested on plain dicts.

Every number carries hooks for tests and scrapers: `data-metric` (a readable name such as
`champion.auroc`), `data-path` (where the figure is in the report JSON, `/`-separated), and
`data-value` (the value rounded exactly as displayed, in the JSON's units, with `data-digits`);
intervals add `data-low` / `data-high`. Only aggregates are shown: the report holds no patient
key, request id, note or feature value, and drift events are reduced to named fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

from monitor import svg

# (key in performance dicts, label, what it means for a reader, digits, shown as percent)
METRICS = (
    ("auroc", "AUROC", "ranking of readmitted above not readmitted; 0.5 chance, 1 perfect", 3, False),
    ("auprc", "AUPRC", "precision over recall; compare with the readmission rate", 3, False),
    ("brier", "Brier score", "mean squared error of the risk; lower is better", 4, False),
    ("ece", "ECE", "expected calibration error, in risk points; lower is better", 3, False),
    (
        "calibration_slope",
        "Calibration slope",
        "1 ideal; below 1 risks too extreme, above 1 too timid",
        2,
        False,
    ),
    ("calibration_intercept", "Calibration intercept", "0 ideal; above 0 the model under-predicts", 2, False),
    ("observed_expected", "Observed / expected", "readmissions seen / predicted; 1 ideal", 2, False),
    ("sensitivity", "Sensitivity", "readmitted patients flagged high risk", 1, True),
    ("specificity", "Specificity", "not-readmitted patients left unflagged", 1, True),
    ("ppv", "PPV", "flagged patients who were readmitted", 1, True),
)
SUBGROUP_METRICS = (("auroc", "AUROC", 3), ("brier", "Brier", 4))
OUTCOMES = {
    "promote": ("Promote the challenger", "good"),
    "keep_testing": ("Keep testing", "wait"),
    "rollback": ("Roll back the challenger", "bad"),
    "inconclusive": ("Stop: no difference shown", "wait"),
}
MEANING = {
    "promote": "The challenger's risks are better than the champion's by more than chance allows, and "
    "every check below passed: it can replace the champion.",
    "keep_testing": "Neither model is shown to be better yet (or a check is still waiting for data): "
    "keep both running and collecting outcomes.",
    "rollback": "The challenger is worse than the champion, or a safety check failed: stop sending it "
    "patients.",
    "inconclusive": "The experiment reached its planned end without showing a difference: keep the champion.",
}
GATES = {
    "sample_ratio": "Traffic split matches the configured weights (sample-ratio check)",
    "feedback_coverage": "Enough outcomes recorded in both arms, at similar rates",
    "calibration": "Challenger is calibrated (slope and observed/expected within bounds)",
    "calibration_guardrail": "Challenger's calibration is not clearly off (guardrail)",
    "subgroups": "No sex or age group is clearly worse with the challenger",
    "drift": "Input data has not drifted past the limit",
}
ARMS = ("champion", "challenger")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0;color:#222;
background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:16px 28px 48px}
header{background:#14365d;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:24px}header nav{margin-top:6px;font-size:14px}
header a{color:#fff}header p{margin:2px 0;color:#d6e2f0;font-size:14px}
h2{font-size:19px;margin:28px 0 8px;border-bottom:2px solid #14365d;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:4px 18px 14px;margin-top:16px}
table{border-collapse:collapse;margin:8px 0;font-size:14px}
th,td{border-bottom:1px solid #e6e8eb;padding:5px 10px;text-align:left;vertical-align:top}
td{white-space:nowrap}td:last-child{white-space:normal}.wrap{white-space:normal;display:inline-block;max-width:36em}
th{background:#f0f2f5;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.muted,.help{color:#666;font-size:13px}.help{max-width:320px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-top:16px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 14px;min-width:180px}
.card .k{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:20px;font-weight:600;margin-top:4px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;font-size:14px}
.good{background:#dff3e4;color:#125c2b}.bad{background:#fbe1de;color:#8f1d12}.wait{background:#fff3cd;color:#6b4e00}
.warn{background:#fbe1de;border-left:4px solid #b3261e;padding:8px 12px;margin:8px 0}
.note{background:#eef3f9;border-left:4px solid #14365d;padding:8px 12px;margin:8px 0}
.plots{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
.champion{color:#1f5fa8}.challenger{color:#d0570f}
"""


# ------------------------------------------------------------------ hooks and formats


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _fmt(value: float | None, digits: int, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:.{digits}f}%" if percent else f"{value:.{digits}f}"


def _raw(value: float | None, digits: int, percent: bool) -> str:
    """The value as displayed, in the JSON's units (a percentage with 1 decimal is a proportion
    with 3), so `data-value` compares with the report JSON directly."""
    return "" if value is None else f"{value:.{digits + 2 if percent else digits}f}"


def number(
    metric: str, path: str, value: float | None, digits: int, percent: bool = False, below: float = 0.0
) -> str:
    """A number with its hooks; under `below` (a p-value) it reads "< below" rather than 0.000."""
    shown = f"&lt; {below:g}" if value is not None and value < below else _fmt(value, digits, percent)
    return (
        f'<span data-metric="{_attr(metric)}" data-path="{_attr(path)}" '
        f'data-value="{_raw(value, digits, percent)}" data-digits="{digits + 2 if percent else digits}">'
        f"{shown}</span>"
    )


def count(metric: str, path: str, value: int | None) -> str:
    shown = "n/a" if value is None else f"{int(value):,}"
    raw = "" if value is None else str(int(value))
    return (
        f'<span data-metric="{_attr(metric)}" data-path="{_attr(path)}" data-value="{raw}" '
        f'data-digits="0">{shown}</span>'
    )


def estimate(metric: str, path: str, figure: dict | None, digits: int, percent: bool = False) -> str:
    """`0.712 (0.684–0.741)`: a value with its 95% interval, hooked (`path` points at the
    {value, ci95} dict)."""
    figure = figure or {}
    value, ci = figure.get("value"), figure.get("ci95")
    shown = _fmt(value, digits, percent)
    if value is not None and ci and ci[0] is not None and ci[1] is not None:
        shown += (
            f' <span class="muted">({_fmt(ci[0], digits, percent)}–{_fmt(ci[1], digits, percent)})</span>'
        )
    low = "" if not ci or ci[0] is None else _raw(ci[0], digits, percent)
    high = "" if not ci or ci[1] is None else _raw(ci[1], digits, percent)
    return (
        f'<span data-metric="{_attr(metric)}" data-path="{_attr(path + "/value")}" '
        f'data-value="{_raw(value, digits, percent)}" data-digits="{digits + 2 if percent else digits}" '
        f'data-low="{low}" data-high="{high}">{shown}</span>'
    )


def _table(
    head: Iterable[str],
    rows: Iterable[Iterable[str]],
    numeric_from: int = 1,
    numeric_to: int = 99,
    top: str = "",
) -> str:
    """Cells are HTML already (escaped by their makers); columns numeric_from..numeric_to-1 are
    right-aligned numbers. `top` is an extra header row above the column names."""

    def cls(i: int) -> str:
        return ' class="n"' if numeric_from <= i < numeric_to else ""

    head_html = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead>{top}<tr>{head_html}</tr></thead><tbody>{body}</tbody></table>"


def when(moment: object) -> str:
    """An ISO time as `2026-02-15 00:00 UTC` (the page's readers are not parsing it)."""
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(str(moment))
    except ValueError:
        return escape(str(moment))
    parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return parsed.strftime("%Y-%m-%d %H:%M UTC")


def _versions(versions: dict | None) -> str:
    return escape(", ".join(f"{k} v{v}" for k, v in sorted((versions or {}).items())) or "unknown")


def _arm_label(report: dict, arm: str) -> str:
    section = report.get(arm) or {}
    return f"{arm} ({_versions(section.get('versions'))})"


# ------------------------------------------------------------------ sections


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _header(report: dict, generated_at: str) -> str:
    window = f", since {when(report['since'])}" if report.get("since") else ""
    experiment = report.get("experiment")
    return (
        "<header><h1>Readmission model: champion vs challenger</h1>"
        + (f"<p>Experiment <b>{escape(experiment)}</b></p>" if experiment else "")
        + f"<p>Figures as of {when(report.get('as_of'))}{window}; outcomes count "
        f"{escape(str(report.get('maturity_days', 30)))} days after a prediction. Page made "
        f"{when(generated_at)}; weights from {escape(str(report.get('weights_from', 'unknown')))}.</p>"
        "<p>Aggregates only: no patient, request or note appears on this page.</p>"
        '<nav><a href="#traffic">Traffic</a> · <a href="#feedback">Feedback</a> · '
        '<a href="#performance">Performance</a> · <a href="#curves">Curves</a> · '
        '<a href="#subgroups">Subgroups</a> · <a href="#decision">Decision</a> · '
        '<a href="#drift">Drift</a></nav></header>'
    )


def _cards(report: dict, decision: dict | None) -> str:
    cards = []
    if decision:
        text, tone = OUTCOMES.get(decision["outcome"], (decision["outcome"], "wait"))
        cards.append(
            f'<div class="card"><div class="k">Current decision</div><div class="v">'
            f'<span class="badge {tone}" data-metric="decision.outcome" '
            f'data-value="{_attr(decision["outcome"])}">'
            f"{escape(text)}</span></div></div>"
        )
    for arm in ARMS:
        served = (report.get(arm) or {}).get("served")
        if served:
            cards.append(
                f'<div class="card"><div class="k">{escape(arm)} AUROC</div><div class="v {arm}">'
                f"{estimate(f'{arm}.auroc', f'{arm}/served/auroc', served['auroc'], 3)}</div></div>"
            )
    srm = (report.get("traffic") or {}).get("sample_ratio")
    if srm:
        ok = not srm["mismatch"]
        cards.append(
            '<div class="card"><div class="k">Traffic split</div><div class="v">'
            f'<span class="badge {"good" if ok else "bad"}">{"as configured" if ok else "MISMATCH"}</span>'
            "</div></div>"
        )
    coverage = ((report.get("feedback") or {}).get("overall") or {}).get("coverage")
    if "feedback" in report:
        cards.append(
            '<div class="card"><div class="k">Outcomes recorded (matured)</div><div class="v">'
            + number("feedback.coverage", "feedback/overall/coverage", coverage, 1, percent=True)
            + "</div></div>"
        )
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _traffic(report: dict) -> str:
    traffic = report["traffic"]
    weights, observed = traffic["configured_weights"], traffic["observed"]
    total_w, total_n = sum(weights.values()) or 1.0, sum(observed.values()) or 1
    rows, bars = [], []
    for i, (variant, n) in enumerate(observed.items()):
        w = weights.get(variant, 0.0)
        rows.append(
            [
                escape(variant),
                number(f"traffic.weight.{variant}", f"traffic/configured_weights/{variant}", w, 2),
                _fmt(w / total_w, 1, True),
                count(f"traffic.observed.{variant}", f"traffic/observed/{variant}", n),
                _fmt(n / total_n, 1, True),
            ]
        )
        bars.append(
            (
                variant,
                [("configured", w / total_w, "#b9c3cf"), ("observed", n / total_n, svg.colour(variant, i))],
            )
        )
    out = [
        '<h2 id="traffic">Traffic per variant</h2>',
        '<div class="plots">'
        + _table(["Variant", "Configured weight", "Expected share", "Predictions", "Observed share"], rows)
        + svg.bars(bars, "Share of predictions: configured vs observed", width=440)
        + "</div>",
    ]
    srm = traffic.get("sample_ratio")
    if srm:
        verdict = (
            "the split does not match the weights"
            if srm["mismatch"]
            else "the split matches the weights (a mismatch needs p < 0.001)"
        )
        out.append(
            "<p>Sample-ratio check: chi-square "
            + number("traffic.srm_chi2", "traffic/sample_ratio/chi2", srm["chi2"], 2)
            + ", p "
            + ("" if srm["p_value"] < 0.001 else "= ")
            + number("traffic.srm_p", "traffic/sample_ratio/p_value", srm["p_value"], 3, below=0.001)
            + f": {verdict}.</p>"
        )
    else:
        out.append('<p class="muted">Sample-ratio check not run: a configured weight is 0.</p>')
    if traffic.get("warning"):
        out.append(f'<div class="warn"><b>Warning:</b> {escape(traffic["warning"])}</div>')
    return "<section>" + "".join(out) + "</section>"


def _feedback(report: dict) -> str:
    feedback = report["feedback"]
    overall = feedback["overall"]
    rows, bars = [], []
    for i, bucket in enumerate(feedback["by_prediction_age"]):
        base = f"feedback/by_prediction_age/{i}"
        rows.append(
            [
                escape(bucket["age"]),
                count(f"feedback.age{i}.predictions", f"{base}/predictions", bucket["predictions"]),
                count(f"feedback.age{i}.labelled", f"{base}/labelled", bucket["labelled"]),
                number(f"feedback.age{i}.coverage", f"{base}/coverage", bucket["coverage"], 1, True),
            ]
        )
        bars.append(
            (
                bucket["age"],
                [("", bucket["coverage"], "#2a8a4a" if bucket["matured"] else "#b9c3cf")],
            )
        )
    arm_rows = [
        [
            escape(arm),
            count(f"feedback.{arm}.matured", f"feedback/by_arm/{arm}/matured", c.get("matured")),
            count(f"feedback.{arm}.labelled", f"feedback/by_arm/{arm}/labelled", c.get("labelled")),
            number(f"feedback.{arm}.coverage", f"feedback/by_arm/{arm}/coverage", c.get("coverage"), 1, True),
        ]
        for arm, c in (feedback.get("by_arm") or {}).items()
    ]
    return (
        "<section id='feedback'><h2>Feedback coverage (outcomes recorded)</h2>"
        f"<p>{count('feedback.matured', 'feedback/overall/matured', overall['matured'])} of "
        + count("feedback.predictions", "feedback/overall/predictions", overall["predictions"])
        + " predictions "
        "are old enough for their outcome; "
        + count("feedback.labelled", "feedback/overall/labelled_matured", overall["labelled_matured"])
        + " of them have one ("
        + number("feedback.coverage_text", "feedback/overall/coverage", overall["coverage"], 1, True)
        + "). "
        f'<span class="muted">{escape(feedback.get("note", ""))}</span></p>'
        "<h3>By age of the prediction</h3>"
        + '<div class="plots">'
        + _table(["Prediction age", "Predictions", "With outcome", "Coverage"], rows)
        + svg.bars(bars, "Share of predictions with a recorded outcome, by age", width=560)
        + "</div>"
        + (
            "<h3>By arm (matured predictions)</h3>"
            + _table(["Arm", "Matured", "With outcome", "Coverage"], arm_rows)
            if arm_rows
            else ""
        )
        + "</section>"
    )


def _performance(report: dict) -> str:
    out = ["<section id='performance'><h2>Performance per variant (95% intervals)</h2>"]
    served = {arm: (report.get(arm) or {}).get("served") for arm in ARMS}
    out.append(
        "<p>Each variant on its own matured, labelled patients (one row per patient). "
        "The high-risk flag (sensitivity, specificity, PPV) is a risk of "
        f"{escape(_fmt(report.get('high_risk_threshold'), 0, True))} or more.</p>"
    )
    head = ["Metric", *[f'<span class="{a}">{_arm_label(report, a)}</span>' for a in ARMS], "What it means"]
    rows = [
        [
            "Patients (readmitted)",
            *[
                (
                    f"{count(f'{a}.n', f'{a}/served/n', served[a]['n'])} "
                    f"({count(f'{a}.events', f'{a}/served/events', served[a]['events'])})"
                )
                if served[a]
                else escape((report.get(a) or {}).get("note", "n/a"))
                for a in ARMS
            ],
            '<span class="help">labelled patients, and how many were readmitted within 30 days</span>',
        ]
    ]
    for key, label, help_, digits, pct in METRICS:
        rows.append(
            [
                escape(label),
                *[
                    estimate(f"{a}.{key}", f"{a}/served/{key}", served[a][key], digits, pct)
                    if served[a]
                    else "n/a"
                    for a in ARMS
                ],
                f'<span class="help">{escape(help_)}</span>',
            ]
        )
    if any(served.values()):
        out.append(_table(head, rows, numeric_to=3))
    else:
        out.append(
            '<div class="note">No matured, labelled patients yet: an outcome is known '
            f"{escape(str(report.get('maturity_days', 30)))} days after its prediction, and the figures "
            "appear then. Until then, the estimates below are all there is.</div>"
        )
    paired = report.get("paired")
    if paired:
        out.append(
            "<h3>Both models on the same patients (shadow scores): the fair comparison</h3>"
            f"<p>{count('paired.patients', 'paired/patients', paired['patients'])} patients, "
            f"{count('paired.events', 'paired/events', paired['events'])} readmitted.</p>"
        )
        prow = []
        for key, label, _help, digits, pct in METRICS[:7]:
            prow.append(
                [escape(label)]
                + [
                    estimate(f"paired.{a}.{key}", f"paired/{a}/{key}", paired[a][key], digits, pct)
                    for a in ARMS
                ]
            )
        out.append(_table(["Metric", *[_arm_label(report, a) for a in ARMS]], prow))
        diffs = []
        brier = paired.get("brier_difference")
        if brier:
            diffs.append(
                "<li>Brier difference (challenger − champion): "
                + estimate("paired.brier_difference", "paired/brier_difference", brier, 4)
                + "; below 0 favours the challenger.</li>"
            )
        auc = paired.get("auroc_difference")
        if auc:
            diffs.append(
                "<li>AUROC difference (challenger − champion, DeLong): "
                + estimate("paired.auroc_difference", "paired/auroc_difference", auc, 3)
                + "; above 0 favours the challenger.</li>"
            )
        out.append(
            f"<ul>{''.join(diffs)}</ul><p class='muted'>Fixed-sample intervals for reading; the "
            "decision uses "
            "always-valid bounds that allow repeated looks.</p>"
        )
    estimates = []
    for arm in ARMS:
        before = (report.get(arm) or {}).get("before_outcomes")
        if before:
            estimates.append(
                [
                    _arm_label(report, arm),
                    count(f"{arm}.before.n", f"{arm}/before_outcomes/n", before["n"]),
                    number(
                        f"{arm}.expected_auroc",
                        f"{arm}/before_outcomes/expected_auroc_cbpe",
                        before["expected_auroc_cbpe"],
                        3,
                    ),
                    number(
                        f"{arm}.expected_brier",
                        f"{arm}/before_outcomes/expected_brier",
                        before["expected_brier"],
                        4,
                    ),
                ]
            )
    if estimates:
        out.append(
            "<h3>Before outcomes arrive: estimates from the model's own risks</h3>"
            "<p class='muted'>Valid only if the model is calibrated; set them against the realized "
            "figures above.</p>"
            + _table(["Variant", "Predictions", "Expected AUROC (CBPE)", "Expected Brier"], estimates)
        )
    out.append("</section>")
    return "".join(out)


def _plots(report: dict) -> str:
    curves = {_plain_arm(report, a): (report.get(a) or {}).get("curves") for a in ARMS}
    if not any(curves.values()):
        return (
            "<section id='curves'><h2>ROC and calibration curves</h2><p>No curves yet: they need "
            "matured patients with both outcomes in an arm.</p></section>"
        )
    parts = [
        "<section id='curves'><h2>ROC and calibration curves</h2>",
        "<p>Each variant on its own labelled patients. Calibration: patients grouped into ten bins of "
        "equal size by predicted risk; a calibrated model's points lie on the diagonal.</p>",
        f'<div class="plots">{svg.roc_plot(curves)}{svg.calibration_plot(curves)}</div>',
    ]
    paired = report.get("paired")
    if paired and any(paired.get(f"{a}_curves") for a in ARMS):
        same = {_plain_arm(report, a): paired.get(f"{a}_curves") for a in ARMS}
        parts.append(
            "<h3>Both models on the same patients</h3>"
            f'<div class="plots">{svg.roc_plot(same, "ROC curve, same patients")}'
            f"{svg.calibration_plot(same, 'Calibration, same patients')}</div>"
        )
    return "".join(parts) + "</section>"


def _plain_arm(report: dict, arm: str) -> str:
    versions = ", ".join(
        f"{k} v{v}" for k, v in sorted(((report.get(arm) or {}).get("versions") or {}).items())
    )
    return f"{arm} ({versions})" if versions else arm


def _group_label(group: str) -> str:
    column, _, value = group.partition("=")
    return {"sex": "Sex", "age_band": "Age band"}.get(column, column) + ": " + value


def _subgroups(report: dict) -> str:
    groups: dict[str, dict[str, tuple[int, dict]]] = {}
    for arm in ARMS:
        for i, entry in enumerate((report.get(arm) or {}).get("by_subgroup") or []):
            groups.setdefault(entry["group"], {})[arm] = (i, entry)
    if not groups:
        return "<section id='subgroups'><h2>Subgroups</h2><p>No labelled patients yet.</p></section>"
    width = 2 + len(SUBGROUP_METRICS)
    top = (
        "<tr><th></th>"
        + "".join(
            f'<th colspan="{width}" class="{arm}" style="text-align:center">{_arm_label(report, arm)}</th>'
            for arm in ARMS
        )
        + "</tr>"
    )
    head = ["Group", *(["Patients", "Readmitted", *[label for _, label, _ in SUBGROUP_METRICS]] * len(ARMS))]
    rows = []
    for group, arms in sorted(groups.items(), key=lambda g: _group_order(g[0])):
        row = [escape(_group_label(group))]
        for arm in ARMS:
            if arm not in arms:
                row += ["–"] * (2 + len(SUBGROUP_METRICS))
                continue
            i, entry = arms[arm]
            base = f"{arm}/by_subgroup/{i}"
            row += [
                count(f"{arm}.subgroup.{group}.n", f"{base}/n", entry["n"]),
                count(f"{arm}.subgroup.{group}.events", f"{base}/events", entry["events"]),
            ]
            for key, _, digits in SUBGROUP_METRICS:
                if key in entry:
                    row.append(estimate(f"{arm}.subgroup.{group}.{key}", f"{base}/{key}", entry[key], digits))
                else:
                    row.append('<span class="muted">too few</span>')
        rows.append(row)
    return (
        "<section id='subgroups'><h2>Subgroups (sex, age band)</h2>"
        "<p>Each arm on its own labelled patients. Figures need at least 20 patients with both outcomes in "
        "the group; smaller groups show counts only. Look for a group where one model is much worse.</p>"
        + _table(head, rows, top=top)
        + "</section>"
    )


def _group_order(group: str) -> tuple:
    """Sex first, then age bands youngest first; unknown last."""
    from monitor.experiment import AGE_BANDS

    column, _, value = group.partition("=")
    bands = [name for _, _, name in AGE_BANDS]
    rank = bands.index(value) if value in bands else (len(bands) if value == "unknown" else -1)
    return (column != "sex", value == "unknown", rank, value)


def _gate_rows(gates: list[dict]) -> list[list[str]]:
    rows = []
    for gate in gates:
        if gate.get("pending"):
            status = '<span class="badge wait">waiting for data</span>'
        elif gate.get("passed"):
            status = '<span class="badge good">passed</span>'
        else:
            status = '<span class="badge bad">failed</span>'
        kind = " (guardrail)" if gate.get("kind") == "guardrail" and "guardrail" not in gate["name"] else ""
        rows.append(
            [
                escape(GATES.get(gate["name"], gate["name"].replace("_", " ").capitalize()) + kind),
                status,
                f'<span class="muted">{escape(gate.get("detail", ""))}</span>',
            ]
        )
    return rows


def _decisions(report: dict, decisions: list[dict]) -> str:
    out = ["<section id='decision'><h2>Decision under the pre-registered rule</h2>"]
    if not decisions:
        out.append(
            "<p>No decision yet. Run <code>python -m monitor decide</code> (it stores each decision "
            "here).</p>"
        )
        return "".join(out) + "</section>"
    current = decisions[0]
    text, tone = OUTCOMES.get(current["outcome"], (current["outcome"], "wait"))
    other = report.get("experiment") and current["experiment"] != report.get("experiment")
    out.append(
        f'<p><span class="badge {tone}">{escape(text)}</span> decision '
        f"#{count('decision.id', '', current['id'])} "
        f"as of {when(current['as_of'])}, rule <code>{escape(current['rule'])}</code>"
        f" ({escape(current['experiment'])}).</p>"
    )
    if current["outcome"] in MEANING:
        out.append(f"<p>{escape(MEANING[current['outcome']])}</p>")
    if other:
        out.append(
            '<div class="note">This decision was made for an earlier experiment than the one shown '
            "above.</div>"
        )
    if current.get("applied"):
        applied = current["applied"]
        out.append(f"<p>Applied by {escape(str(applied.get('by')))} at {when(applied.get('at'))}.</p>")
    if current.get("reasons"):
        out.append(
            "<h3>Why</h3><ul>" + "".join(f"<li>{escape(r)}</li>" for r in current["reasons"]) + "</ul>"
        )
    if current.get("gates"):
        out.append(
            "<h3>Checks before any promotion</h3>"
            + _table(["Check", "Status", "Detail"], _gate_rows(current["gates"]), 99)
        )
    history_rows = [
        [
            f"#{int(d['id'])}",
            when(d["as_of"]),
            escape(d["experiment"]),
            f'<span class="badge {OUTCOMES.get(d["outcome"], ("", "wait"))[1]}">'
            f"{escape(d['outcome'].replace('_', ' '))}</span>",
            escape(str(d["applied"].get("by"))) + " at " + when(d["applied"].get("at"))
            if d.get("applied")
            else "not applied",
        ]
        for d in decisions
    ]
    out.append(
        "<h3>Decision history (newest first)</h3>"
        + _table(["#", "As of", "Experiment", "Outcome", "Applied"], history_rows, 99)
    )
    return "".join(out) + "</section>"


def _drift(drift: list[dict], base: str) -> str:
    out = ["<section id='drift'><h2>Input drift</h2>"]
    if not drift:
        out.append(
            "<p><b>No drift check yet.</b> Run <code>python -m monitor drift</code> to compare recent "
            "inputs with the training data.</p>"
        )
        return "".join(out) + "</section>"
    rows = []
    for d in drift:
        name = d.get("variant") or "all"
        columns = d.get("drifted_columns") or []
        shown = ", ".join(escape(str(c)) for c in columns[:12]) + (" …" if len(columns) > 12 else "")
        checked = d.get("columns_checked")
        share = number(f"drift.{name}.share", "", d.get("drift_share"), 2)
        if d.get("max_drift_share") is not None:
            share += f' <span class="muted">(limit {_fmt(d["max_drift_share"], 2)})</span>'
        link = (
            f'<a href="{_attr(base)}/drift/{int(d["id"])}">open the Evidently report</a>'
            if d.get("has_report")
            else '<span class="muted">no report file</span>'
        )
        risk = {True: "drifted", False: "stable", None: "–"}[d.get("risk_drifted")]
        rows.append(
            [
                escape(str(name)) + f' <span class="muted">{_versions(d.get("versions"))}</span>',
                share,
                '<span class="wrap">'
                + (f"{len(columns)} of {checked}: " if checked else "")
                + (shown or "none")
                + "</span>",
                risk,
                "–" if d.get("n_current") is None else f"{d['n_current']:,}",
                when(d.get("created_at")),
                link,
                escape(str(d.get("mlflow_run_id") or "–")),
            ]
        )
    head = [
        "Variant",
        "Drift share",
        "Drifted columns",
        "Predicted risk",
        "Recent rows",
        "Checked at",
        "Report",
        "MLflow run",
    ]
    out.append(
        "<p>Newest drift check per variant: recent inputs against the training data. Drift share: the "
        "share of feature columns whose distribution (or share of unknown values) changed.</p>"
        + _table(head, rows, 99)
    )
    return "".join(out) + "</section>"


# ------------------------------------------------------------------ the page


def page(
    report: dict,
    decisions: list[dict],
    drift: list[dict],
    generated_at: str,
    base: str = "/dashboard",
    problem: str | None = None,
) -> str:
    """The whole page. `problem` (e.g. only one variant has served) replaces the experiment's
    sections with a plain message, as an empty store does; decisions and drift still show."""
    decision = decisions[0] if decisions else None
    body = [_header(report, generated_at), "<main>", _cards(report, decision)]
    if problem or report.get("empty"):
        body.append(
            "<section><h2>No experiment to show yet</h2>"
            '<p data-metric="empty" data-value="true">'
            + escape(_sentence(problem or report.get("message", "")))
            + "</p>"
            "<p>The page fills in once both the champion and the challenger have served "
            "predictions.</p></section>"
        )
    else:
        body += [
            _traffic(report),
            _feedback(report),
            _performance(report),
            _plots(report),
            _subgroups(report),
        ]
    body += [_decisions(report, decisions), _drift(drift, base), "</main>"]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>MediScale monitoring: champion vs challenger</title>"
        f"<style>{CSS}</style></head><body>" + "".join(body) + "</body></html>"
    )


def drift_missing(event_id: int, path: str | None, exists: bool = True) -> str:
    """The 404 page for a drift report whose file is gone (or was never written)."""
    if not exists:
        why = f"there is no drift check #{int(event_id)}"
    elif not path:
        why = "this drift check recorded no HTML report"
    else:
        why = (
            "the HTML report this drift check recorded is no longer on disk (moved, cleaned up, or "
            "written on another machine)"
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Drift report not found</title>'
        f"<style>{CSS}</style></head><body><main><section><h2>Drift report #{int(event_id)} not found</h2>"
        f"<p>{escape(why)}. Run <code>python -m monitor drift</code> again for a fresh report.</p>"
        "</section></main></body></html>"
    )
