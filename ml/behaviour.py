"""CheckList-style behavioural probes for the served readmission risk (Ribeiro et al. 2020).

Why: a held-out AUROC says nothing about whether the service reads a record the way a clinician
does. A probe sends a few request bodies (`POST /predict` JSON) that differ in one controlled way
and states what must happen to the risk:

- ``invariance``: an irrelevant change (the patient's name or pronouns, white space or case in the
  note, 67 vs 67.0, a shorthand vs the nested field, which relative the patient lives with) moves
  no risk by more than ``tolerance`` from the first body's;
- ``direction``: a fact the outcome depends on (chest pain or shortness of breath still present at
  discharge, living alone, a chronic condition of the patient's own) raises the risk of body 1
  over body 0 by at least ``margin``; any further body (the finding not mentioned at all) must
  score like body 0 within ``tolerance``: a denied or relative's finding has no effect;
- ``monotone``: a sweep of prior admissions never lowers the risk (1e-9 slack) and the whole sweep
  raises it by at least ``margin``;
- ``between``: bodies (known zero, unknown, high value): an unknown scores neither as the best
  case nor worse than a high value, zero <= unknown <= high, and high - zero >= ``margin``. An
  optional `response_check` also asks the response's ``missing`` list to name the unknown input.

The probes are about facts the model can see and the synthetic outcome (data/synth.py) really
depends on: note features come from the rule-based extractor in data/concepts.py, so every note
uses words it knows, and invariance probes change nothing it reads. Notes are hand-written in a
few clinical styles (narrative, terse, bulleted), not the training generator's templates.

Pure Python, no Ray, no HTTP: `run_probes` takes any ``score(bodies) -> responses`` (HTTP in
bench/behaviour.py, fakes in tests/test_behaviour_unit.py).
"""

from __future__ import annotations

import copy
import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

Category = Literal[
    "denied_vs_reported",
    "family_vs_personal",
    "lives_alone_vs_family",
    "name_pronoun_invariance",
    "prior_admissions_monotone",
    "unknown_vs_zero",
    "unit_rounding_invariance",
    "note_whitespace_case",
]
Kind = Literal["invariance", "direction", "monotone", "between"]
CATEGORIES: tuple[str, ...] = get_args(Category)
KINDS: tuple[str, ...] = get_args(Kind)

# An irrelevant change may move the risk by half a percentage point at most: far below the risk
# bands (0.10 / 0.25), well above float and batching noise of one model version.
TOLERANCE = 0.005
# A strong fact (0.8-0.9 logit in data/synth.py: symptom still present, lives alone, cannot afford
# medications, 0 -> 3 prior admissions) moves the base patient's ~4% risk by ~3-5 points; a model
# that learned half of it still clears one point.
MARGIN = 0.01
# A weak fact (0.3-0.4 logit: one more Charlson condition, a symptom other than chest pain or
# shortness of breath) moves it by ~1-2 points: half a point, i.e. more than an invariance allows.
WEAK_MARGIN = 0.005
# A chronic condition named in the note only: the direction must be right and not zero, but its
# size is not pinned: measured on eight trained models (bench/README.md) the models learn
# +0.0005 to +0.005 for note-only heart failure or COPD where the synthetic outcome has about
# +0.015, because a stay that has codes has all its conditions coded in the training data.
# The check that matters clinically, a relative's condition scoring exactly like none, keeps
# its full tolerance.
CONDITION_MARGIN = 1e-4
SLACK = 1e-9  # ordering checks (monotone, between): equal risks are not a decrease

ResponseCheck = Callable[[Sequence[Mapping[str, Any]]], list[str]]
Score = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class ProbeError(Exception):
    """A body could not be scored (the service refused it). `run_probes` fails that probe with
    the message and goes on; any other exception (e.g. the service is unreachable) propagates."""


@dataclass(frozen=True)
class MissingCheck:
    """What each response's ``missing`` list must say: ``listed[i]`` are inputs body i leaves out
    (the response must name them), ``given[i]`` inputs it gives (the response must not)."""

    listed: tuple[tuple[str, ...], ...]
    given: tuple[tuple[str, ...], ...]

    def __call__(self, responses: Sequence[Mapping[str, Any]]) -> list[str]:
        problems = []
        for i, response in enumerate(responses):
            listed = self.listed[i] if i < len(self.listed) else ()
            given = self.given[i] if i < len(self.given) else ()
            if not listed and not given:
                continue
            missing = response.get("missing")
            if not isinstance(missing, list):
                problems.append(f"body {i}: the response has no `missing` list")
                continue
            problems += [f"body {i}: `missing` does not name {n}" for n in listed if n not in missing]
            problems += [f"body {i}: `missing` names {n}, which was given" for n in given if n in missing]
        return problems


