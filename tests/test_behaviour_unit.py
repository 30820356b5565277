"""ml.behaviour and bench/behaviour.py without a server: the probe set is complete and well formed,
a sensible fake model passes every probe, and fakes with one typical bug each (reads "denies chest
pain" as chest pain, knows names, takes an unknown for the worst case, is case/space sensitive,
ignores the shorthands, leaves out `missing`) fail exactly the probes made for that bug, with
reasons. A fake reading notes through the real extractor (data.concepts) must also pass every
probe: the notes say what the probes think they say. No Ray, no HTTP server; seconds."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml.behaviour import (
    CATEGORIES,
    MissingCheck,
    Probe,
    ProbeError,
    build_probes,
    run_probes,
)

ROOT = Path(__file__).resolve().parents[1]
PROBES = build_probes()

# --------------------------------------------------------------------------- a fake note reader

SYMPTOMS = {
    "chest_pain": ("chest pain", "chest pressure", "chest tightness", "CP", "angina"),
    "shortness_of_breath": ("shortness of breath", "short of breath", "dyspnea", "SOB"),
    "leg_swelling": ("lower extremity edema", "leg swelling"),
    "dizziness": ("dizziness", "lightheadedness"),
}
CONDITIONS = {
    "chf": ("heart failure", "CHF"),
    "copd": ("COPD", "emphysema"),
    "ckd": ("chronic kidney disease", "CKD"),
    "cancer": ("cancer",),
}
NEGATION = ("no", "not", "denies", "denied", "negative", "without", "never", "none")
RELATIVES = ("mother", "father", "brother", "sister", "son", "daughter")
LIVES_ALONE = ("lives alone", "lives by himself", "lives by herself", "lives on his own", "lives on her own")
SENTENCES = re.compile(r"(?<=[.;!?])\s+|\n\s*\n|\n(?=\s*-\s)|\n(?=\s*[A-Za-z][A-Za-z /]{0,40}:)")
HEADER = re.compile(r"\s*([A-Za-z][A-Za-z \t/]{0,40}):")


@dataclass(frozen=True)
class Reader:
    """Sentence-level ConText in miniature: a term counts unless its sentence has a negation
    word or a relative, or it sits in a family-history section. `normalise=False` is the bug
    of matching the lexicon as written (case and single spaces) against the raw note."""

    negation: bool = True
    normalise: bool = True

    def _has(self, sentence: str, phrases: tuple[str, ...]) -> bool:
        if self.normalise:
            sentence = " ".join(sentence.lower().split())
            phrases = tuple(p.lower() for p in phrases)
        else:
            phrases = tuple({v for p in phrases for v in (p, p[:1].upper() + p[1:])})
        return any(re.search(rf"(?<![A-Za-z]){re.escape(p)}(?![A-Za-z])", sentence) for p in phrases)

    def __call__(self, text: str) -> dict[str, Any]:
        found: set[str] = set()
        alone = cost = None
        section = ""
        for sentence in SENTENCES.split(text):
            header = HEADER.match(sentence)
            if header:
                section = header.group(1).lower()
            ignored = self.negation and (
                "family" in section or self._has(sentence, NEGATION) or self._has(sentence, RELATIVES)
            )
            for name, forms in (SYMPTOMS | CONDITIONS).items():
                if not ignored and self._has(sentence, forms):
                    found.add(name)
            if self._has(sentence, LIVES_ALONE):
                alone = 1.0
            elif alone is None and self._has(sentence, ("lives with", "lives at home with")):
                alone = 0.0
            if self._has(sentence, ("cannot afford", "unable to afford")):
                cost = 1.0
            elif cost is None and self._has(sentence, ("able to afford",)):
                cost = 0.0
        return {"present": found, "lives_alone": alone, "cost_barrier": cost}


def concepts_reader() -> Callable[[str], dict[str, Any]]:
    """The service's own extractor (and cleaner) as a Reader."""
    from data import concepts
    from data.features import clean_note

    def read(text: str) -> dict[str, Any]:
        values = concepts.note_concept_values(clean_note(text))
        present = {n for n in (*SYMPTOMS, *CONDITIONS) if values[f"note_{n}"] == 1.0}

        def known(name: str) -> float | None:
            return None if math.isnan(values[name]) else values[name]

        return {"present": present, "lives_alone": known("note_lives_alone"),
                "cost_barrier": known("note_cost_barrier")}  # fmt: skip

    return read


# --------------------------------------------------------------------------- fake models

INPUTS = ("age", "sex", "ethnicity", "admission_type", "via_emergency_department", "discharge_disposition",
          "insurance", "los_days", "prior_admissions_365d", "prior_ed_visits_365d",
          "days_since_last_discharge", "diagnoses", "vitals", "labs", "clinical_note")  # fmt: skip
