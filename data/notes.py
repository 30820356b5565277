"""Synthetic discharge summaries rendered from structured facts.

Why the variation: the 30-day readmission label depends on facts whose *polarity* and
*experiencer* only show in the wording. The same condition and symptom words therefore appear
affirmed ("known CHF", "reports ongoing chest pain"), negated ("no history of CHF", "denies
chest pain", "chest pain: denied") and attributed to relatives ("mother had CHF") across notes.
A keyword model that counts terms gets these wrong; a model that reads negation and experiencer
gets them right. Many alternative templates per fact, shuffled sections, optional sections and
irrelevant filler keep the signal from being a single template a model can memorise.

Guarantees that tests and the generator rely on:

* every denied fact has at least one mention whose negation cue (one of ``NEGATION_CUES``)
  starts at most ``NEGATION_WINDOW`` words before the term, in the same sentence;
  post-negations ("CP: denied") are only ever *extra* mentions;
* a sentence that mentions an affirmed symptom or condition contains no negation cue, and
  symptom / condition surface forms appear nowhere except where a fact (or the primary problem)
  puts them, so filler never leaks or contradicts a fact;
* every family-history mention names the relative in the same sentence.

How typos are applied: fact-bearing spans (negation cues, condition / symptom surface forms,
relatives, medications, the primary problem and the phrases in ``LIVES_ALONE_PHRASES``,
``COST_BARRIER_PHRASES`` and the follow-up phrase lists) are wrapped in invisible markers while
the note is built. At the end each whitespace token is picked independently with probability
``typo_rate`` (by geometric skipping, so the cost is per typo, not per word); a picked token
gets a letter swap, drop, doubling or keyboard-neighbour substitution only if it is an
unprotected lowercase word of four or more letters, and never if the result would read as a
negation cue or a clinical term. The markers are then stripped.

All randomness comes from the caller's ``numpy.random.Generator``: uniforms are drawn in
blocks of 160 (usually one or two blocks per note, never one numpy call per choice) and consumed
in order, so the same generator state and facts give the same text and leave the generator in
the same state.
"""

import math
import re
from dataclasses import dataclass
from itertools import product

import numpy as np

__all__ = [
    "AMA",
    "COST_BARRIER_PHRASES",
    "CONDITIONS",
    "DISPOSITIONS",
    "FOLLOWUP_PHRASES",
    "HOME",
    "HOME_HEALTH",
    "LIVES_ALONE_PHRASES",
    "NEGATION_CUES",
    "NEGATION_WINDOW",
    "NOTE_TEMPLATES",
    "NO_FOLLOWUP_PHRASES",
    "POST_NEGATION_CUES",
    "PRIMARY_PROBLEMS",
    "REHAB",
    "SNF",
    "SYMPTOMS",
    "NoteFacts",
    "render_discharge_summary",
]

# --------------------------------------------------------------------------------------------
# Public vocabulary
# --------------------------------------------------------------------------------------------

HOME = "HOME"
HOME_HEALTH = "HOME_HEALTH"
SNF = "SNF"
REHAB = "REHAB"
AMA = "AMA"
DISPOSITIONS = (HOME, HOME_HEALTH, SNF, REHAB, AMA)

CONDITIONS: dict[str, list[str]] = {
    "chf": ["congestive heart failure", "CHF", "heart failure", "HFrEF"],
    "copd": ["COPD", "chronic obstructive pulmonary disease", "emphysema"],
    "diabetes": ["diabetes mellitus", "type 2 diabetes", "DM2", "T2DM", "DM", "diabetes"],
    "ckd": ["chronic kidney disease", "CKD"],
    "htn": ["hypertension", "HTN", "high blood pressure"],
    "afib": ["atrial fibrillation", "AFib", "A-fib", "paroxysmal atrial fibrillation"],
    "cad": ["coronary artery disease", "CAD", "ischemic heart disease"],
    "cancer": ["cancer", "malignancy", "carcinoma"],
    "dementia": ["dementia", "Alzheimer dementia", "cognitive impairment"],
    "liver_disease": ["cirrhosis", "liver disease", "chronic liver disease"],
    "stroke": ["stroke", "CVA", "cerebrovascular accident"],
    "depression": ["depression", "major depressive disorder", "MDD"],
    "osa": ["obstructive sleep apnea", "OSA"],
    "pad": ["peripheral artery disease", "PAD", "peripheral vascular disease"],
}

SYMPTOMS: dict[str, list[str]] = {
    "chest_pain": ["chest pain", "chest pressure", "chest discomfort", "CP"],
    "shortness_of_breath": ["shortness of breath", "SOB", "dyspnea", "breathlessness"],
    "dizziness": ["dizziness", "lightheadedness", "dizzy spells"],
    "palpitations": ["palpitations", "heart racing", "fluttering in the chest"],
    "leg_swelling": ["leg swelling", "lower extremity edema", "LE edema", "ankle swelling", "pedal edema"],
    "fever": ["fever", "fevers", "subjective fevers", "febrile episodes"],
    "confusion": ["confusion", "altered mental status", "AMS", "disorientation"],
    "cough": ["cough", "productive cough"],
    "nausea": ["nausea", "queasiness"],
}

PRIMARY_PROBLEMS: list[str] = [
    "CHF exacerbation",
    "community-acquired pneumonia",
    "COPD exacerbation",
    "sepsis from UTI",
    "upper GI bleed",
    "acute kidney injury",
    "cellulitis",
    "syncope",
    "NSTEMI",
    "DKA",
    "hip fracture after fall",
    "atrial fibrillation with RVR",
]

# Cues must start at most this many words before the term they negate (NegEx-style window).
NEGATION_WINDOW = 6


@dataclass
class NoteFacts:
    """Structured facts a note must express, each with its polarity and experiencer."""

    age: int
    sex: str  # "M" or "F"
    primary_problem: str  # one of PRIMARY_PROBLEMS
    los_days: float
    disposition: str  # one of HOME, HOME_HEALTH, SNF, REHAB, AMA
    history: list[str]  # CONDITIONS keys the patient has
    denied_history: list[str]  # CONDITIONS keys documented as absent
    family_history: list[tuple[str, str]]  # (relative, CONDITIONS key): the relative's, not pt's
    symptoms_present: list[str]  # SYMPTOMS keys reported at discharge
    symptoms_denied: list[str]  # SYMPTOMS keys explicitly denied
    lives_alone: bool
    cannot_afford_medications: bool
    medications: list[str]  # generic drug names
    followup_arranged: bool
    typo_rate: float = 0.02  # per-word typo probability; protected spans never get typos


# --------------------------------------------------------------------------------------------
# Protection markers: spans inside <...> in templates never receive typos
# --------------------------------------------------------------------------------------------

_PROT = "\x01"  # starts a protected span
_PSP = "\x02"  # a space inside a protected span, so the span stays one token
_MARK_RE = re.compile(r"<([^<>]+)>")


def _protect(s: str) -> str:
    return _PROT + s.replace(" ", _PSP)


def _mark(t: str) -> str:
    """Turn ``<span>`` template markup into protected spans."""
    return _MARK_RE.sub(lambda m: _protect(m.group(1)), t)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _words(s: str) -> int:
    return len(_MARK_RE.sub(r"\1", s).split())


def _forms(table: dict[str, list[str]]) -> dict[str, tuple[tuple[str, str, int], ...]]:
    """Per key: (protected form, protected capitalised form, word count)."""
    return {k: tuple((_protect(f), _protect(_cap(f)), len(f.split())) for f in v) for k, v in table.items()}


_COND_FORMS = _forms(CONDITIONS)
_SYM_FORMS = _forms(SYMPTOMS)

