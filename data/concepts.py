"""Clinical concepts in a discharge note, each with its assertion: the note's part of the features.

Why: a readmission model that counts words takes "denies chest pain", "no history of heart
failure" and "mother had CHF" for risk. This module finds each concept mention (symptoms,
chronic conditions, social facts) with its character span, and decides its assertion status
with ConText-style rules (Harkema et al. 2009; the algorithm medspaCy's ConText implements):

- ``absent``: a negation cue before the term ("denies", "no", "negative for", "without") or
  after it ("CP: denied", "fevers - none"), within the sentence and not past a termination
  word ("but", "however", "reports", ...);
- ``family``: a relative or a family-history cue in the sentence, or the mention sits in a
  family-history section;
- ``hypothetical``: "return if", "rule out", "concern for", "monitor for" ...;
- ``historical``: "history of", "previously", "resolved" ...;
- ``present``: none of these.

A cue's scope ends at the sentence end, a termination word, or ``MAX_SCOPE`` words.
Sentences end at . ! ? ;, a list-item line or a new "Header:" line, never at a bare line
break or blank line (real notes are hard-wrapped mid-sentence, and the pipeline's
`clean_note` folds blank lines, so raw and cleaned text must split alike). Matching is
case-insensitive and every run of white space counts as one space, so spacing and case never
change what is found.

`note_concept_values` turns the mentions into the numeric note features the tabular model
uses; `NOTE_FEATURES` names and describes them. Absent, family and hypothetical mentions
count as "not present"; historical counts as present for chronic conditions (a history of
CHF is CHF) and as not present for symptoms (chest pain last year is not chest pain now).
No note at all makes every note feature unknown (NaN), which the model was trained to see.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

Status = Literal["present", "absent", "family", "hypothetical", "historical"]
Kind = Literal["symptom", "condition", "social"]
MAX_SCOPE = 12  # words a cue reaches (ConText uses the whole sentence; lists rarely run longer)


@dataclass(frozen=True)
class Concept:
    name: str
    kind: Kind
    label: str  # what a clinician reads in an explanation
    forms: tuple[str, ...]
    negated_forms: tuple[str, ...] = ()  # words that carry their own negation ("afebrile")


SYMPTOMS = (
    Concept("chest_pain", "symptom", "chest pain",
            ("chest pain", "chest pressure", "chest discomfort", "chest tightness", "CP", "angina")),
    Concept("shortness_of_breath", "symptom", "shortness of breath",
            ("shortness of breath", "short of breath", "SOB", "dyspnea", "dyspnoea", "DOE",
             "breathlessness", "orthopnea", "difficulty breathing")),
    Concept("dizziness", "symptom", "dizziness",
            ("dizziness", "dizzy spells", "dizzy", "lightheadedness", "lightheaded", "vertigo")),
    Concept("palpitations", "symptom", "palpitations",
            ("palpitations", "heart racing", "racing heart", "fluttering in the chest")),
    Concept("leg_swelling", "symptom", "leg swelling",
            ("leg swelling", "swollen legs", "lower extremity edema", "LE edema", "LEE", "ankle swelling",
             "pedal edema", "peripheral edema")),
    Concept("fever", "symptom", "fever",
            ("fever", "fevers", "subjective fevers", "febrile episodes", "febrile", "pyrexia"),
            ("afebrile",)),
    Concept("confusion", "symptom", "confusion",
            ("confusion", "confused", "altered mental status", "AMS", "disorientation", "disoriented",
             "delirium")),
    Concept("cough", "symptom", "cough", ("cough", "coughing", "productive cough")),
    Concept("nausea", "symptom", "nausea", ("nausea", "nauseated", "queasiness", "vomiting", "emesis")),
)  # fmt: skip

CONDITIONS = (
    Concept("chf", "condition", "heart failure",
            ("congestive heart failure", "heart failure", "CHF", "HFrEF", "HFpEF", "cardiomyopathy")),
    Concept("copd", "condition", "COPD",
            ("COPD", "chronic obstructive pulmonary disease", "emphysema", "chronic bronchitis")),
    Concept("diabetes", "condition", "diabetes",
            ("diabetes mellitus", "type 2 diabetes", "type 1 diabetes", "diabetes", "DM2", "T2DM", "T1DM",
             "DM", "IDDM", "NIDDM")),
    Concept("ckd", "condition", "chronic kidney disease",
            ("chronic kidney disease", "CKD", "ESRD", "end-stage renal disease",
             "chronic renal insufficiency")),
    Concept("htn", "condition", "hypertension", ("hypertension", "HTN", "high blood pressure")),
    Concept("afib", "condition", "atrial fibrillation",
            ("atrial fibrillation", "paroxysmal atrial fibrillation", "AFib", "A-fib", "atrial flutter")),
    Concept("cad", "condition", "coronary artery disease",
            ("coronary artery disease", "CAD", "ischemic heart disease", "ischaemic heart disease")),
    Concept("cancer", "condition", "cancer",
            ("cancer", "malignancy", "carcinoma", "metastatic disease", "lymphoma", "leukemia")),
    Concept("dementia", "condition", "dementia",
            ("dementia", "Alzheimer dementia", "Alzheimer's disease", "Alzheimer disease",
             "cognitive impairment")),
    Concept("liver_disease", "condition", "liver disease",
            ("cirrhosis", "liver disease", "chronic liver disease", "hepatic cirrhosis")),
    Concept("stroke", "condition", "stroke", ("stroke", "CVA", "cerebrovascular accident", "TIA")),
    Concept("depression", "condition", "depression",
            ("depression", "major depressive disorder", "MDD", "depressive disorder")),
    Concept("osa", "condition", "sleep apnea", ("obstructive sleep apnea", "sleep apnea", "OSA")),
    Concept("pad", "condition", "peripheral artery disease",
            ("peripheral artery disease", "peripheral arterial disease", "PAD", "peripheral vascular disease",
             "PVD")),
)  # fmt: skip

SOCIAL = (
    Concept("lives_alone", "social", "lives alone",
            ("lives alone", "live alone", "lived alone", "living alone", "resides alone", "lives by himself",
             "lives by herself", "lives by themselves", "lives on his own", "lives on her own",
             "lives on their own", "home alone")),
    Concept("lives_with_others", "social", "lives with others",
            ("lives with", "living with", "lived with", "resides with", "lives at home with", "moved in with",
             "lives in an assisted living", "assisted living facility", "lives in a nursing home",
             "lives with family", "primary caregiver")),
    Concept("cost_barrier", "social", "cannot afford medications",
            ("unable to afford", "cannot afford", "can't afford", "could not afford", "couldn't afford",
             "cost barriers", "cost barrier", "because of cost", "due to cost", "trouble paying for",
             "financial barriers", "financial hardship", "difficulty affording", "cost-related nonadherence"),
            ("able to afford", "no cost barriers", "covered by insurance", "prescription coverage",
             "without difficulty affording", "good access to medications", "no trouble affording",
             "fills prescriptions without difficulty", "affords medications")),
    Concept("followup_arranged", "social", "follow-up arranged",
            ("appointment scheduled", "follow-up arranged", "follow up arranged", "follow-up scheduled",
             "follow up scheduled", "appointment made", "appt scheduled", "appointment has been scheduled",
             "appointment is scheduled", "scheduled to see")),
    Concept("followup_missing", "social", "no follow-up arranged",
            ("declined follow-up", "declined follow up", "no PCP", "declined to schedule",
             "no follow-up appointment", "unable to arrange follow-up", "could not be arranged",
             "no primary care")),
)  # fmt: skip

CONCEPTS: dict[str, Concept] = {c.name: c for c in (*SYMPTOMS, *CONDITIONS, *SOCIAL)}

# --- ConText rules: cue phrases by category and direction ----------------------------------------

NEGATION_PRE = (
    "no", "not", "denies", "denied", "deny", "denying", "without", "negative for", "free of", "absence of",
    "never", "no evidence of", "no sign of", "no signs of", "no history of", "no hx of", "no known",
    "no prior", "no personal history of", "no personal hx of", "ruled out for", "rules out", "ruled out",
    "resolution of", "no longer", "no reported", "not reported", "neither", "nor", "fails to reveal",
    "no complaints of", "no further", "low suspicion for", "low suspicion of",
)  # fmt: skip
NEGATION_POST = ("denied", "negative", "none", "absent", "ruled out", "not present", "unlikely", "not seen")
PSEUDO = (
    "no increase", "no change in size", "no change since", "no change from", "no interval change",
    "no significant change", "not only", "not necessarily", "no further change",
    "not certain whether", "not certain if", "not rule out", "not ruled out", "gram negative",
    "no longer able", "not able", "per his", "per her", "obtained from", "accompanied by", "confirmed with",
    "discussed with", "with his family", "with her family", "and his family", "and her family",
)  # fmt: skip
HYPOTHETICAL_PRE = (
    "if", "return if", "return for", "return to the ed", "call for", "call if", "seek care", "should",
    "rule out", "r/o", "to rule out", "evaluate for", "evaluation for", "concern for", "at risk for",
    "risk of", "monitor for", "watch for", "in case of", "possible", "possibly", "may have", "question of",
    "suspected", "warning signs",
)  # fmt: skip
HISTORICAL_PRE = (
    "history of", "hx of", "h/o", "previously", "previous", "prior", "past", "formerly", "remote",
    "in the past",
)  # fmt: skip
HISTORICAL_POST = ("resolved", "in the past", "years ago", "previously", "has resolved", "now resolved")
FAMILY = (
    "family history", "family hx", "FHx", "FH", "familial", "mother", "father", "brother", "sister", "son",
    "daughter", "aunt", "uncle", "grandmother", "grandfather", "cousin", "sibling", "siblings", "parents",
    "mom", "dad", "maternal", "paternal", "husband", "wife", "spouse", "partner", "grandson",
    "granddaughter", "niece", "nephew", "twin", "relative", "relatives",
)  # fmt: skip
TERMINATION = (
    "but", "however", "although", "though", "except", "apart from", "aside from", "yet", "which", "who",
    "reports", "reported", "endorses", "endorsed", "complains", "complained", "presents", "presented",
    "states", "has had", "notes", "noted", "still", "now with", "currently has", "with ongoing",
    "secondary to", "due to",
)  # fmt: skip
FAMILY_SECTION = re.compile(r"\b(family|fhx|fh)\b", re.I)

# Titles and abbreviations ("Mrs.", "Dr.", "e.g.") do not end a sentence.
# An in-line "CLINICAL HISTORY:" (two or more capital words and a colon) also starts a sentence.
_SENTENCE_END = re.compile(  # the lookahead: every branch starts at white space or a capital
    r"(?=[\sA-Z])(?:(?<=[.!?;])(?<!(?i:\bmr\.))(?<!(?i:\bmrs\.))(?<!(?i:\bms\.))(?<!(?i:\bdr\.))(?<!(?i:\bst\.))"
    r"(?<!(?i:\bpt\.))(?<!(?i:\bvs\.))(?<!(?i:\be\.g\.))(?<!(?i:\bi\.e\.))\s+"
    r"|(?<=\s)(?=[A-Z][A-Z&/-]+(?: [A-Z&/-]+)+:\s)"
    r"|\n(?=\s*[-*•]\s)"
    r"|\n(?=\s*[A-Za-z][A-Za-z /&()-]{0,40}:))"
)
_LIST_LINE = re.compile(r"^[ \t]*(?:[-*•]|\d{1,2}[.)])[ \t].*$", re.M)
_HEADER = re.compile(r"^\s*([A-Za-z][A-Za-z /&()-]{0,40}):")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'/-]*")


def _abbreviation(phrase: str) -> bool:
    """Short all-capital forms (CP, DOE, PAD, CAD, FH) match only in capitals: in lower case
    they are ordinary words ("pad", "doe") or typos."""
    return len(phrase) <= 5 and phrase.upper() == phrase and any(c.isalpha() for c in phrase)


def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    """Longest phrase first, whole words, any white space between words, any case (but
    abbreviations, see `_abbreviation`)."""
    unique = {p if _abbreviation(p) else p.lower() for p in phrases}
    # Branches grouped by their first character, each group behind a one-character lookahead:
    # Python's `re` tries every branch of an alternation at every word start, so 200 phrases
    # cost 200 attempts per word; grouped, a word start costs one failed lookahead per group.
    # The same branch wins as in the flat alternation: only one group can match at a position
    # (its first character decides), and each group keeps the longest-first order.
    groups: dict[str, list[str]] = {}
    for phrase in sorted(unique, key=len, reverse=True):
        body = r"\s+".join(re.escape(w) for w in phrase.split())
        groups.setdefault(phrase[0].lower(), []).append(f"(?-i:{body})" if _abbreviation(phrase) else body)
    parts = [f"(?={re.escape(first)})(?:{'|'.join(branches)})" for first, branches in groups.items()]
    return re.compile(rf"(?<![A-Za-z0-9])(?:{'|'.join(parts)})(?![A-Za-z0-9])", re.I)


@dataclass(frozen=True)
class _Rules:
    concepts: re.Pattern[str]
    form_to_concept: dict[str, tuple[str, bool]]  # normalised form -> (concept, negated form)
    negation_pre: re.Pattern[str]
    negation_post: re.Pattern[str]
    pseudo: re.Pattern[str]
    hypothetical_pre: re.Pattern[str]
    historical_pre: re.Pattern[str]
    historical_post: re.Pattern[str]
    family: re.Pattern[str]
    termination: re.Pattern[str]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _form_key(text: str) -> str:
    return " ".join(text.split()) if _abbreviation(" ".join(text.split())) else _norm(text)


@lru_cache(maxsize=1)
def _rules() -> _Rules:
    forms: dict[str, tuple[str, bool]] = {}
    for concept in CONCEPTS.values():
        for form in concept.forms:
            forms.setdefault(_form_key(form), (concept.name, False))
        for form in concept.negated_forms:
            forms[_form_key(form)] = (concept.name, True)
    return _Rules(
        concepts=_phrase_pattern(tuple(forms)),
        form_to_concept=forms,
        negation_pre=_phrase_pattern(NEGATION_PRE),
        negation_post=_phrase_pattern(NEGATION_POST),
        pseudo=_phrase_pattern(PSEUDO),
        hypothetical_pre=_phrase_pattern(HYPOTHETICAL_PRE),
        historical_pre=_phrase_pattern(HISTORICAL_PRE),
        historical_post=_phrase_pattern(HISTORICAL_POST),
        family=_phrase_pattern(FAMILY),
        termination=_phrase_pattern(TERMINATION),
    )


@dataclass(frozen=True)
class Mention:
    """One concept mention: where it is in the note (character offsets) and what is asserted."""

    concept: str
    start: int
    end: int
    status: Status
    cue: str | None = None  # the words that decided the status

    @property
    def asserted(self) -> bool:
        """Does this mention say the patient has it now (conditions: has it at all)?"""
        if CONCEPTS[self.concept].kind == "condition":
            return self.status in ("present", "historical")
        return self.status == "present"


def _sentences(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, section header) of each sentence; a "Header:" opens a section until the next.

    Boundaries: . ! ? ; before white space, the end of a list-item line
    ("- CHF", "1. furosemide") and the line before a new header or list item.
    """
    cuts = {m.start(): m.end() for m in _SENTENCE_END.finditer(text)}
    for line in _LIST_LINE.finditer(text):
        cuts.setdefault(line.end(), line.end())
    out, section, pos = [], None, 0
    for start in [*sorted(cuts), len(text)]:
        if start < pos:
            continue
        if text[pos:start].strip():
            header = _HEADER.match(text, pos)
            if header:
                section = header.group(1)
            out.append((pos, start, section))
        pos = cuts.get(start, start)
    return out