@dataclass(frozen=True)
class Probe:
    """Request bodies (PatientRecord JSON) and what their risks must do; see the module doc."""

    name: str
    category: Category
    kind: Kind
    bodies: tuple[dict[str, Any], ...]
    labels: tuple[str, ...]  # what each body is ("denied", "reported", ...); never note text
    tolerance: float = TOLERANCE
    margin: float = MARGIN
    response_check: ResponseCheck | None = None
    about: str = ""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES or self.kind not in KINDS:
            raise ValueError(f"{self.name}: unknown category {self.category!r} or kind {self.kind!r}")
        if len(self.bodies) < 2 or len(self.labels) != len(self.bodies):
            raise ValueError(f"{self.name}: give 2 or more bodies and one label per body")
        if self.kind == "between" and len(self.bodies) != 3:
            raise ValueError(f"{self.name}: a between probe has 3 bodies (zero, unknown, high)")

    def check(self, risks: Sequence[float]) -> tuple[bool, str]:
        """(passed, reason) of the risks, one per body, for this probe's kind."""
        r, tol, lab = list(risks), self.tolerance, self.labels
        if self.kind == "invariance":
            worst = max(range(1, len(r)), key=lambda i: abs(r[i] - r[0]))
            delta = r[worst] - r[0]
            if abs(delta) > tol:
                return False, f"{lab[worst]!r} differs from {lab[0]!r} by {delta:+.4f} (tolerance {tol})"
            return True, f"largest difference {delta:+.4f} within {tol}"
        if self.kind == "direction":
            rise = r[1] - r[0]
            problems = []
            if rise < self.margin:
                problems.append(f"{lab[1]!r} - {lab[0]!r} = {rise:+.4f} < margin {self.margin}")
            problems += [
                f"{lab[i]!r} differs from {lab[0]!r} by {r[i] - r[0]:+.4f} (tolerance {tol}): "
                f"{lab[0]!r} must have no effect"
                for i in range(2, len(r))
                if abs(r[i] - r[0]) > tol
            ]
            return (False, "; ".join(problems)) if problems else (True, f"rise {rise:+.4f}")
        if self.kind == "monotone":
            drops = [
                f"{lab[i + 1]!r} below {lab[i]!r} by {r[i] - r[i + 1]:.4f}"
                for i in range(len(r) - 1)
                if r[i + 1] < r[i] - SLACK
            ]
            span = r[-1] - r[0]
            if span < self.margin:
                drops.append(f"{lab[-1]!r} - {lab[0]!r} = {span:+.4f} < margin {self.margin}")
            return (False, "; ".join(drops)) if drops else (True, f"non-decreasing, rise {span:+.4f}")
        zero, unknown, high = r
        problems = []
        if unknown < zero - SLACK:
            problems.append(f"{lab[1]!r} scored {zero - unknown:.4f} below {lab[0]!r}")
        if unknown > high + SLACK:
            problems.append(f"{lab[1]!r} scored {unknown - high:.4f} above {lab[2]!r}")
        if high - zero < self.margin:
            problems.append(f"{lab[2]!r} - {lab[0]!r} = {high - zero:+.4f} < margin {self.margin}")
        return (False, "; ".join(problems)) if problems else (True, "zero <= unknown <= high")


@dataclass
class ProbeResult:
    name: str
    category: str
    kind: str
    labels: list[str]
    risks: list[float]
    passed: bool
    reason: str
    variants: list[str | None] = field(default_factory=list)  # which variant answered each body


@dataclass
class BehaviourReport:
    results: list[ProbeResult]

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    @property
    def by_category(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for category in [c for c in CATEGORIES if any(r.category == c for r in self.results)]:
            mine = [r for r in self.results if r.category == category]
            out[category] = {"passed": sum(r.passed for r in mine), "total": len(mine)}
        return out

    def failures(self) -> list[ProbeResult]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "probes": [asdict(r) for r in self.results],
            "passed": self.passed,
            "failed": self.failed,
            "by_category": self.by_category,
        }


def _risk(response: Any) -> float | None:
    risk = response.get("risk") if isinstance(response, Mapping) else None
    if isinstance(risk, bool) or not isinstance(risk, int | float):
        return None
    return float(risk) if math.isfinite(risk) and 0.0 <= risk <= 1.0 else None


def evaluate(probe: Probe, score: Score) -> ProbeResult:
    """Score one probe's bodies (copies: `score` may change them) and check the risks."""
    result = ProbeResult(probe.name, probe.category, probe.kind, list(probe.labels), [], False, "")
    try:
        responses = score([copy.deepcopy(b) for b in probe.bodies])
    except ProbeError as exc:
        result.reason = f"not scored: {exc}"
        return result
    if len(responses) != len(probe.bodies):
        result.reason = f"{len(responses)} responses to {len(probe.bodies)} bodies"
        return result
    risks = [_risk(r) for r in responses]
    result.variants = [r.get("variant") if isinstance(r, Mapping) else None for r in responses]
    bad = [probe.labels[i] for i, risk in enumerate(risks) if risk is None]
    if bad:
        result.reason = f"no risk in [0, 1] in the response to {', '.join(map(repr, bad))}"
        return result
    result.risks = [round(r, 6) for r in risks if r is not None]
    result.passed, result.reason = probe.check([r for r in risks if r is not None])
    problems = probe.response_check(responses) if probe.response_check else []
    if problems:
        result.reason = "; ".join(problems) if result.passed else f"{result.reason}; {'; '.join(problems)}"
        result.passed = False
    return result