# --------------------------------------------------------------------------------------------
# Negated templates. <cue> marks the cue; {x} is where the term list goes.
# --------------------------------------------------------------------------------------------

_SYM_NEG_TEMPLATES = (
    "<Denies> {x}.",
    "{S} <denies> {x}.",
    "{S} <denies> any {x}.",
    "<No> {x}.",
    "{S} reports <no> {x}.",
    "<Negative for> {x}.",
    "ROS <negative for> {x}.",
    "{S} is <without> {x}.",
    "Currently <free of> {x}.",
    "{S} does <not> report {x}.",
    "{S} does <not> endorse any {x}.",
    "<Denied> {x} on review of systems.",
    "<No> complaints of {x}.",
    "There is <no> {x} at this time.",
    "{S} has been <free of> {x} since admission.",
    "<No> reported {x}.",
    "{S} specifically <denies> {x}.",
    "<Without> {x} during this admission.",
    "Review of systems is <negative for> {x}.",
    "At discharge, {s} <denies> {x}.",
    "<Denies> any recent {x}.",
    "{S} <denied> {x} when asked.",
    "{S} is <not> experiencing {x}.",
    "On questioning, {s} <denies> {x}.",
    "Prior to discharge {s} <denied> {x}.",
    "<Absence of> {x} was confirmed with {P} family.",
)

_COND_NEG_TEMPLATES = (
    "<No history of> {x}.",
    "<No hx of> {x}.",
    "<Denies> hx of {x}.",
    "{S} <denies> history of {x}.",
    "<Negative for> {x}.",
    "<No known> {x}.",
    "<No prior> {x}.",
    "{S} has <never> been diagnosed with {x}.",
    "<No documented> {x}.",
    "{S} <denies> any personal history of {x}.",
    "{S} is <not> known to have {x}.",
    "<No evidence of> {x} on prior workup.",
    "<No personal hx of> {x}.",
    "{S} <denies> a diagnosis of {x}.",
    "Prior records are <negative for> {x}.",
    "{S} reports <no> history of {x}.",
    "Of note, <no history of> {x}.",
    "<Never> diagnosed with {x}.",
    "{Pc} chart is <negative for> {x}.",
    "Previously evaluated and <ruled out> for {x}.",
    "{S} does <not> have {x}.",
    "<No> {x}.",
    "<Denies> {x}.",
    "<Without> prior {x}.",
)

# Post-negations are only used as *additional* mentions of an already negated fact.
_SYM_POST_TEMPLATES = (
    "{X}: <denied>.",
    "{X}: <negative>.",
    "{X} - <none>.",
    "{X}: <absent>.",
    "{X} <denied>.",
    "{X}: <none> reported.",
)
_COND_POST_TEMPLATES = (
    "{X}: <ruled out>.",
    "{X} was <ruled out> previously.",
    "{X}: <denied>.",
    "{X} - <negative>.",
)