CHARLSON = {"I50": "chf", "J44": "copd", "N18": "ckd", "C": "cancer", "E11": "diabetes", "I21": "mi"}


def _last(value: Any) -> float | None:
    return None if value is None else float(value[-1] if isinstance(value, list) else value)


@dataclass(frozen=True)
class FakeModel:
    """A readmission model shaped like data/synth.py's outcome, as a `score` function. Each flag
    adds one typical bug."""

    reader: Callable[[str], dict[str, Any]] = Reader()
    name_bias: bool = False  # some surnames and "she" raise the risk
    unknown_is_worst: bool = False  # a missing input scores worse than any known value
    sloppy_units: bool = False  # shorthands ignored, ICD codes not normalised, age cut at 67
    report_missing: bool = True

    def logit(self, body: dict[str, Any]) -> float:
        unknown = 2.5 if self.unknown_is_worst else None
        age = body.get("age", 70)
        z = -5.0 + (0.3 * (age > 67) if self.sloppy_units else 0.015 * (age - 65))
        prior = body.get("prior_admissions_365d")
        z += 0.3 * min(prior, 3) if prior is not None else unknown or 0.3
        ed = body.get("prior_ed_visits_365d")
        z += 0.05 * min(ed, 10) if ed is not None else unknown or 0.05
        z += 0.02 * body.get("los_days", 5)
        codes = body.get("diagnoses")
        if codes is None:
            z += unknown or 0.3
        else:
            norm = [c if self.sloppy_units else c.replace(".", "").upper() for c in codes]
            z += 0.3 * len({cat for c in norm for p, cat in CHARLSON.items() if c.startswith(p)})
        vitals, labs = body.get("vitals") or {}, body.get("labs") or {}
        hr = _last(vitals.get("heart_rate", None if self.sloppy_units else body.get("heart_rate")))
        sbp = _last(vitals.get("sbp", None if self.sloppy_units else body.get("blood_pressure")))
        z += 0.01 * (hr or 0) + 0.004 * (sbp or 0)
        z += 0.4 * ((_last(labs.get("creatinine")) or 0) > 2) + 0.5 * ((_last(labs.get("albumin")) or 4) < 3)
        text = (body.get("clinical_note") or "").strip()
        if not text:
            return z + 0.2
        facts = self.reader(text)
        present = facts["present"]
        z += 0.8 * len(present & {"chest_pain", "shortness_of_breath"})
        z += 0.4 * min(len(present & {"leg_swelling", "dizziness"}), 2)
        z += 0.35 * len(present & set(CONDITIONS))
        for name, weight, average in (("lives_alone", 0.8, 0.3), ("cost_barrier", 0.9, 0.2)):
            z += weight * facts[name] if facts[name] is not None else unknown or average
        if self.name_bias:
            z += 0.5 * bool(re.search(r"\b(nguyen|okafor)\b", text, re.I))
            z += 0.3 * bool(re.search(r"\bshe\b", text, re.I))
        return z

    def __call__(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for body in bodies:
            answer: dict[str, Any] = {"risk": 1 / (1 + math.exp(-self.logit(body))), "variant": "champion"}
            if self.report_missing:
                answer["missing"] = [name for name in INPUTS if not _given(body, name)]
            out.append(answer)
        return out


def _given(body: dict[str, Any], name: str) -> bool:
    if name == "vitals":
        return bool(body.get("vitals")) or "heart_rate" in body or "blood_pressure" in body
    if name == "clinical_note":
        return bool((body.get("clinical_note") or "").strip())
    return body.get(name) is not None


def failed(model: Callable, probes: list[Probe] = PROBES) -> dict[str, str]:
    return {r.name: r.reason for r in run_probes(model, probes).results if not r.passed}


def names_in(*categories: str) -> set[str]:
    return {p.name for p in PROBES if p.category in categories}


# --------------------------------------------------------------------------- the probe set


def test_the_probe_set_is_complete_and_well_formed() -> None:
    names = [p.name for p in PROBES]
    assert len(names) >= 34 and len(set(names)) == len(names)
    per_category = Counter(p.category for p in PROBES)
    assert set(per_category) == set(CATEGORIES)
    assert min(per_category.values()) >= 3, per_category
    for p in PROBES:
        assert len(p.bodies) == len(p.labels) >= 2 and len(set(p.labels)) == len(p.labels), p.name
        assert len({json.dumps(b, sort_keys=True) for b in p.bodies}) == len(p.bodies), f"{p.name}: twins"


def test_every_body_is_a_valid_patient_record() -> None:
    from serve.records import PatientRecord

    for p in PROBES:
        for body in p.bodies:
            PatientRecord.model_validate(body)


def test_a_probe_shares_one_patient_id_unless_variants_are_mixed() -> None:
    for p in PROBES:
        assert {b["patient_id"] for b in p.bodies} == {f"probe-{p.name}"}
    for p in build_probes(mixed_variants=True):
        ids = [b["patient_id"] for b in p.bodies]
        assert len(set(ids)) == len(ids) and all(i.startswith(f"probe-{p.name}-") for i in ids)


# --------------------------------------------------------------------------- sensible models pass


def test_a_sensible_model_passes_every_probe() -> None:
    report = run_probes(FakeModel())
    assert report.failed == 0, {r.name: r.reason for r in report.failures()}
    assert report.passed == len(PROBES)
    assert report.by_category == {
        c: {"passed": n, "total": n} for c, n in Counter(p.category for p in PROBES).items()
    }
    assert run_probes(FakeModel(), build_probes(mixed_variants=True)).failed == 0


def test_a_model_reading_notes_with_the_real_extractor_passes_every_probe() -> None:
    assert failed(FakeModel(reader=concepts_reader())) == {}


def test_the_missing_checks_agree_with_the_service_definition() -> None:
    from data import record

    for p in PROBES:
        if p.response_check is not None:
            answers = [
                {"missing": record.missing_inputs(record.PatientRecord.model_validate(b))} for b in p.bodies
            ]
            assert p.response_check(answers) == [], p.name


def test_the_report_is_json_with_the_promised_keys() -> None:
    out = json.loads(json.dumps(run_probes(FakeModel()).to_dict()))
    assert {"probes", "passed", "failed", "by_category"} <= set(out)
    first = out["probes"][0]
    assert {"name", "category", "kind", "risks", "passed", "reason"} <= set(first)
    assert len(first["risks"]) == len(PROBES[0].bodies)


# --------------------------------------------------------------------------- one bug, its probes fail


def test_ignoring_negation_and_experiencer_fails_denied_and_family_probes() -> None:
    reasons = failed(FakeModel(reader=Reader(negation=False)))
    assert set(reasons) == names_in("denied_vs_reported", "family_vs_personal")
    assert all("must have no effect" in r and "< margin" in r for r in reasons.values())


def test_a_name_sensitive_model_fails_the_name_probes() -> None:
    reasons = failed(FakeModel(name_bias=True))
    assert set(reasons) == names_in("name_pronoun_invariance")
    assert all("differs from" in r and "tolerance" in r for r in reasons.values())


def test_scoring_an_unknown_as_the_worst_case_fails_unknown_vs_zero() -> None:
    reasons = failed(FakeModel(unknown_is_worst=True))
    assert set(reasons) == names_in("unknown_vs_zero")
    assert all("'not given'" in r or "'not said'" in r for r in reasons.values())
    assert all("above" in r for r in reasons.values())


def test_a_case_and_space_sensitive_reader_fails_whitespace_probes() -> None:
    reasons = failed(FakeModel(reader=Reader(normalise=False)))
    assert set(reasons) <= names_in("note_whitespace_case")
    assert {"note_extra_spaces", "note_tabs_and_crlf", "note_upper_lower_case"} <= set(reasons)


def test_ignoring_shorthands_and_raw_codes_fail_unit_probes() -> None:
    reasons = failed(FakeModel(sloppy_units=True))
    assert set(reasons) == {"age_67_vs_67p0_vs_67p0001", "heart_rate_shorthand_list_nested",
                            "blood_pressure_shorthand_vs_sbp", "icd_code_dots_and_case"}  # fmt: skip
    assert "'vitals.heart_rate 82' differs from" in reasons["heart_rate_shorthand_list_nested"]


def test_a_response_without_missing_fails_every_probe_that_checks_it() -> None:
    reasons = failed(FakeModel(report_missing=False))
    assert set(reasons) == {p.name for p in PROBES if p.response_check is not None}
    assert names_in("unknown_vs_zero") <= set(reasons)
    assert all("no `missing` list" in r for r in reasons.values())


# --------------------------------------------------------------------------- the checks themselves


def _probe(kind: str, n: int = 3, **kw: Any) -> Probe:
    return Probe("p", "unknown_vs_zero", kind, tuple({"age": i} for i in range(n)),
                 tuple(f"b{i}" for i in range(n)), **kw)  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "risks", "passed", "reason"),
    [("invariance", [0.1, 0.104, 0.096], True, "within"),
     ("invariance", [0.1, 0.1, 0.106], False, "'b2' differs from 'b0' by +0.0060"),
     ("direction", [0.1, 0.12, 0.102], True, "rise +0.0200"),
     ("direction", [0.1, 0.105, 0.1], False, "< margin 0.01"),
     ("direction", [0.1, 0.2, 0.11], False, "'b0' must have no effect"),
     ("monotone", [0.1, 0.1, 0.15], True, "non-decreasing"),
     ("monotone", [0.1, 0.09, 0.15], False, "'b1' below 'b0' by 0.0100"),
     ("monotone", [0.1, 0.1, 0.105], False, "< margin"),
     ("between", [0.1, 0.1, 0.2], True, "zero <= unknown <= high"),
     ("between", [0.1, 0.09, 0.2], False, "'b1' scored 0.0100 below 'b0'"),
     ("between", [0.1, 0.3, 0.2], False, "'b1' scored 0.1000 above 'b2'")],
)  # fmt: skip
def test_each_kind_checks_what_it_promises(kind: str, risks: list[float], passed: bool, reason: str) -> None:
    ok, why = _probe(kind).check(risks)
    assert ok is passed and reason in why, why