def run_probes(
    score: Score,
    probes: Sequence[Probe] | None = None,
    progress: Callable[[ProbeResult], None] | None = None,
) -> BehaviourReport:
    """Every probe (default: `build_probes()`) through `score`, which takes request bodies and
    returns the response dicts (each with ``risk`` and ``missing``), in order."""
    results = []
    for probe in build_probes() if probes is None else probes:
        results.append(evaluate(probe, score))
        if progress is not None:
            progress(results[-1])
    return BehaviourReport(results)


# --------------------------------------------------------------------------- the patients


@dataclass(frozen=True)
class Person:
    """Who a note is about: how it names them, their pronouns, and the `sex` field to send."""

    name: str
    noun: str
    sex: Literal["M", "F"] | None
    he: str
    him: str
    his: str
    partner: str

    def words(self) -> dict[str, str]:
        return {"Name": self.name, "noun": self.noun, "he": self.he, "He": self.he.capitalize(),
                "him": self.him, "his": self.his, "His": self.his.capitalize(),
                "partner": self.partner}  # fmt: skip


def man(name: str) -> Person:
    return Person(name, "man", "M", "he", "him", "his", "wife")


def woman(name: str) -> Person:
    return Person(name, "woman", "F", "she", "her", "her", "husband")


def they(name: str) -> Person:
    return Person(name, "person", None, "they", "them", "their", "partner")


OMIT = object()  # a field value that drops the field from the body

# Structured facts of the base stay: 70 years, 5 days, 1 prior admission, routine vitals and labs.
BASE: dict[str, Any] = {
    "age": 70,
    "admission_type": "EMERGENCY",
    "via_emergency_department": True,
    "discharge_disposition": "HOME",
    "los_days": 5,
    "prior_admissions_365d": 1,
    "prior_ed_visits_365d": 1,
    "vitals": {"heart_rate": 82, "sbp": 128, "dbp": 72, "resp_rate": 18, "temperature": 36.8, "spo2": 95},
    "labs": {"creatinine": 1.3, "sodium": 136, "potassium": 4.1, "hemoglobin": 11.2, "albumin": 2.9},
}


@dataclass(frozen=True)
class Scenario:
    """A hand-written discharge summary with slots ({finding}, {social}, {family}, {pmh}; pronoun
    words), and the structured record that goes with it."""

    template: str
    diagnoses: tuple[str, ...]
    slots: Mapping[str, str]
    extra: Mapping[str, Any] = field(default_factory=dict)

    def note(self, person: Person, age: Any = 70, **slots: str) -> str:
        words = person.words()
        filled = {k: v.format(**words) for k, v in {**self.slots, **slots}.items()}
        text = self.template.format(**words, age=age, **filled)
        return "\n".join(re.sub(r" {2,}", " ", line).rstrip() for line in text.split("\n"))

    def body(self, person: Person, note: Mapping[str, str] | None = None, **fields: Any) -> dict[str, Any]:
        """The record: BASE, this stay's codes and labs, the person's sex, the note (slots from
        `note`), then `fields` (OMIT drops one; ``clinical_note=OMIT`` sends no note)."""
        body = copy.deepcopy(BASE) | {"diagnoses": list(self.diagnoses)} | copy.deepcopy(dict(self.extra))
        if person.sex is not None:
            body["sex"] = person.sex
        age = fields.get("age", body["age"])
        body["clinical_note"] = self.note(person, age=round(age) if age is not OMIT else 70, **(note or {}))
        for key, value in fields.items():
            if value is OMIT:
                body.pop(key, None)
            else:
                body[key] = value
        return body


CHF = Scenario(
    template="""DISCHARGE SUMMARY

Principal diagnosis: acute on chronic systolic heart failure (EF 30%).
Other active problems: type 2 diabetes mellitus; hypertension{pmh}.

HPI: {Name}, a {age}-year-old {noun}, came to the ED after gaining 4 kg over one week; {he} had run \
out of torsemide ten days before. BNP 1450 on arrival.

Hospital course: Diuresed with IV furosemide 40 mg twice daily, net negative 5.2 L. Creatinine \
peaked at 1.5 and was 1.3 on the day of discharge. Switched to oral torsemide 20 mg daily; \
metoprolol succinate and sacubitril-valsartan continued. The heart failure nurse reviewed daily \
weights and a 2 g sodium diet with {him}.

Social history: {social} Retired school cafeteria manager. Never smoked.

Family history: {family}

Condition at discharge: stable. {finding} Walking the unit hallway without assistance. Discharge \
weight 81.4 kg.

Follow-up: heart failure clinic appointment scheduled in 7 days; BMP in 3 days.""",
    diagnoses=("I509", "E119", "I10"),
    slots={"pmh": "", "social": "Lives with {his} {partner}.", "family": "Noncontributory.", "finding": ""},
    extra={"labs": {**BASE["labs"], "bnp": 1450}},
)