def _neg_pool(templates: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """Compile templates and record how many words the cue starts before {x}."""
    out = []
    for t in templates:
        gap = t[t.index("<") : t.index("{x}")]
        d0 = len(gap.replace("<", " ").replace(">", " ").split())
        if not 1 <= d0 <= NEGATION_WINDOW:
            raise ValueError(f"cue too far from term in template {t!r}")
        out.append((_mark(t), d0))
    return tuple(out)


def _cues(*pools: tuple[str, ...]) -> tuple[str, ...]:
    found = {m.lower() for pool in pools for t in pool for m in _MARK_RE.findall(t)}
    return tuple(sorted(found, key=lambda c: (-len(c), c)))


_SYM_NEG = _neg_pool(_SYM_NEG_TEMPLATES)
_COND_NEG = _neg_pool(_COND_NEG_TEMPLATES)
_SYM_POST = tuple(_mark(t) for t in _SYM_POST_TEMPLATES)
_COND_POST = tuple(_mark(t) for t in _COND_POST_TEMPLATES)

NEGATION_CUES: tuple[str, ...] = _cues(_SYM_NEG_TEMPLATES, _COND_NEG_TEMPLATES)
POST_NEGATION_CUES: tuple[str, ...] = _cues(_SYM_POST_TEMPLATES, _COND_POST_TEMPLATES)

# --------------------------------------------------------------------------------------------
# Affirmed templates (must never contain a negation cue)
# --------------------------------------------------------------------------------------------

_SYM_AFF = tuple(
    _mark(t)
    for t in (
        "{S} reports ongoing {x}.",
        "Continues to endorse {x}.",
        "{S} c/o intermittent {x}.",
        "Complains of persistent {x}.",
        "Positive for {x} on review of systems.",
        "{S} endorses {x}.",
        "Still reporting {x} at the time of discharge.",
        "Reports mild {x}.",
        "ROS positive for {x}.",
        "Endorses some {x}, which has been stable.",
        "On the day of discharge {s} reported {x}.",
        "{S} has had intermittent {x} over the past several days.",
        "Admits to {x}.",
        "{S} continues to complain of {x}.",
        "{S} describes ongoing {x}.",
        "Of note, {s} still has {x}.",
        "Reports {x} that is improving but still present.",
        "Remains symptomatic with {x}.",
        "At the time of discharge {s} was still having {x}.",
        "{S} c/o {x} with activity.",
        "Endorses worsening {x} over the last 24 hours.",
        "Per {P} family, {s} has had ongoing {x}.",
    )
)
_SYM_AFF_POST = tuple(
    _mark(t)
    for t in (
        "{X} persists.",
        "{X}: present.",
        "{X} reported by patient at discharge.",
        "{X} ongoing.",
    )
)

# PMH body lines: the list of conditions is the whole point of the sentence.
_PMH_AFF = tuple(
    _mark(t)
    for t in (
        "{x}.",
        "Significant for {x}.",
        "Notable for {x}.",
        "{Pc} history includes {x}.",
        "Known {x}.",
        "Hx of {x}.",
        "Remarkable for {x}.",
        "Chronic problems include {x}.",
        "Positive for {x}.",
        "Longstanding {x}.",
        "{S} carries diagnoses of {x}.",
        "History of {x}.",
        "Active problems: {x}.",
    )
)

# HPI openings; {a} is the age/sex phrase, {pp} the primary problem, {x} history.
_INTRO_HX = tuple(
    _mark(t)
    for t in (
        "{a} w/ hx of {x} who presented with {pp}.",
        "{a} with PMH of {x}, admitted for {pp}.",
        "Pt is {art} {a} with a history of {x} who was admitted with {pp}.",
        "This is {art} {a} with known {x} admitted to medicine for {pp}.",
        "{a} with {x} p/w {pp}.",
        "{a} w/ PMH significant for {x} presenting with {pp}.",
        "Patient is {art} {a} with {x} who came to the ED and was found to have {pp}.",
        "{a} with a PMH notable for {x}, admitted on this occasion for {pp}.",
        "{a} with longstanding {x} who was admitted with {pp}.",
        "Briefly, {art} {a} with {x} who presents with {pp}.",
    )
)
_INTRO_PLAIN = tuple(
    _mark(t)
    for t in (
        "{a}, previously healthy, who presented with {pp}.",
        "{a} with an unremarkable past history, admitted for {pp}.",
        "Pt is {art} otherwise healthy {a} admitted with {pp}.",
        "{a} p/w {pp}.",
        "{a} admitted for {pp}.",
        "{a} who was admitted to the medicine service with {pp}.",
        "This is {art} {a} who presented to the ED and was admitted with {pp}.",
        "Briefly, {art} {a} admitted with {pp}.",
    )
)

_FAMILY_TEMPLATES = tuple(
    _mark(t)
    for t in (
        "{R} with {x}.",
        "{R} had {x}.",
        "{Pc} {r} had a history of {x}.",
        "{Pc} {r} has {x}.",
        "Family history of {x} in {P} {r}.",
        "Significant for {x} in {P} {r}.",
        "{R}: {x}.",
        "{R} (deceased) with {x}.",
        "{R} died of complications of {x}.",
        "FHx notable for {x} ({r}).",
        "{X} in {P} {r}.",
        "{Pc} {r} was diagnosed with {x}.",
        "Positive family history of {x} ({r}).",
        "FHx: {r} with {x}.",
        "{R} with a known history of {x}.",
        "{R} is being treated for {x}.",
    )
)
_FAMILY_EMPTY = (
    "Noncontributory.",
    "Non-contributory.",
    "Reviewed and noncontributory.",
    "Unknown; pt was adopted.",
    "Reviewed, not relevant to this admission.",
)

# --------------------------------------------------------------------------------------------
# Social history, cost, follow-up. Each phrase list is grep-able by tests / the generator.
# --------------------------------------------------------------------------------------------

LIVES_ALONE_PHRASES: tuple[str, ...] = (
    "lives alone",
    "lives by himself",
    "lives by herself",
    "lives on his own",
    "lives on her own",
    "resides alone",
)
_LIVES_ALONE = tuple(
    _mark(t)
    for t in (
        "{S} <lives alone> in an apartment.",
        "<Lives alone>.",
        "{S} <lives by {refl}> and is independent in ADLs.",
        "Widowed, <lives alone>.",
        "{S} <lives alone> with limited social support.",
        "<Lives alone> in a second-floor walk-up.",
        "{S} <lives on {P} own>; {P} <daughter> visits weekly.",
        "<Resides alone> in senior housing.",
        "Divorced and <lives alone>.",
        "{S} <lives by {refl}> in a single-family home.",
        "Currently <lives alone> since {P} spouse passed away.",
    )
)
_LIVES_WITH = tuple(
    _mark(t)
    for t in (
        "Lives with {P} <{sp}>.",
        "{S} lives with {P} <daughter>, who helps with medications.",
        "Resides with {P} <son> and his family.",
        "Lives at home with {P} <{sp}>.",
        "Lives with family.",
        "{S} lives in an assisted living facility.",
        "Does <not> live alone; {P} <{sp}> is {P} primary caregiver.",
        "Previously lived alone but moved in with {P} <daughter> last year.",
        "Married, lives with {P} <{sp}>.",
        "{S} lives with {P} <{sp}> and adult <son>.",
        "Lives with a roommate.",
        "Lives with {P} <sister> in a house.",
    )
)

COST_BARRIER_PHRASES: tuple[str, ...] = (
    "unable to afford",
    "cannot afford",
    "could not afford",
    "cost barriers",
    "because of cost",
    "due to cost",
    "trouble paying for",
    "financial barriers",
)
_COST_YES = tuple(
    _mark(t)
    for t in (
        "{S} reports being <unable to afford> {P} medications.",
        "<Unable to afford> medications.",
        "Reports <cost barriers> to filling prescriptions.",
        "Ran out of {P} {med} <because of cost>.",
        "States {s} <cannot afford> {P} copays.",
        "{S} <could not afford> {P} prescriptions last month.",
        "Has been skipping doses <due to cost>.",
        "Reports <trouble paying for> medications; SW consulted.",
        "Significant <financial barriers> to obtaining medications.",
        "{S} was rationing {P} {med} <because of cost>.",
        "<Cannot afford> {P} {med}; social work aware.",
        "Has <cost barriers> and recently stopped {P} {med}.",
    )
)
_COST_NO = tuple(
    _mark(t)
    for t in (
        "Has good access to medications.",
        "Able to afford {P} medications.",
        "Medications are covered by insurance.",
        "<Denies> difficulty affording medications.",
        "Has prescription coverage through Medicare Part D.",
        "Fills prescriptions without difficulty.",
        "{S} manages {P} own medications and fills them on time.",
    )
)

FOLLOWUP_PHRASES: tuple[str, ...] = (
    "appointment scheduled",
    "follow-up arranged",
    "follow-up scheduled",
    "appointment made",
    "appt scheduled",
    "appointment has been scheduled",
)
NO_FOLLOWUP_PHRASES: tuple[str, ...] = (
    "declined follow-up",
    "no PCP",
    "declined to schedule",
    "no follow-up appointment",
    "unable to arrange follow-up",
    "could not be arranged",
)
_FOLLOW_YES = tuple(
    _mark(t)
    for t in (
        "Follow up with PCP in 1 week; <appointment scheduled>.",
        "PCP <follow-up arranged> for next week.",
        "Cardiology <follow-up scheduled> in 2 weeks.",
        "<Appointment made> with primary care within 7 days.",
        "F/u with PCP in 1-2 weeks (<appt scheduled>).",
        "{S} has an <appointment scheduled> with {P} PCP in 5 days.",
        "Clinic <follow-up arranged> with the discharging team.",
        "An <appointment has been scheduled> with {P} PCP.",
        "Outpatient <follow-up scheduled> with PCP and specialty clinic.",
    )
)
_FOLLOW_NO = tuple(
    _mark(t)
    for t in (
        "{S} <declined follow-up>.",
        "Pt has <no PCP> and <declined to schedule> follow-up.",
        "<No follow-up appointment> was made.",
        "<Unable to arrange follow-up> prior to discharge.",
        "Follow-up <could not be arranged> before discharge.",
        "Has <no PCP>; instructed to establish care.",
        "{S} <declined to schedule> a clinic visit.",
        "{S} <declined follow-up> despite counseling.",
    )
)

_DISPO_TEXT = {
    HOME: ("Home.", "Discharged home.", "Home with self care.", "Home in stable condition."),
    HOME_HEALTH: (
        "Home with services.",
        "Home with VNA.",
        "Home with home health nursing and PT.",
        "Discharged home with home health services.",
    ),
    SNF: (
        "Skilled nursing facility.",
        "Discharged to SNF.",
        "SNF for skilled nursing care.",
        "Extended care facility (SNF).",
    ),
    REHAB: (
        "Acute rehab.",
        "Discharged to inpatient rehabilitation.",
        "Rehab facility.",
        "Acute inpatient rehab for PT/OT.",
    ),
    AMA: (
        "Left against medical advice.",
        "Pt left AMA.",
        "Discharged AMA after risks and benefits were discussed.",
        "Patient signed out against medical advice.",
    ),
}
_DISPO = {k: tuple(_mark(t) for t in v) for k, v in _DISPO_TEXT.items()}

_LOS = tuple(
    _mark(t)
    for t in (
        "{S} was hospitalized for {n} {days}.",
        "Length of stay: {n} {days}.",
        "Discharged on hospital day {n1}.",
        "Total LOS {n} {days}.",
        "After a {n}-day hospitalization, {s} was deemed ready for discharge.",
        "{S} was discharged after {n} {days} in house.",
    )
)

# --------------------------------------------------------------------------------------------
# Problem-specific course and generic filler (no symptom / condition surface forms anywhere)
# --------------------------------------------------------------------------------------------

_PROBLEM_COURSE = {
    "CHF exacerbation": (
        "Diuresed with IV furosemide with good response.",
        "Volume overloaded on admission; transitioned from IV Lasix to oral torsemide.",
        "Weight down 4 kg with diuresis and BNP trended down.",
        "Net negative 5 L over the admission.",
        "Strict I/Os and daily weights were followed.",
    ),
    "community-acquired pneumonia": (
        "Treated with ceftriaxone and azithromycin with clinical improvement.",
        "CXR showed RLL consolidation; completed IV antibiotics and transitioned to PO.",
        "Oxygen requirement resolved by hospital day 3.",
        "Sputum culture grew normal flora.",
        "Will complete a 5-day antibiotic course.",
    ),
    "COPD exacerbation": (
        "Treated with scheduled nebulizers, prednisone, and azithromycin.",
        "Weaned to room air prior to discharge.",
        "Steroid taper prescribed on discharge.",
        "Inhaler technique was reviewed by respiratory therapy.",
    ),
    "sepsis from UTI": (
        "Met sepsis criteria on admission with hypotension responsive to IV fluids.",
        "Urine culture grew pan-sensitive Klebsiella; narrowed to oral cephalexin.",
        "Lactate normalized after fluid resuscitation.",
        "Briefly required pressors in the ICU.",
    ),
    "upper GI bleed": (
        "EGD showed a duodenal ulcer that was clipped.",
        "Transfused 2 units pRBCs; hemoglobin stable thereafter.",
        "Started on IV pantoprazole, transitioned to PO BID.",
        "H. pylori serology sent and pending.",
    ),
    "acute kidney injury": (
        "Creatinine peaked at 3.1 and improved with IV fluids.",
        "Nephrotoxic medications were held.",
        "Renal ultrasound without hydronephrosis.",
        "Urine studies consistent with a prerenal etiology.",
    ),
    "cellulitis": (
        "Treated with IV cefazolin with decreasing erythema.",
        "Margins were marked and erythema receded.",
        "Transitioned to oral cephalexin.",
        "Ultrasound without abscess.",
    ),
    "syncope": (
        "Telemetry without significant arrhythmia.",
        "Orthostatic vital signs were positive; given IV fluids.",
        "TTE was unremarkable.",
        "Event monitor to be arranged as an outpatient.",
    ),
    "NSTEMI": (
        "Started on heparin drip, aspirin, and high-intensity statin.",
        "Cardiac catheterization showed a culprit LAD lesion, s/p DES.",
        "Troponin peaked at 2.4.",
        "Started on ticagrelor for 12 months.",
    ),
    "DKA": (
        "Managed with insulin drip and IV fluids per protocol; anion gap closed within 24 hours.",
        "Transitioned to subcutaneous insulin.",
        "Seen by the endocrine team and nutrition.",
        "Potassium was closely monitored and repleted.",
    ),
    "hip fracture after fall": (
        "Underwent ORIF by orthopedics on hospital day 2.",
        "Pain controlled with oxycodone and acetaminophen.",
        "Weight bearing as tolerated per ortho.",
        "Started on enoxaparin for VTE prophylaxis for 4 weeks.",
    ),
    "atrial fibrillation with RVR": (
        "Rate controlled with IV diltiazem, transitioned to oral metoprolol.",
        "Started on apixaban for anticoagulation.",
        "Converted to sinus rhythm on hospital day 2.",
        "TSH within normal limits.",
    ),
}
_GENERIC_COURSE = (
    "Treated per standard protocol with steady improvement.",
    "Home medications were reconciled.",
    "Medication regimen was adjusted during the admission.",
    "Consultants followed throughout the stay.",
)

# Filler comes in groups of mutually exclusive alternatives (one tobacco status, one vitals
# line, one code status...); each group is used at most once per note.
_COURSE_FILLER = (
    ("Electrolytes were repleted as needed.", "K and Mg repleted PRN."),
    (
        "DVT prophylaxis with subcutaneous heparin.",
        "DVT ppx: SC heparin.",
        "VTE prophylaxis with enoxaparin.",
    ),
    ("Diet advanced as tolerated.", "Tolerating PO diet.", "Diet: regular, tolerated well."),
    (
        "Case management assisted with discharge planning.",
        "Case management and SW involved in discharge planning.",
    ),
    ("Telemetry was unremarkable.", "Telemetry showed sinus rhythm throughout."),
    ("Blood cultures showed no growth.", "Blood cultures with no growth to date."),
    ("CXR without acute process.", "CXR clear.", "Chest film unchanged from prior."),
    ("PE was ruled out by CTA.", "CTA chest negative for PE."),
    ("Troponins were negative x2.", "ACS ruled out with serial troponins."),
    ("Urine culture negative.", "UA bland."),
    ("Nutrition was consulted.",),
    ("Creatinine remained at baseline.", "Renal function stable."),
    ("Hemoglobin stable throughout admission.", "H/H stable, no transfusion needed."),
    ("Ambulating with a walker with PT.", "Ambulating independently in the hallway."),
    ("Infectious workup was negative.",),
    ("No evidence of pneumothorax on imaging.",),
    ("CT head without acute intracranial abnormality.",),
    ("Glucose managed with sliding scale insulin.", "FSBG well controlled on SSI."),
    ("Social work met with pt and family.",),
    ("Code status: full code.", "Code status: DNR/DNI, confirmed with pt.", "Full code."),
    ("{S} was counseled on medication adherence.", "Medication adherence was reinforced."),
    ("Stool guaiac negative.",),
    ("PT/OT evaluated {P} mobility prior to discharge.", "Seen by PT, who cleared for discharge."),
    ("Bowel regimen was started.",),
    ("Pain was controlled with acetaminophen PRN.", "Pain well controlled on oral regimen."),
    ("Foley was removed on hospital day 2.",),
    ("Labs were trended daily.",),
    ("Echo ordered to rule out a structural cause came back unremarkable.",),
    ("Lower extremity dopplers were negative for DVT.",),
    ("Home medications were reconciled.", "Medication reconciliation completed."),
    ("Vitals remained stable overnight prior to discharge.",),
)
_HPI_FILLER = (
    ("In the ED, vitals were notable for tachycardia.", "In the ED, initial vitals were stable."),
    ("{S} was given IV fluids in the ED.", "{S} received 1L NS in the ED."),
    ("Initial labs were notable for a mild leukocytosis.", "Initial labs were largely unremarkable."),
    (
        "Symptoms began approximately 3 days prior to admission.",
        "Symptoms started about one week before presentation.",
    ),
    ("{S} was brought in by EMS.", "{S} was referred from clinic.", "{S} self-presented to the ED."),
    ("Outpatient records were reviewed.",),
    ("History was obtained from the patient and {P} family.",),
    ("Of note, {s} was seen in clinic last month.",),
    ("{S} received one dose of antibiotics in the ED.",),
    ("Admitted to the medicine floor for further management.", "Admitted to the step-down unit."),
)
_SOCIAL_FILLER = (
    (
        "Former smoker, quit 10 years ago.",
        "Smokes 1 ppd.",
        "Never smoker.",
        "Quit tobacco 20 years ago, 30 pack-year history.",
        "Current smoker, half a pack daily.",
    ),
    (
        "No alcohol or illicit drug use.",
        "Drinks 2-3 beers per week.",
        "Denies illicit drug use.",
        "Occasional EtOH.",
    ),
    (
        "Retired schoolteacher.",
        "Retired construction worker.",
        "Works part-time as a cashier.",
        "Retired bus driver.",
        "Unemployed.",
    ),
    (
        "Uses a cane at baseline.",
        "Independent in ADLs.",
        "Uses a walker at baseline.",
        "Needs help with IADLs.",
    ),
)
_VITALS = (
    tuple(
        f"VS: BP {bp}, HR {hr}, RR {rr}, SpO2 {sat}% on RA."
        for bp, hr, rr, sat in product(
            ("118/72", "132/78", "141/86", "104/60", "126/70"),
            ("64", "76", "88", "92"),
            ("14", "16", "18"),
            ("93", "95", "97", "99"),
        )
    ),
)
_LABS = (
    tuple(
        f"Labs notable for Na {na}, K {k}, Cr {cr}."
        for na, k, cr in product(
            ("133", "136", "139", "141"), ("3.6", "4.1", "4.5"), ("0.8", "1.1", "1.4", "1.9")
        )
    ),
    tuple(
        f"WBC {w}, Hgb {h} on day of discharge."
        for w, h in product(("6.2", "8.4", "10.1", "11.7"), ("9.1", "10.4", "12.3", "13.8"))
    ),
    ("INR 1.1.", "Lactate 1.2.", "Troponin less than 0.01.", "BNP 412.", "TSH 2.1."),
)
_EXAM_BASE = (
    (
        "Gen: NAD, resting comfortably.",
        "Gen: elderly appearing, in no acute distress.",
        "General: well appearing.",
    ),
    ("HEENT: MMM, anicteric sclerae.", "HEENT: dry mucous membranes."),
    ("CV: RRR, no m/r/g.", "CV: irregular rhythm, normal rate.", "CV: RRR, II/VI SEM."),
    ("Lungs: CTAB, no wheezes or crackles.", "Lungs: bibasilar crackles.", "Lungs: scattered rhonchi."),
    ("Abd: soft, NT/ND, +BS.", "Abd: obese, soft, nontender."),
    ("Ext: warm and well perfused.", "Ext: WWP, 2+ DP pulses."),
    ("Skin: intact, no rashes.", "Skin: warm and dry."),
)
_EXAM_NEURO = (("Neuro: A&Ox3, moves all extremities.", "Neuro: alert and oriented, nonfocal."),)
_PLAN_FILLER = (
    ("Return precautions reviewed.", "Return to ED for any concerning symptoms."),
    ("Continue current regimen.",),
    ("Repeat BMP in 1 week.", "Labs at PCP visit: CBC, BMP."),
    ("Low sodium diet.", "Resume home diet."),
    ("Weigh daily and call for gain of more than 3 lbs.",),
    ("Activity as tolerated.", "No heavy lifting for 2 weeks."),
    ("Medication changes reviewed with the patient.",),
    ("Discharge instructions provided and understood.", "Teach-back performed."),
)
_CONDITION_BASE = (
    "Stable.",
    "Improved.",
    "Good.",
    "Fair.",
    "Hemodynamically stable.",
    "Stable, improved from admission.",
    "Activity Status: Ambulatory - requires assistance or aid (walker or cane).",
    "Activity Status: Ambulatory - Independent.",
)
_CONDITION_NEURO = (
    "Mental Status: Clear and coherent.",
    "Level of Consciousness: Alert and interactive.",
)
_TITLES = ("DISCHARGE SUMMARY", "Discharge Summary", "", "", "Discharge Summary - Medicine")
_PREAMBLE = (
    "Service: MEDICINE",
    "Service: Medicine",
    "Allergies: No Known Allergies / Adverse Drug Reactions",
    "Allergies: NKDA",
    "Allergies: Penicillins",
    "Allergies: sulfa (rash)",
)

_FREQS = ("daily", "BID", "TID", "PO daily", "PO BID", "nightly", "PRN", "q6h PRN", "qAM", "daily", "BID")

_COND_MODIFIERS = {
    "chf": (" (EF 30%)", " with reduced EF", ", NYHA class II"),
    "diabetes": (" on insulin", ", on metformin", ", diet-controlled"),
    "ckd": (" stage 3", " stage 4", " (baseline Cr 1.8)"),
    "afib": (" on apixaban", " on warfarin"),
    "cad": (" s/p PCI", " s/p CABG"),
    "copd": (" on 2L home O2", " (GOLD 3)"),
    "stroke": (" with residual L-sided weakness",),
    "dementia": (", moderate",),
    "liver_disease": (" (Child-Pugh A)",),
    "depression": (" on sertraline",),
    "cancer": (", in remission", ", on active treatment"),
}


def _pool(items: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    return tuple((_mark(s), _words(s)) for s in items)


def _groups(groups: tuple) -> tuple:
    """Compile filler groups; a bare string is a group of one."""
    return tuple(_pool((g,) if isinstance(g, str) else g) for g in groups)


_F_COURSE = _groups(_COURSE_FILLER)
_F_HPI = _groups(_HPI_FILLER)
_F_SOCIAL = _groups(_SOCIAL_FILLER)
_F_VITALS = _groups(_VITALS)
_F_LABS = _groups(_LABS)
_F_EXAM = _groups(_EXAM_BASE + _EXAM_NEURO)
_F_EXAM_NO_NEURO = _groups(_EXAM_BASE)
_F_PLAN = _groups(_PLAN_FILLER)
_F_COND = _pool(_CONDITION_BASE + _CONDITION_NEURO)
_F_COND_NO_NEURO = _pool(_CONDITION_BASE)
_F_PROBLEM = {k: _groups(v) for k, v in _PROBLEM_COURSE.items()}
_F_GENERIC = _groups(_GENERIC_COURSE)

# --------------------------------------------------------------------------------------------
# Sections, headers and orders
# --------------------------------------------------------------------------------------------

_HEADER_NAMES = {
    "cc": ("Chief Complaint", "CC", "Reason for Admission", "Admission Diagnosis"),
    "hpi": ("History of Present Illness", "HPI", "Brief HPI", "Presentation"),
    "pmh": ("Past Medical History", "PMH", "PMHx", "Medical History"),
    "social": ("Social History", "SHx", "Social Hx", "Social"),
    "family": ("Family History", "FHx", "Family Hx"),
    "course": (
        "Hospital Course",
        "Brief Hospital Course",
        "Summary of Hospital Course",
        "Hospital Course by Problem",
    ),
    "exam": ("Discharge Exam", "Physical Exam on Discharge", "Exam at Discharge", "PE"),
    "ros": ("Review of Systems", "ROS", "Discharge ROS"),
    "dx": ("Discharge Diagnosis", "Discharge Diagnoses", "Final Diagnosis"),
    "meds": ("Discharge Medications", "Discharge Meds", "Medications on Discharge", "Meds at Discharge"),
    "condition": ("Discharge Condition", "Condition at Discharge", "Condition on Discharge"),
    "dispo": ("Disposition", "Discharge Disposition", "Dispo"),
    "plan": ("Plan", "Follow-up", "Followup Instructions", "Discharge Instructions", "Plan/Follow-up"),
}
# Per header style: title case or upper case names, with trailing colon.
_HEADERS = (
    {k: tuple(f"{n}:" for n in v) for k, v in _HEADER_NAMES.items()},
    {k: tuple(f"{n.upper()}:" for n in v) for k, v in _HEADER_NAMES.items()},
)


def _orders() -> tuple[tuple[str, ...], ...]:
    out = []
    for sf, ros_early, dx_first, plan_first in product((0, 1), repeat=4):
        o = ["cc", "hpi"]
        if ros_early:
            o.append("ros")
        o += ["pmh"] + (["family", "social"] if sf else ["social", "family"])
        o += ["course", "exam"]
        if not ros_early:
            o.append("ros")
        o += ["dx", "meds"] if dx_first else ["meds", "dx"]
        o.append("condition")
        o += ["plan", "dispo"] if plan_first else ["dispo", "plan"]
        out.append(tuple(o))
    return tuple(out)


_ORDERS = _orders()
_SECTIONS = _ORDERS[0]

# --------------------------------------------------------------------------------------------
# The "abbreviated" template: another hospital system's discharge-summary template (other
# header names, bracketed or colon headers, a problem-first section order, heavy
# abbreviations). Same facts, other wording: what a reader tuned to the standard template sees
# when a hospital switches EHR templates. The synthetic `note_template` shift uses it. The
# guarantees in the module docstring hold for "standard" only: here "negative for" becomes
# "neg for" and "without" "w/o", cues a standard-trained reader may not know.
# --------------------------------------------------------------------------------------------

NOTE_TEMPLATES: tuple[str, ...] = ("standard", "abbreviated")
_SEP = "\x03"  # joins sections while the abbreviated template is typo'd in the standard layout

_ALT_HEADER_NAMES = {
    "cc": ("Reason for Visit", "RFV", "Admit Reason"),
    "hpi": ("Subjective", "Presenting Complaint", "HPI/Subjective"),
    "pmh": ("Problem List", "Active Problems", "Medical Problems"),
    "social": ("Psychosocial", "Social/Functional", "Home Situation"),
    "family": ("FH", "Family Medical Hx", "Pertinent FH"),
    "course": ("Inpatient Course", "Course in Hospital", "A/P by Problem"),
    "exam": ("Objective", "PE on Day of D/C", "Exam (D/C)"),
    "ros": ("Systems Review", "Pertinent ROS", "ROS (D/C)"),
    "dx": ("Principal Dx", "Dx", "Problems Addressed"),
    "meds": ("D/C Med Rec", "Med Reconciliation", "Meds (D/C)"),
    "condition": ("Status at D/C", "Clinical Status", "Condition (D/C)"),
    "dispo": ("D/C To", "Destination", "Going To"),
    "plan": ("F/U", "Outpt F/U", "Next Steps", "Pt Instructions"),
}
# Per header style: "Name:" or "[NAME]" on a line of its own.
_ALT_HEADERS = (
    {k: tuple(f"{n}:" for n in v) for k, v in _ALT_HEADER_NAMES.items()},
    {k: tuple(f"[{n.upper()}]" for n in v) for k, v in _ALT_HEADER_NAMES.items()},
)
_ALT_TITLES = ("D/C SUMMARY", "Hospital D/C Summary", "Hospitalist D/C Summary")


def _alt_orders() -> tuple[tuple[str, ...], ...]:
    """Problem-first: diagnosis, course and plan before the history."""
    out = []
    for dx_first, meds_first, social_first in product((0, 1), repeat=3):
        o = ["dx", "cc"] if dx_first else ["cc", "dx"]
        o += ["course", "condition"]
        o += ["meds", "dispo", "plan"] if meds_first else ["dispo", "plan", "meds"]
        o += ["hpi", "ros", "exam", "pmh"]
        o += ["social", "family"] if social_first else ["family", "social"]
        out.append(tuple(o))
    return tuple(out)


_ALT_ORDERS = _alt_orders()

# Whole words or phrases -> (abbreviation, its form at the start of a sentence).
_ABBREVIATIONS: dict[str, tuple[str, str]] = {
    "congestive heart failure": ("CHF", "CHF"),
    "heart failure": ("HF", "HF"),
    "shortness of breath": ("SOB", "SOB"),
    "chest pain": ("CP", "CP"),
    "lower extremity": ("LE", "LE"),
    "complains of": ("c/o", "C/o"),
    "complaints of": ("c/o", "C/o"),
    "complain of": ("c/o", "C/o"),
    "history of": ("h/o", "H/o"),
    "hx of": ("h/o", "H/o"),
    "negative for": ("neg for", "Neg for"),
    "without": ("w/o", "W/o"),
    "with": ("w/", "W/"),
    "patient": ("pt", "Pt"),
    "discharged": ("d/c'd", "D/C'd"),
    "discharge": ("d/c", "D/C"),
    "follow-up": ("f/u", "F/u"),
    "follow up": ("f/u", "F/u"),
    "appointment": ("appt", "Appt"),
    "year old": ("yo", "yo"),
}
_ABBREVIATION_RE = re.compile(
    r"(?<![A-Za-z0-9/-])(?:"
    + "|".join(re.escape(k) for k in sorted(_ABBREVIATIONS, key=len, reverse=True))
    + r")(?![A-Za-z0-9])",
    re.I,
)
_YEAR_OLD_RE = re.compile(r"(\d+)-year-old\b")


def _abbreviate(text: str) -> str:
    """Rewrite a rendered note in the abbreviated template's wording."""

    def repl(m: re.Match[str]) -> str:
        lower, upper = _ABBREVIATIONS[m.group(0).lower()]
        return upper if m.group(0)[0].isupper() else lower

    return _ABBREVIATION_RE.sub(repl, _YEAR_OLD_RE.sub(r"\1 yo", text))


# Letters that can be hit instead of the intended key (QWERTY neighbours).
_KEY_NEIGHBOURS = {
    "a": "qsz",
    "b": "vn",
    "c": "xv",
    "d": "sf",
    "e": "wr",
    "f": "dg",
    "g": "fh",
    "h": "gj",
    "i": "uo",
    "j": "hk",
    "k": "jl",
    "l": "k",
    "m": "n",
    "n": "bm",
    "o": "ip",
    "p": "o",
    "q": "w",
    "r": "et",
    "s": "ad",
    "t": "ry",
    "u": "yi",
    "v": "cb",
    "w": "qe",
    "x": "zc",
    "y": "tu",
    "z": "x",
}
# Words of cues and clinical terms never get a typo (even in filler) and a typo never makes one.
_TYPO_FORBIDDEN = frozenset(
    w.lower()
    for phrase in (
        *NEGATION_CUES,
        *POST_NEGATION_CUES,
        "no",
        "not",
        "nor",
        "non",
        "none",
        "neg",
        *(f for v in CONDITIONS.values() for f in v),
        *(f for v in SYMPTOMS.values() for f in v),
    )
    for w in phrase.split()
)


def _uniforms(rng: np.random.Generator, block: int):
    """Endless stream of uniforms, drawn from the caller's generator a block at a time."""
    while True:
        yield from rng.random(block).tolist()


class _Draw:
    """Uniforms from the caller's generator, consumed in order (one numpy call per block)."""

    __slots__ = ("u",)

    def __init__(self, rng: np.random.Generator, block: int = 160) -> None:
        self.u = _uniforms(rng, block).__next__

    def pick(self, seq):
        return seq[int(self.u() * len(seq))]

    def pick2(self, a, b):
        """One draw picks from two sequences alike (a choice and its other-template twin)."""
        u = self.u()
        return a[int(u * len(a))], b[int(u * len(b))]

    def shuffled(self, items: list) -> list:
        if len(items) < 2:
            return list(items)
        u = self.u
        return sorted(items, key=lambda _: u())


class _Pron:
    """Pronouns and sex-specific words for one sex."""

    __slots__ = ("S", "s", "P", "Pc", "refl", "ages", "spouse")

    def __init__(self, male: bool) -> None:
        he, his = ("He", "His") if male else ("She", "Her")
        self.S = (he, he, "Pt", "Patient", "The patient")
        self.s = (he.lower(), "pt", "the patient", he.lower())
        self.P = his.lower()
        self.Pc = his
        self.refl = "himself" if male else "herself"
        if male:
            self.ages = (
                "{} yo M",
                "{} y/o M",
                "{}M",
                "{}-year-old man",
                "{} year old male",
                "{}-year-old male",
                "{} yo gentleman",
                "{} y/o male",
            )
            self.spouse = ("wife", "wife", "partner")
        else:
            self.ages = (
                "{} yo F",
                "{} y/o F",
                "{}F",
                "{}-year-old woman",
                "{} year old female",
                "{}-year-old female",
                "{} yo lady",
                "{} y/o female",
            )
            self.spouse = ("husband", "husband", "partner")


_PRON = {"M": _Pron(True), "F": _Pron(False)}

# --------------------------------------------------------------------------------------------
# Rendering helpers
# --------------------------------------------------------------------------------------------


def _fmt(d: _Draw, g: _Pron, t: str, **kw: str) -> str:
    """Fill a template; subjects are drawn only when the template uses them."""
    if "{" not in t:
        return t
    S = d.pick(g.S) if "{S}" in t else ""
    s = d.pick(g.s) if "{s}" in t else ""
    return t.format(S=S, s=s, P=g.P, Pc=g.Pc, refl=g.refl, **kw)


def _join_and(items: list[str], d: _Draw) -> str:
    n = len(items)
    if n == 1:
        return items[0]
    if n == 2:
        return f"{items[0]} and {items[1]}"
    last = ", and " if d.u() < 0.5 else " and "
    return ", ".join(items[:-1]) + last + items[-1]


def _neg_sentences(d: _Draw, g: _Pron, keys: list[str], forms: dict, pool, out: list) -> None:
    """Render negated facts in chunks so every term sits within the cue's window."""
    items = [d.pick(forms[k]) for k in d.shuffled(keys)]
    i, n = 0, len(items)
    while i < n:
        tmpl, d0 = d.pick(pool)
        maxk = 1 + int(d.u() * 3)
        chunk = [items[i]]
        off = d0
        i += 1
        while i < n and len(chunk) < maxk:
            nxt = off + chunk[-1][2] + 1  # +1 for a conjunction word
            if nxt > NEGATION_WINDOW:
                break
            chunk.append(items[i])
            off = nxt
            i += 1
        k = len(chunk)
        if k == 1:
            x = chunk[0][0]
        elif k == 2:
            a, b = chunk[0], chunk[1]
            x = f"{a[0]}/{b[0]}" if a[2] == 1 and b[2] == 1 and d.u() < 0.3 else f"{a[0]} or {b[0]}"
        else:
            x = ", ".join(c[0] for c in chunk[:-1]) + ", or " + chunk[-1][0]
        out.append(_fmt(d, g, tmpl, x=x))


def _aff_list(d: _Draw, keys: list[str], forms: dict, mods: dict | None = None) -> list[str]:
    out = []
    for k in keys:
        f = d.pick(forms[k])[0]
        if mods is not None and k in mods and d.u() < 0.25:
            f += d.pick(mods[k])
        out.append(f)
    return out


def _join_body(body: list[str]) -> str:
    """Join a section's sentences; a block (bullets, starts with a newline) ends its line."""
    if len(body) == 1:
        return body[0]
    if not any(s[0] == "\n" for s in body):
        return " ".join(body)
    text = body[0]
    prev_block = text[0] == "\n"
    for s in body[1:]:
        block = s[0] == "\n"
        text += s if block else ("\n" if prev_block else " ") + s
        prev_block = block
    return text


def _count(parts: list[str]) -> int:
    s = " ".join(parts)
    return s.count(" ") + s.count(_PSP) + s.count("\n") + 1


def _typos(text: str, p: float, d: _Draw) -> str:
    """Apply per-token typos, picking tokens by geometric skipping."""
    n = text.count(" ") + 1
    if p >= 1.0:
        picks = list(range(n))
    else:
        logq = math.log1p(-p)
        picks = []
        pos = -1
        while True:
            pos += 1 + int(math.log(1.0 - d.u()) / logq)
            if pos >= n:
                break
            picks.append(pos)
    if not picks:
        return text
    toks = text.split(" ")
    for i in picks:
        tok = toks[i]
        if _PROT in tok:
            continue
        core = tok.rstrip(".,;:)")
        m = len(core)
        if m < 4 or not core.isalpha() or not core.islower() or core in _TYPO_FORBIDDEN:
            continue
        kind = int(d.u() * 4)
        j = 1 + int(d.u() * (m - 2))  # never the first letter
        if kind == 0:
            new = core[:j] + core[j + 1] + core[j] + core[j + 2 :] if j + 1 < m else core
        elif kind == 1:
            new = core[:j] + core[j + 1 :]
        elif kind == 2:
            new = core[: j + 1] + core[j] + core[j + 1 :]
        else:
            nb = _KEY_NEIGHBOURS.get(core[j])
            new = core[:j] + d.pick(nb) + core[j + 1 :] if nb else core
        if new == core or new in _TYPO_FORBIDDEN:
            continue
        toks[i] = new + tok[m:]
    return " ".join(toks)


def _validate(f: NoteFacts) -> None:
    if f.sex not in _PRON:
        raise ValueError(f"sex must be 'M' or 'F', got {f.sex!r}")
    if f.disposition not in _DISPO:
        raise ValueError(f"unknown disposition {f.disposition!r}")
    if set(f.history) & set(f.denied_history):
        raise ValueError("a condition cannot be both in history and denied_history")
    if set(f.symptoms_present) & set(f.symptoms_denied):
        raise ValueError("a symptom cannot be both present and denied")
    for k in (*f.history, *f.denied_history, *(c for _, c in f.family_history)):
        if k not in CONDITIONS:
            raise KeyError(f"unknown condition {k!r}")
    for k in (*f.symptoms_present, *f.symptoms_denied):
        if k not in SYMPTOMS:
            raise KeyError(f"unknown symptom {k!r}")


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def render_discharge_summary(rng: np.random.Generator, facts: NoteFacts, template: str = "standard") -> str:
    """Render one discharge summary; deterministic in (rng state, facts).

    Both templates draw the same random numbers, so switching template changes the wording
    of a note and nothing else the caller's generator produces afterwards.
    """
    _validate(facts)
    if template not in NOTE_TEMPLATES:
        raise ValueError(f"unknown note template {template!r}; expected one of {NOTE_TEMPLATES}")
    alt = template == "abbreviated"
    d = _Draw(rng)
    g = _PRON[facts.sex]
    sec: dict[str, list[str]] = {k: [] for k in _SECTIONS}
    course_end: list[str] = []
    pp = _protect(facts.primary_problem)
    confused = "confusion" in facts.symptoms_present

    # HPI opening, optionally carrying (part of) the history.
    age = str(facts.age)
    a = _protect(d.pick(g.ages).format(age))
    art = "an" if age[0] == "8" or age in ("11", "18") else "a"
    hist = d.shuffled(facts.history)
    if hist and d.u() < 0.65:
        x = _join_and(_aff_list(d, hist[: 1 + int(d.u() * 3)], _COND_FORMS), d)
        intro = d.pick(_INTRO_HX).format(a=a, art=art, pp=pp, x=x)
    else:
        intro = d.pick(_INTRO_PLAIN).format(a=a, art=art, pp=pp)
    sec["hpi"].append(_cap(intro))

    # Past medical history: affirmed list, then negated conditions (separate sentences).
    if hist:
        items = _aff_list(d, hist, _COND_FORMS, _COND_MODIFIERS)
        if len(items) > 1 and d.u() < 0.2:
            sec["pmh"].append("\n" + "\n".join("- " + i for i in items))
        else:
            sec["pmh"].append(_cap(_fmt(d, g, d.pick(_PMH_AFF), x=_join_and(items, d))))
    if facts.denied_history:
        target = sec["pmh"] if d.u() < 0.75 else sec["hpi"]
        _neg_sentences(d, g, facts.denied_history, _COND_FORMS, _COND_NEG, target)
        if d.u() < 0.15:
            x = d.pick(_COND_FORMS[d.pick(facts.denied_history)])[1]
            target.append(d.pick(_COND_POST).format(X=x))

    # Family history: the relative is always named in the same sentence.
    fam = sec["family"]
    for rel, key in facts.family_history:
        form = d.pick(_COND_FORMS[key])
        fam.append(
            _fmt(
                d, g, d.pick(_FAMILY_TEMPLATES), x=form[0], X=form[1], r=_protect(rel), R=_protect(_cap(rel))
            )
        )
    if not fam and d.u() < 0.5:
        fam.append(d.pick(_FAMILY_EMPTY))

    # Social history.
    soc = sec["social"]
    if facts.lives_alone:
        soc.append(_fmt(d, g, d.pick(_LIVES_ALONE)))
    else:
        soc.append(_fmt(d, g, d.pick(_LIVES_WITH), sp=d.pick(g.spouse)))
    if facts.cannot_afford_medications:
        if "diabetes" in facts.history or any("insulin" in m for m in facts.medications):
            med = "insulin"
        elif "copd" in facts.history:
            med = "inhalers"
        else:
            med = "medications"
        soc.insert(int(d.u() * 2), _fmt(d, g, d.pick(_COST_YES), med=med))
    elif d.u() < 0.3:
        soc.append(_fmt(d, g, d.pick(_COST_NO)))

    # Hospital course: the problem, length of stay, optionally present symptoms at the end.
    prob_pool = _F_PROBLEM.get(facts.primary_problem, _F_GENERIC)
    first_group = d.pick(prob_pool)
    sec["course"].append(_fmt(d, g, d.pick(first_group)[0]))
    n_days = max(1, int(round(facts.los_days)))
    los = _fmt(d, g, d.pick(_LOS), n=str(n_days), n1=str(n_days + 1), days="day" if n_days == 1 else "days")

    # Symptoms: present ones at discharge, denied ones in HPI / ROS / discharge condition.
    if facts.symptoms_present:
        items = _aff_list(d, d.shuffled(facts.symptoms_present), _SYM_FORMS)
        if len(items) == 1 and d.u() < 0.15:
            sents = [d.pick(_SYM_AFF_POST).format(X=_cap(items[0]))]
        elif len(items) > 2 and d.u() < 0.4:
            cut = 1 + int(d.u() * (len(items) - 1))
            sents = [
                _fmt(d, g, d.pick(_SYM_AFF), x=_join_and(items[:cut], d)),
                _fmt(d, g, d.pick(_SYM_AFF), x=_join_and(items[cut:], d)),
            ]
        else:
            sents = [_fmt(d, g, d.pick(_SYM_AFF), x=_join_and(items, d))]
        (sec["condition"] if d.u() < 0.5 else course_end).extend(sents)
    if facts.symptoms_denied:
        r = d.u()
        target = sec["hpi"] if r < 0.35 else sec["ros"] if r < 0.7 else sec["condition"]
        _neg_sentences(d, g, facts.symptoms_denied, _SYM_FORMS, _SYM_NEG, target)
        if d.u() < 0.25:
            x = d.pick(_SYM_FORMS[d.pick(facts.symptoms_denied)])[1]
            (sec["ros"] if target is sec["ros"] else sec["condition"]).append(d.pick(_SYM_POST).format(X=x))
    sec["condition"].insert(0, d.pick(_F_COND_NO_NEURO if confused else _F_COND)[0])

    # Medications.
    meds = [_protect(m) for m in facts.medications]
    if not meds:
        sec["meds"].append(d.pick(("None.", "None.", "No medications prescribed.")))
    elif len(meds) > 7 or d.u() < 0.3:
        sec["meds"].append(_join_and(meds, d) + ".")
    else:
        bullet = d.u() < 0.5
        lines = [(f"{i}. " if bullet else "- ") + m + " " + d.pick(_FREQS) for i, m in enumerate(meds, 1)]
        sec["meds"].append("\n" + "\n".join(lines))

    sec["dispo"].append(_fmt(d, g, d.pick(_DISPO[facts.disposition])))
    sec["plan"].append(_fmt(d, g, d.pick(_FOLLOW_YES if facts.followup_arranged else _FOLLOW_NO)))

    # Optional sections and filler up to a random target length.
    if d.u() < 0.4:
        sec["cc"].append(pp)
    if d.u() < 0.45:
        dx = ["Primary: " + pp + "."]
        if hist and d.u() < 0.6:
            dx.append("Secondary: " + _join_and(_aff_list(d, hist, _COND_FORMS), d) + ".")
        sec["dx"].extend(dx)
    core = [s for v in sec.values() for s in v]
    words = _count(core) + _count(course_end) + 2 * sum(1 for v in sec.values() if v) + 6
    target_words = 150 + int(d.u() * 140)
    exam_pool = _F_EXAM_NO_NEURO if confused else _F_EXAM
    cats = (
        ("course", _F_COURSE),
        ("course", _F_COURSE),
        ("course", prob_pool),
        ("hpi", _F_HPI),
        ("social", _F_SOCIAL),
        ("exam", exam_pool),
        ("exam", _F_VITALS),
        ("course", _F_LABS),
        ("plan", _F_PLAN),
        ("course", prob_pool),
    )
    used = {id(first_group)}
    tries = 0
    while words < target_words - 3 and tries < 60:
        tries += 1
        key, groups = d.pick(cats)
        grp = d.pick(groups)
        if id(grp) in used:
            continue
        used.add(id(grp))
        sent, nw = d.pick(grp)
        lst = sec[key]
        if not lst:
            nw += 2
        lst.insert(1 + int(d.u() * len(lst)) if lst else 0, _fmt(d, g, sent))
        words += nw
    sec["course"].insert(int(d.u() * (len(sec["course"]) + 1)), los)
    sec["course"].extend(course_end)

    # Assemble. The abbreviated template takes each choice from the same draw as the standard
    # one and gets its typos on the standard layout (header and title words never get typos),
    # so both templates consume the caller's generator alike; its title, headers and section
    # order are swapped in afterwards.
    style = 1 if d.u() < 0.25 else 0
    heads, alt_heads = _HEADERS[style], _ALT_HEADERS[style]
    inline = d.u() < 0.6
    blank = "\n\n" if d.u() < 0.5 else "\n"
    parts = []
    title, alt_title = d.pick2(_TITLES, _ALT_TITLES)
    if title:
        parts.append(title)
    if d.u() < 0.5:
        parts.append(d.pick(_PREAMBLE))
    order, alt_order = d.pick2(_ORDERS, _ALT_ORDERS)
    sections = []  # (key, head, alt head) per rendered section, as in `parts`
    for key in order:
        body = sec[key]
        if not body:
            continue
        text = _join_body(body)
        head, alt_head = d.pick2(heads[key], alt_heads[key])
        sections.append((key, head, alt_head))
        if text[0] == "\n":
            parts.append(head + text)
        else:
            parts.append(head + (" " if inline else "\n") + text)
    note = (_SEP if alt else blank).join(parts)
    if facts.typo_rate > 0.0:
        note = _typos(note, facts.typo_rate, d)
    if alt:
        note = _relayout(note.split(_SEP), title, alt_title, sections, alt_order, blank)
    note = note.replace(_PROT, "").replace(_PSP, " ")
    return _abbreviate(note) if alt else note


def _relayout(
    parts: list[str],
    title: str,
    alt_title: str,
    sections: list[tuple[str, str, str]],
    alt_order: tuple[str, ...],
    blank: str,
) -> str:
    """The abbreviated template's layout of a note rendered (and typo'd) in the standard one."""
    front = parts[: len(parts) - len(sections)]  # title and/or preamble
    if title:
        front[0] = alt_title
    by_key = {}
    for (key, head, alt_head), part in zip(sections, parts[len(front) :], strict=True):
        rest = part[len(head) :]  # " body", "\nbody" or "\n- item..."
        if alt_head[0] == "[" and rest[0] == " ":
            rest = "\n" + rest[1:]
        by_key[key] = alt_head + rest
    return blank.join(front + [by_key[k] for k in alt_order if k in by_key])