def _words_between(text: str, start: int, end: int) -> int:
    return len(_WORD.findall(text[start:end]))


def _spans(pattern: re.Pattern[str], text: str, start: int, end: int) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in pattern.finditer(text, start, end)]


def _sentence_cues(
    rules: _Rules, text: str, s0: int, s1: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Pseudo-cue and termination spans of a sentence: the same for every mention in it."""
    return _spans(rules.pseudo, text, s0, s1), _spans(rules.termination, text, s0, s1)


def _outside(spans: list[tuple[int, int]], blocked: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [s for s in spans if not any(b[0] <= s[0] and s[1] <= b[1] for b in blocked)]


def _assert(text: str, start: int, end: int, section: str | None, hits: list[tuple[int, int]],
            rules: _Rules, concept: Concept, negated_form: bool,
            sentence: tuple[list[tuple[int, int]], list[tuple[int, int]]] | None = None,
            ) -> tuple[Status, str | None]:  # fmt: skip
    """The assertion of the mention text[start:end] within sentence [s0, s1); `sentence` is the
    sentence's pseudo-cue and termination spans when the caller already has them."""
    s0, s1 = hits[0]
    pseudo, terminations = sentence or _sentence_cues(rules, text, s0, s1)
    other_terms = [h for h in hits[1:] if not (h[0] <= start < h[1])]

    def before(pattern: re.Pattern[str]) -> str | None:
        """A cue before the mention whose scope reaches it (no termination in between)."""
        best = None
        for c0, c1 in _outside(_spans(pattern, text, s0, start), pseudo + other_terms):
            if c1 > start or _words_between(text, c1, start) > MAX_SCOPE:
                continue
            if any(c1 <= t0 and t1 <= start for t0, t1 in terminations):
                continue
            best = text[c0:c1]
        return best

    def after(pattern: re.Pattern[str]) -> str | None:
        """A post-cue after the mention (within a few words, no termination in between)."""
        for c0, c1 in _outside(_spans(pattern, text, end, s1), pseudo + other_terms):
            if any(p0 <= c0 and c1 < p1 for p0, p1 in _spans(rules.negation_pre, text, c0, s1)):
                continue  # the "negative" of "negative for Y" is about Y
            if _words_between(text, end, c0) > 4:
                break
            if any(end <= t0 and t1 <= c0 for t0, t1 in terminations):
                break
            return text[c0:c1]
        return None

    if negated_form:
        return "absent", text[start:end]
    cue = before(rules.negation_pre) or after(rules.negation_post)
    if cue:
        return "absent", cue
    if concept.kind != "social":  # "lives with her daughter" is the patient's own situation
        family = _outside(_spans(rules.family, text, s0, s1), pseudo)
        if family:
            return "family", text[family[0][0] : family[0][1]]
        if section and FAMILY_SECTION.search(section):
            return "family", section
    cue = before(rules.hypothetical_pre)
    if cue:
        return "hypothetical", cue
    cue = before(rules.historical_pre) or after(rules.historical_post)
    if cue:
        return "historical", cue
    return "present", None


def find_mentions(text: str | None) -> list[Mention]:
    """Every concept mention in `text`, in order, with its span and assertion status."""
    if not text:
        return []
    rules = _rules()
    mentions = []
    for s0, s1, section in _sentences(text):
        terms = [(m.start(), m.end()) for m in rules.concepts.finditer(text, s0, s1)]
        cues = _sentence_cues(rules, text, s0, s1) if terms else None
        for t0, t1 in terms:
            name, negated_form = rules.form_to_concept[_form_key(text[t0:t1])]
            status, cue = _assert(
                text, t0, t1, section, [(s0, s1), *terms], rules, CONCEPTS[name], negated_form, cues
            )
            mentions.append(Mention(name, t0, t1, status, cue))
    return mentions


# --- the note features ---------------------------------------------------------------------------

NOTE_PREFIX = "note_"
SOCIAL_FEATURES = {
    "lives_alone": "Lives alone (1), lives with others (0), not said (unknown).",
    # Notes document a cost problem when there is one (as they document symptoms), so a note
    # that does not say it counts as "no documented barrier", not as unknown.
    "cost_barrier": "Cannot afford medications, documented (1) or not (0).",
    "followup_arranged": "Follow-up arranged (1), not arranged or declined (0), not said (unknown).",
}
NOTE_FEATURES: dict[str, str] = {
    **{
        f"{NOTE_PREFIX}{c.name}": f"{c.label}: present at discharge per the note (1) or not (0)"
        for c in SYMPTOMS
    },
    **{
        f"{NOTE_PREFIX}{c.name}": f"{c.label}: the patient's own, per the note (1) or not (0)"
        for c in CONDITIONS
    },
    **{f"{NOTE_PREFIX}{name}": text for name, text in SOCIAL_FEATURES.items()},
    # Burden counts: one more documented symptom or condition is one more step, whichever it is
    # (the single flags are sparse; the counts let a small training set learn the dose).
    f"{NOTE_PREFIX}n_symptoms": "Symptoms present at discharge per the note.",
    f"{NOTE_PREFIX}n_conditions": "The patient's own chronic conditions per the note.",
}  # fmt: skip
# More of these never lowers the risk (XGBoost monotone constraints); follow-up lowers it.
NOTE_INCREASING = (
    *(f"{NOTE_PREFIX}{c.name}" for c in (*SYMPTOMS, *CONDITIONS)),
    f"{NOTE_PREFIX}lives_alone", f"{NOTE_PREFIX}cost_barrier",
    f"{NOTE_PREFIX}n_symptoms", f"{NOTE_PREFIX}n_conditions",
)  # fmt: skip
NOTE_DECREASING = (f"{NOTE_PREFIX}followup_arranged",)


def feature_concepts(feature: str) -> tuple[str, ...]:
    """The concepts whose mentions decide a note feature (what an explanation quotes)."""
    name = feature.removeprefix(NOTE_PREFIX)
    if name == "lives_alone":
        return ("lives_alone", "lives_with_others")
    if name == "followup_arranged":
        return ("followup_arranged", "followup_missing")
    if name == "n_symptoms":
        return tuple(c.name for c in SYMPTOMS)
    if name == "n_conditions":
        return tuple(c.name for c in CONDITIONS)
    return (name,)


def concept_values(mentions: list[Mention]) -> dict[str, float]:
    """Note features from mentions (a note was given: symptoms/conditions default to 0)."""
    asserted = {m.concept for m in mentions if m.asserted}
    seen = {m.concept for m in mentions}
    out = {f"{NOTE_PREFIX}{c.name}": float(c.name in asserted) for c in (*SYMPTOMS, *CONDITIONS)}

    def social(yes: str, no: str | None) -> float:
        if yes in asserted:
            return 1.0
        if yes in seen or (no is not None and no in asserted):
            return 0.0
        return math.nan

    # "lives alone" beats "lives with" in one note: "lives alone; her daughter visits" says alone.
    out[f"{NOTE_PREFIX}lives_alone"] = social("lives_alone", "lives_with_others")
    out[f"{NOTE_PREFIX}cost_barrier"] = float("cost_barrier" in asserted)
    out[f"{NOTE_PREFIX}n_symptoms"] = float(sum(c.name in asserted for c in SYMPTOMS))
    out[f"{NOTE_PREFIX}n_conditions"] = float(sum(c.name in asserted for c in CONDITIONS))
    missing = "followup_missing" in asserted
    arranged = "followup_arranged" in asserted
    out[f"{NOTE_PREFIX}followup_arranged"] = (
        0.0 if missing else 1.0 if arranged else 0.0 if "followup_arranged" in seen else math.nan
    )
    return out


def note_concept_values(text: str | None) -> dict[str, float]:
    """The note features of one note; None (no note) makes them all unknown (NaN)."""
    if text is None:
        return dict.fromkeys(NOTE_FEATURES, math.nan)
    return concept_values(find_mentions(text))


def assertion(text: str, start: int, end: int) -> tuple[Status, str | None]:
    """The status of any term text[start:end] (not only lexicon concepts): NegEx-style corpora
    name their own target phrases. Treated as a symptom-like term."""
    rules = _rules()
    for s0, s1, section in _sentences(text):
        if s0 <= start < s1 or (start >= s1 and s0 == start):
            others = [(m.start(), m.end()) for m in rules.concepts.finditer(text, s0, s1)]
            others = [o for o in others if o[1] <= start or o[0] >= end]
            return _assert(text, start, end, section, [(s0, s1), *others], rules, SYMPTOMS[0], False)
    return "present", None