NSTEMI = Scenario(
    template="""Discharge Summary - Cardiology

Diagnoses: NSTEMI; coronary artery disease, s/p drug-eluting stent to the proximal LAD on hospital \
day 2; hyperlipidemia{pmh}.

HPI: {Name} is a {age}-year-old {noun} who came in with a troponin of 2.1 ng/mL and new T-wave \
inversions in V2-V4 after two days of feeling unwell at work.

Hospital course: Heparin infusion, then catheterization showing a 90% proximal LAD stenosis, treated \
with a single drug-eluting stent. Echocardiogram: EF 50% with mild anterior hypokinesis. Started \
aspirin, ticagrelor 90 mg twice daily, atorvastatin 80 mg and metoprolol tartrate 25 mg twice daily.

Social history: {social} Works part-time as a bookkeeper. Quit smoking 10 years ago.

Family history: {family}

At discharge: {finding} Radial access site clean and dry. Heart rate 68, BP 118/70.

Plan: cardiac rehabilitation referral placed; cardiology appointment scheduled in 2 weeks. {He} \
received teaching to take both antiplatelet medicines every day.""",
    diagnoses=("I214", "I2510", "E785"),
    slots={
        "pmh": "",
        "social": "Lives with {his} {partner}.",
        "family": "Father had an MI at 52.",
        "finding": "",
    },
)

PNEUMONIA = Scenario(
    template="""DISCHARGE SUMMARY

Admission diagnosis: community-acquired pneumonia, right lower lobe.

HPI: {Name} is a {age}-year-old {noun} with type 2 diabetes and hypertension who came to the ED with \
four days of rigors, poor oral intake and rust-coloured sputum. Saturation 88% on room air on \
arrival; chest x-ray with a right lower lobe consolidation.

PMH: type 2 diabetes on metformin; hypertension; osteoarthritis of both knees{pmh}.

Family history: {family}

Social history: {social} Former smoker, 20 pack-years, quit in 2009. Occasional alcohol.

Hospital course: IV ceftriaxone and azithromycin, changed to oral cefpodoxime on day 3. Weaned to \
room air on day 4. Blood cultures with no growth at 48 hours.

Discharge exam: T 36.8, HR 82, BP 128/72, SpO2 95% on room air. Crackles at the right base, \
improving. {finding}

Plan: finish 7 days of antibiotics; repeat chest x-ray in 6 weeks. Return precautions reviewed \
with {him}.""",
    diagnoses=("J189", "E119", "I10"),
    slots={"pmh": "", "social": "Lives with {his} {partner}.", "family": "Noncontributory.", "finding": ""},
)

COPD = Scenario(
    template="""Discharge summary
Patient: {Name}    Age: {age}    Service: general medicine

Reason for admission: COPD exacerbation

Hospital course:
- nebulized ipratropium-albuterol every 4 hours, spaced to as needed by day 3
- prednisone 40 mg daily for 5 days; doxycycline for 5 days
- weaned from 4 L back to 2 L by nasal cannula, {his} home oxygen dose
- inhaler technique reviewed by respiratory therapy

Past medical history:
- COPD (FEV1 38% of predicted) on 2 L home oxygen
- hypertension{pmh}

Social: {social}
Family: {family}

Status at discharge: {finding} Back to {his} baseline, walking with a rolling walker.

Disposition: home with home health physical therapy. Pulmonology follow-up scheduled in 2 weeks.""",
    diagnoses=("J441", "I10"),
    slots={"pmh": "", "social": "Lives with {his} {partner}.", "family": "Noncontributory.", "finding": ""},
    extra={"vitals": {**BASE["vitals"], "spo2": 92}},
)


# --------------------------------------------------------------------------- the probes

Variants = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class _Spec:
    name: str
    category: Category
    kind: Kind
    variants: Variants
    about: str
    margin: float = MARGIN
    tolerance: float = TOLERANCE
    response_check: ResponseCheck | None = None


def _finding(scenario: Scenario, person: Person, texts: dict[str, str], **fields: Any) -> Variants:
    return [(label, scenario.body(person, {"finding": text}, **fields)) for label, text in texts.items()]