def test_a_between_probe_with_margin_zero_only_checks_the_order() -> None:
    assert _probe("between", margin=0.0).check([0.1, 0.1, 0.1])[0]


def test_a_refused_body_or_a_bad_risk_fails_that_probe_only() -> None:
    def score(bodies: list[dict]) -> list[dict]:
        if bodies[0]["patient_id"] == f"probe-{PROBES[0].name}":
            raise ProbeError("body 1: HTTP 422 at body.age")
        if bodies[0]["patient_id"] == f"probe-{PROBES[1].name}":
            return [{"risk": float("nan")}] * len(bodies)
        return FakeModel()(bodies)

    reasons = failed(score)
    assert reasons == {PROBES[0].name: "not scored: body 1: HTTP 422 at body.age",
                       PROBES[1].name: "no risk in [0, 1] in the response to " +
                       ", ".join(map(repr, PROBES[1].labels))}  # fmt: skip


def test_the_missing_check_names_the_body_and_the_input() -> None:
    check = MissingCheck(listed=((), ("diagnoses",)), given=(("diagnoses",), ()))
    assert check([{"missing": []}, {"missing": ["diagnoses"]}]) == []
    assert check([{"missing": ["diagnoses"]}, {"missing": []}]) == [
        "body 0: `missing` names diagnoses, which was given",
        "body 1: `missing` does not name diagnoses",
    ]