def _denied_vs_reported() -> list[_Spec]:
    cat: Category = "denied_vs_reported"
    return [
        _Spec("chest_pain_denied_vs_reported", cat, "direction", _finding(NSTEMI, woman("Ms. Okafor"), {
            "denied": "{He} denies chest pain or pressure since the stent.",
            "reported": "{He} reported chest pressure on walking this morning, relieved by rest.",
            "not mentioned": "",
        }), "chest pain still present at discharge (+0.8 logit); a denial is no mention"),
        _Spec("dyspnea_denied_vs_still_present", cat, "direction", _finding(CHF, woman("Mrs. Garcia"), {
            "denied": "Denies shortness of breath at rest; sleeping flat on one pillow.",
            "reported": "Still short of breath after walking 20 feet; needs two pillows at night.",
            "not mentioned": "",
        }), "shortness of breath at discharge (+0.8 logit)"),
        _Spec("dyspnea_ros_negative_vs_positive", cat, "direction", _finding(COPD, man("Mr. Nguyen"), {
            "ROS negative": "Review of systems negative for dyspnea, chest tightness and leg swelling.",
            "ROS positive": "Review of systems positive for dyspnea on exertion; negative for chest "
            "tightness and leg swelling.",
            "not in ROS": "Review of systems negative for chest tightness and leg swelling.",
        }), "a list negation covers every item; a positive ROS item is present"),
        _Spec("chest_pain_post_negation", cat, "direction", _finding(PNEUMONIA, man("Mr. Smith"), {
            "CP: denied": "CP: denied.",
            "CP: present": "CP: pleuritic, 3/10 with deep breaths.",
            "not mentioned": "",
        }), "a negation after the term ('CP: denied') is a denial"),
        _Spec("leg_swelling_absent_vs_present", cat, "direction", _finding(CHF, man("Mr. Okafor"), {
            "absent": "No lower extremity edema.",
            "present": "Persistent 2+ lower extremity edema to the mid-shin bilaterally.",
            "not mentioned": "",
        }), "another symptom at discharge (+0.4 logit): weak margin", margin=WEAK_MARGIN),
        _Spec("dizziness_denied_vs_reported", cat, "direction", _finding(NSTEMI, woman("Ms. Nguyen"), {
            "denied": "Denies dizziness when standing.",
            "reported": "Reports lightheadedness on standing since starting metoprolol.",
            "not mentioned": "",
        }), "another symptom at discharge (+0.4 logit): weak margin", margin=WEAK_MARGIN),
    ]  # fmt: skip


def _family_vs_personal() -> list[_Spec]:
    cat: Category = "family_vs_personal"

    # No ICD codes in these bodies: in the training data a stay with codes has all its conditions
    # coded, so "coded, but heart failure only in the note" never occurs there. Without codes the
    # note is the comorbidity source, as for the uncoded stays the model learned from.
    def variants(scenario: Scenario, person: Person, family: str, personal: dict[str, str]) -> Variants:
        return [
            ("relative's", scenario.body(person, {"family": family}, diagnoses=OMIT)),
            ("patient's own", scenario.body(person, personal, diagnoses=OMIT)),
            ("not mentioned", scenario.body(person, diagnoses=OMIT)),
        ]

    return [
        _Spec("heart_failure_mother_vs_patient", cat, "direction", variants(
            PNEUMONIA, woman("Mrs. Garcia"), "Mother died of congestive heart failure at 81.",
            {"pmh": "; heart failure with reduced ejection fraction (EF 35%)"},
        ), "CHF (+0.35 logit) counts only as the patient's own", margin=CONDITION_MARGIN),
        _Spec("copd_father_vs_patient", cat, "direction", variants(
            NSTEMI, man("Mr. Smith"), "Father had an MI at 52 and emphysema.",
            {"pmh": "; COPD on 2 L home oxygen"},
        ), "COPD (+0.30 logit) counts only as the patient's own", margin=CONDITION_MARGIN),
        _Spec("ckd_brother_vs_patient", cat, "direction", variants(
            CHF, woman("Ms. Okafor"), "Brother on hemodialysis for chronic kidney disease.",
            {"pmh": "; chronic kidney disease stage 3a"},
        ), "CKD (+0.30 logit) counts only as the patient's own", margin=CONDITION_MARGIN),
        _Spec("cancer_sister_vs_patient", cat, "direction", variants(
            COPD, man("Mr. Okafor"), "sister with breast cancer, in remission.",
            {"pmh": "\n- non-small cell lung cancer on maintenance pembrolizumab"},
        ), "cancer (+0.40 logit) counts only as the patient's own", margin=CONDITION_MARGIN),
        _Spec("angina_brother_vs_patient", cat, "direction", variants(
            NSTEMI, woman("Mrs. Smith"), "Father had an MI at 52; brother with angina.",
            {"finding": "Still has exertional angina after one flight of stairs."},
        ), "a relative's symptom is not the patient's chest pain (+0.8 logit)"),
    ]  # fmt: skip


def _lives_alone_vs_family() -> list[_Spec]:
    cat: Category = "lives_alone_vs_family"

    def social(scenario: Scenario, person: Person, texts: dict[str, str]) -> Variants:
        return [(label, scenario.body(person, {"social": text})) for label, text in texts.items()]

    return [
        _Spec("lives_alone_vs_with_daughter", cat, "direction", social(CHF, woman("Mrs. Garcia"), {
            "with daughter": "Widowed; lives with {his} daughter, who fills {his} pill organizer weekly.",
            "alone": "Widowed; lives alone in a third-floor walk-up apartment.",
        }), "living alone (+0.8 logit)"),
        _Spec("lives_by_himself_vs_with_wife", cat, "direction", social(PNEUMONIA, man("Mr. Nguyen"), {
            "with wife": "Lives at home with {his} wife of 45 years.",
            "by himself": "Lives by himself since {his} wife died in 2019.",
        }), "living alone, said another way"),
        _Spec("lives_on_own_vs_with_family", cat, "direction", social(COPD, man("Mr. Okafor"), {
            "with family": "Lives with family (son and daughter-in-law).",
            "on his own": "Lives on {his} own; a neighbour checks in most days.",
        }), "living alone, said another way"),
        _Spec("alone_but_daughter_visits", cat, "direction", social(NSTEMI, woman("Ms. Okafor"), {
            "with daughter": "Lives with {his} daughter and son-in-law.",
            "alone, daughter visits": "Lives alone; {his} daughter visits on weekends.",
        }), "a visiting relative does not make someone live with family"),
        _Spec("which_relative_is_irrelevant", cat, "invariance", social(CHF, woman("Mrs. Smith"), {
            "husband": "Lives with {his} husband.",
            "daughter": "Lives with {his} daughter.",
            "son and his wife": "Lives with {his} son and his wife.",
            "sister": "Lives with {his} sister.",
        }), "who the patient lives with does not matter, only that someone is there"),
    ]  # fmt: skip


HIGH_RISK_NOTE = {
    "social": "Lives alone. Cannot afford {his} sacubitril-valsartan copays; social work consulted.",
    "finding": "Still short of breath after walking 20 feet.",
}


def _name_pronoun() -> list[_Spec]:
    cat: Category = "name_pronoun_invariance"
    men = ["Mr. Smith", "Mr. Nguyen", "Mr. Okafor", "Mr. Garcia"]
    women = ["Mrs. Garcia", "Ms. Okafor", "Mrs. Smith", "Ms. Nguyen"]
    return [
        _Spec("surnames_men", cat, "invariance", [(n, PNEUMONIA.body(man(n))) for n in men],
              "the surname carries no risk"),
        _Spec("surnames_women", cat, "invariance", [(n, NSTEMI.body(woman(n))) for n in women],
              "the surname carries no risk"),
        _Spec("pronouns_he_she_they", cat, "invariance",
              [(f"{p.he}/{p.his}", CHF.body(p, sex=OMIT)) for p in (man("The patient"), woman("The patient"),
                                                           they("The patient"))],
              "pronouns (and partner words) carry no risk; `sex` is left out in all three"),
        _Spec("named_vs_the_patient", cat, "invariance",
              [(n, PNEUMONIA.body(woman(n))) for n in ("Ms. Okafor", "The patient", "Pt")],
              "a name or 'the patient' carries no risk"),
        _Spec("surnames_high_risk_note", cat, "invariance",
              [(n, CHF.body(woman(n), HIGH_RISK_NOTE)) for n in women],
              "no name effect where risk is high either (lives alone, cost barrier, dyspnea)"),
    ]  # fmt: skip


def _wrap(text: str, width: int) -> str:
    """Hard-wrap every paragraph line at `width` (list lines keep their marker on the first line)."""
    return "\n".join(
        textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False) if line else line
        for line in text.split("\n")
    )


def _loosen(text: str) -> str:
    """Blank lines doubled and trailing spaces after sentences that end a line."""
    return text.replace("\n\n", "  \n\n\n").replace(".\n", ".  \n")


def _whitespace() -> list[_Spec]:
    cat: Category = "note_whitespace_case"
    facts = {**HIGH_RISK_NOTE, "finding": "Still short of breath after walking 20 feet. Denies chest pain.",
             "family": "Mother with angina."}  # fmt: skip

    def variants(scenario: Scenario, person: Person, changes: dict[str, Callable[[str], str]]) -> Variants:
        body = scenario.body(person, facts)
        note = body["clinical_note"]
        return [(label, body | {"clinical_note": change(note)}) for label, change in changes.items()]

    return [
        _Spec("note_extra_spaces", cat, "invariance", variants(CHF, woman("Mrs. Garcia"), {
            "as written": lambda t: t,
            "every space doubled": lambda t: t.replace(" ", "  "),
            "two spaces after periods": lambda t: t.replace(". ", ".  "),
        }), "runs of spaces are one space"),
        _Spec("note_tabs_and_crlf", cat, "invariance", variants(CHF, man("Mr. Nguyen"), {
            "LF": lambda t: t,
            "CRLF": lambda t: t.replace("\n", "\r\n"),
            "tab after colons, CRLF": lambda t: t.replace(": ", ":\t").replace("\n", "\r\n"),
            "tabs for spaces": lambda t: t.replace(" ", "\t"),
        }), "tabs and Windows line ends are white space"),
        _Spec("note_upper_lower_case", cat, "invariance", variants(NSTEMI, woman("Ms. Okafor"), {
            "as written": lambda t: t,
            "UPPER CASE": str.upper,
            "lower case": str.lower,
        }), "old systems send notes in capitals; case carries no risk"),
        _Spec("note_hard_wrapped", cat, "invariance", variants(COPD, man("Mr. Smith"), {
            "unwrapped": lambda t: t,
            "wrapped at 72": lambda t: _wrap(t, 72),
            "wrapped at 40": lambda t: _wrap(t, 40),
        }), "real notes are hard-wrapped mid-sentence"),
        _Spec("note_padding_and_blank_lines", cat, "invariance", variants(PNEUMONIA, they("Sam Rivera"), {
            "as written": lambda t: t,
            "padded": lambda t: "\n\n   " + t + " \t\n\n",
            "extra blank lines, trailing spaces": _loosen,
        }), "leading, trailing and repeated blank lines carry no risk"),
    ]  # fmt: skip