def test_bodies_are_copied_before_scoring() -> None:
    probe = PROBES[0]

    def mutate(bodies: list[dict]) -> list[dict]:
        for b in bodies:
            b.clear()
        return [{"risk": 0.1}] * len(bodies)

    run_probes(mutate, [probe])
    assert all(b.get("patient_id") for b in probe.bodies)


# --------------------------------------------------------------------------- bench/behaviour.py


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_behaviour", ROOT / "bench" / "behaviour.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _transport(model: FakeModel) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == "/predict"
        return httpx.Response(200, json=model([json.loads(request.content)])[0])

    return httpx.MockTransport(handle)


def _note_sentences() -> set[str]:
    return {s for p in PROBES for b in p.bodies for s in re.split(r"[.;\n]", b.get("clinical_note") or "")
            if len(s.strip()) > 24}  # fmt: skip


def test_bench_writes_the_report_and_exits_0_when_all_pass(bench: Any, tmp_path: Path, capsys) -> None:
    path = tmp_path / "out" / "behaviour.json"
    assert bench.main(["--url", "http://mediscale.test/", "--json", str(path)], _transport(FakeModel())) == 0
    report = json.loads(path.read_text())
    assert {"probes", "passed", "failed", "url", "started_at", "seconds"} <= set(report)
    assert report["failed"] == 0 and report["passed"] == len(PROBES)
    assert report["served"] == {"champion": None}
    assert "denied_vs_reported" in capsys.readouterr().out


def test_bench_exits_1_on_failures_and_prints_no_note_text(bench: Any, capsys) -> None:
    model = FakeModel(reader=Reader(negation=False), name_bias=True)
    assert bench.main(["--url", "http://mediscale.test"], _transport(model)) == 1
    captured = capsys.readouterr()
    assert "chest_pain_denied_vs_reported" in captured.out and "denied=0." in captured.out
    printed = captured.out + captured.err
    assert not [s for s in _note_sentences() if s.strip() in printed]


def test_bench_keeps_a_refusal_detail_but_not_the_input(bench: Any, capsys) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        detail = [{"loc": ["body", "clinical_note"], "msg": "bad", "input": json.loads(request.content)}]
        return httpx.Response(422, json={"detail": detail})

    assert bench.main(["--url", "http://mediscale.test"], httpx.MockTransport(refuse)) == 1
    out = capsys.readouterr().out
    assert "HTTP 422 at body.clinical_note" in out
    assert not [s for s in _note_sentences() if s.strip() in out]


def test_bench_exits_2_without_a_traceback_when_nothing_listens(bench: Any, capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert bench.main(["--url", f"http://127.0.0.1:{port}", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the service at http://127.0.0.1:{port}" in err and "Traceback" not in err