def _vitals_without(item: str) -> dict[str, Any]:
    return {k: v for k, v in BASE["vitals"].items() if k != item}


def _unit_rounding() -> list[_Spec]:
    cat: Category = "unit_rounding_invariance"
    chf, pna, okafor = woman("Mrs. Garcia"), man("Mr. Smith"), woman("Ms. Okafor")
    given = MissingCheck(listed=((), (), (), ()), given=(("vitals",),) * 4)
    hr = {"vitals": _vitals_without("heart_rate")}
    bp = {"vitals": _vitals_without("sbp")}
    labs = {k: v for k, v in BASE["labs"].items() if k not in ("creatinine", "sodium")}
    return [
        _Spec("age_67_vs_67p0_vs_67p0001", cat, "invariance",
              [(str(a), PNEUMONIA.body(pna, age=a)) for a in (67, 67.0, 67.0001)],
              "an integer, its float and a rounding error are one age"),
        _Spec("heart_rate_shorthand_list_nested", cat, "invariance", [
            ("heart_rate 82", CHF.body(chf, heart_rate=82, **hr)),
            ("heart_rate [82]", CHF.body(chf, heart_rate=[82], **hr)),
            ("vitals.heart_rate 82", CHF.body(chf, vitals=hr["vitals"] | {"heart_rate": 82})),
            ("vitals.heart_rate [82.0]", CHF.body(chf, vitals=hr["vitals"] | {"heart_rate": [82.0]})),
        ], "the shorthand, a one-item list and the nested field are one measurement", response_check=given),
        _Spec("blood_pressure_shorthand_vs_sbp", cat, "invariance", [
            ("blood_pressure 118", NSTEMI.body(okafor, blood_pressure=118, **bp)),
            ("vitals.sbp 118", NSTEMI.body(okafor, vitals=bp["vitals"] | {"sbp": 118})),
            ("blood_pressure [118.0]", NSTEMI.body(okafor, blood_pressure=[118.0], **bp)),
            ("vitals.sbp [118]", NSTEMI.body(okafor, vitals=bp["vitals"] | {"sbp": [118]})),
        ], "blood_pressure is vitals.sbp", response_check=given),
        _Spec("los_days_3_vs_3p0", cat, "invariance",
              [(str(v), COPD.body(man("Mr. Nguyen"), los_days=v)) for v in (3, 3.0)],
              "an integer and its float are one length of stay"),
        _Spec("icd_code_dots_and_case", cat, "invariance", [
            ("I50.9 E11.9 I10", CHF.body(chf, diagnoses=["I50.9", "E11.9", "I10"])),
            ("I509 E119 I10", CHF.body(chf, diagnoses=["I509", "E119", "I10"])),
            ("i50.9 e11.9 i10", CHF.body(chf, diagnoses=["i50.9", "e11.9", "i10"])),
        ], "ICD-10 codes with or without the dot, in any case, are the same codes"),
        _Spec("labs_scalar_list_float", cat, "invariance", [
            ("scalars", PNEUMONIA.body(pna, labs=labs | {"creatinine": 1.3, "sodium": 136})),
            ("one-item lists", PNEUMONIA.body(pna, labs=labs | {"creatinine": [1.3], "sodium": [136]})),
            ("floats", PNEUMONIA.body(pna, labs=labs | {"creatinine": 1.30, "sodium": 136.0})),
        ], "a lab value as a number or a one-item list is one measurement"),
    ]  # fmt: skip


SWEEP = (0, 1, 2, 3, 5, 8)


def _prior_admissions() -> list[_Spec]:
    cat: Category = "prior_admissions_monotone"

    def sweep(make: Callable[[int], dict[str, Any]]) -> Variants:
        return [(f"prior={n}", make(n)) for n in SWEEP]

    garcia, nguyen = woman("Mrs. Garcia"), man("Mr. Nguyen")
    return [
        _Spec("prior_admissions_sweep", cat, "monotone",
              sweep(lambda n: CHF.body(garcia, prior_admissions_365d=n)),
              "more admissions in the last year never lower the risk (+0.3 logit each up to 3)"),
        _Spec("prior_admissions_sweep_no_note", cat, "monotone",
              sweep(lambda n: CHF.body(garcia, prior_admissions_365d=n, clinical_note=OMIT)),
              "the same with the tabular model alone"),
        _Spec("prior_admissions_sweep_high_risk", cat, "monotone",
              sweep(lambda n: CHF.body(garcia, HIGH_RISK_NOTE, prior_admissions_365d=n, age=82)),
              "the same near the top of the risk range"),
        _Spec("prior_admissions_sweep_young", cat, "monotone",
              sweep(lambda n: PNEUMONIA.body(nguyen, prior_admissions_365d=n, age=48, los_days=3)),
              "the same near the bottom of the risk range"),
    ]  # fmt: skip


def _missing(field_name: str) -> MissingCheck:
    return MissingCheck(listed=((), (field_name,), ()), given=((field_name,), (), (field_name,)))


def _unknown_vs_zero() -> list[_Spec]:
    cat: Category = "unknown_vs_zero"
    garcia, smith = woman("Mrs. Garcia"), man("Mr. Smith")
    note_given = MissingCheck(listed=((), (), ()), given=(("clinical_note",),) * 3)
    charlson = ["I509", "J449", "N184", "C3490", "E1122"]  # CHF, COPD, CKD, cancer, diabetes w/ complication
    return [
        _Spec("prior_admissions_unknown_vs_zero", cat, "between", [
            ("0", CHF.body(garcia, prior_admissions_365d=0)),
            ("not given", CHF.body(garcia, prior_admissions_365d=OMIT)),
            ("5", CHF.body(garcia, prior_admissions_365d=5)),
        ], "an unknown count is neither the best case nor worse than 5",
            response_check=_missing("prior_admissions_365d")),
        _Spec("prior_ed_visits_unknown_vs_zero", cat, "between", [
            ("0", PNEUMONIA.body(smith, prior_ed_visits_365d=0)),
            ("not given", PNEUMONIA.body(smith, prior_ed_visits_365d=OMIT)),
            ("6", PNEUMONIA.body(smith, prior_ed_visits_365d=6)),
        ], "ordering only: ED visits do not drive the synthetic outcome", margin=0.0,
            response_check=_missing("prior_ed_visits_365d")),
        _Spec("diagnoses_unknown_vs_empty", cat, "between", [
            ("[]", NSTEMI.body(garcia, diagnoses=[])),
            ("not given", NSTEMI.body(garcia, diagnoses=OMIT)),
            ("5 Charlson codes", NSTEMI.body(garcia, diagnoses=charlson)),
        ], "no codes is known-none; absent codes are unknown", response_check=_missing("diagnoses")),
        _Spec("lives_alone_unknown_vs_with_family", cat, "between", [
            ("lives with wife", PNEUMONIA.body(smith, {"social": "Retired machinist; lives with his wife."})),
            ("not said", PNEUMONIA.body(smith, {"social": "Retired machinist; enjoys gardening."})),
            ("lives alone", PNEUMONIA.body(smith, {"social": "Retired machinist; lives alone."})),
        ], "a note that does not say is neither 'with family' nor 'alone'", response_check=note_given),
        _Spec("cost_barrier_unknown_vs_affordable", cat, "between", [
            ("able to afford", CHF.body(garcia, {"social": "Lives with her husband. Able to afford her "
                                                            "medications with Medicare Part D."})),
            ("not said", CHF.body(garcia)),
            ("cannot afford", CHF.body(garcia, {"social": "Lives with her husband. Cannot afford her "
                                                          "sacubitril-valsartan copays."})),
        ], "a note silent on cost is neither 'affordable' nor a cost barrier", response_check=note_given),
    ]  # fmt: skip


def build_probes(mixed_variants: bool = False) -> list[Probe]:
    """All probes. Bodies of one probe share ``patient_id`` ``probe-<name>`` so that a service
    that routes by patient id answers them from one model version; `mixed_variants` gives each
    body its own id instead (``probe-<name>-<i>``), to see what a variant mix does."""
    specs = [
        *_denied_vs_reported(), *_family_vs_personal(), *_lives_alone_vs_family(), *_name_pronoun(),
        *_prior_admissions(), *_unknown_vs_zero(), *_unit_rounding(), *_whitespace(),
    ]  # fmt: skip
    probes = []
    for spec in specs:
        bodies = []
        for i, (_, body) in enumerate(spec.variants):
            patient_id = f"probe-{spec.name}-{i}" if mixed_variants else f"probe-{spec.name}"
            bodies.append({"patient_id": patient_id} | body)
        probes.append(
            Probe(
                name=spec.name,
                category=spec.category,
                kind=spec.kind,
                bodies=tuple(bodies),
                labels=tuple(label for label, _ in spec.variants),
                tolerance=spec.tolerance,
                margin=spec.margin,
                response_check=spec.response_check,
                about=spec.about,
            )
        )
    return probes
