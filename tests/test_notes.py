"""Tests for the synthetic discharge-summary renderer.

The readmission label hides in negation and experiencer, so these tests check every fact's
polarity the way a NegEx-style reader would, and check that filler never leaks fact terms.
"""

import re

import numpy as np
import pytest

from data.notes import (
    CONDITIONS,
    COST_BARRIER_PHRASES,
    DISPOSITIONS,
    FOLLOWUP_PHRASES,
    LIVES_ALONE_PHRASES,
    NEGATION_CUES,
    NEGATION_WINDOW,
    NO_FOLLOWUP_PHRASES,
    POST_NEGATION_CUES,
    PRIMARY_PROBLEMS,
    SYMPTOMS,
    NoteFacts,
    render_discharge_summary,
)

RELATIVES = ("mother", "father", "brother", "sister", "maternal grandmother", "paternal uncle")
MEDS = (
    "furosemide",
    "metoprolol succinate",
    "lisinopril",
    "apixaban",
    "insulin glargine",
    "atorvastatin",
    "aspirin",
    "metformin",
    "albuterol inhaler",
    "sertraline",
    "pantoprazole",
    "amlodipine",
)

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


def _alt(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _term_re(forms) -> re.Pattern:
    return re.compile(rf"(?<![\w-])(?:{_alt(forms)})(?![\w-])", re.IGNORECASE)


COND_RE = {k: _term_re(v) for k, v in CONDITIONS.items()}
SYM_RE = {k: _term_re(v) for k, v in SYMPTOMS.items()}
CUE_RE = re.compile(rf"\b(?:{_alt(NEGATION_CUES)})\b", re.IGNORECASE)
ANY_CUE_RE = re.compile(rf"\b(?:{_alt(NEGATION_CUES + POST_NEGATION_CUES)})\b", re.IGNORECASE)
REL_RE = re.compile(rf"\b(?:{_alt(RELATIVES)}|family|fhx)\b", re.IGNORECASE)


def random_facts(r: np.random.Generator, typo_rate: float = 0.02) -> NoteFacts:
    """Facts shaped like the generator's: a few conditions, symptoms, meds per admission."""
    conds = [str(c) for c in r.permutation(list(CONDITIONS))]
    n_hist, n_den = int(r.integers(0, 6)), int(r.integers(0, 4))
    syms = [str(s) for s in r.permutation(list(SYMPTOMS))]
    n_pres, n_sden = int(r.integers(0, 3)), int(r.integers(0, 5))
    family = [
        (str(r.choice(RELATIVES)), str(r.choice(list(CONDITIONS)))) for _ in range(int(r.integers(0, 3)))
    ]
    meds = [str(m) for m in r.choice(MEDS, int(r.integers(0, 11)), replace=False)]
    return NoteFacts(
        age=int(r.integers(18, 100)),
        sex=str(r.choice(["M", "F"])),
        primary_problem=str(r.choice(PRIMARY_PROBLEMS)),
        los_days=float(r.gamma(2.0, 2.0)),
        disposition=str(r.choice(DISPOSITIONS)),
        history=conds[:n_hist],
        denied_history=conds[n_hist : n_hist + n_den],
        family_history=family,
        symptoms_present=syms[:n_pres],
        symptoms_denied=syms[n_pres : n_pres + n_sden],
        lives_alone=bool(r.random() < 0.3),
        cannot_afford_medications=bool(r.random() < 0.25),
        medications=meds,
        followup_arranged=bool(r.random() < 0.7),
        typo_rate=typo_rate,
    )


def sentences(text: str) -> list[str]:
    return [s for s in _SENT_SPLIT.split(text) if s.strip()]


def negated_in_window(sent: str, term: re.Pattern) -> bool:
    """NegEx-style: a cue lies wholly within the NEGATION_WINDOW words before the term."""
    for m in term.finditer(sent):
        window = " ".join(sent[: m.start()].split()[-NEGATION_WINDOW:])
        if CUE_RE.search(window):
            return True
    return False


def check_note(text: str, f: NoteFacts) -> None:
    """Assert every fact is expressed with the right polarity and experiencer."""
    assert "\x01" not in text and "\x02" not in text  # protection markers are stripped
    sents = sentences(text)
    low = text.lower()
    for k in f.symptoms_denied:
        assert any(negated_in_window(s, SYM_RE[k]) for s in sents), (k, text)
    for k in f.symptoms_present:
        hits = [s for s in sents if SYM_RE[k].search(s)]
        assert hits, (k, text)
        assert not any(ANY_CUE_RE.search(s) for s in hits), (k, hits)
    for k in f.denied_history:
        assert any(negated_in_window(s, COND_RE[k]) for s in sents), (k, text)
    for k in f.history:
        assert any(
            COND_RE[k].search(s) and not ANY_CUE_RE.search(s) and not REL_RE.search(s) for s in sents
        ), (k, text)
    for rel, k in f.family_history:
        assert any(COND_RE[k].search(s) and rel in s.lower() for s in sents), (rel, k, text)

    # Nothing outside the facts (or the primary problem's own words) may be mentioned.
    rest = low.replace(f.primary_problem.lower(), " ")
    mentioned = {*f.history, *f.denied_history, *(k for _, k in f.family_history)}
    for k, rx in COND_RE.items():
        if k not in mentioned:
            assert not rx.search(rest), (k, text)
    for k, rx in SYM_RE.items():
        if k not in {*f.symptoms_present, *f.symptoms_denied}:
            assert not rx.search(rest), (k, text)

    assert any(p in low for p in LIVES_ALONE_PHRASES) == f.lives_alone, text
    assert any(p in low for p in COST_BARRIER_PHRASES) == f.cannot_afford_medications, text
    yes = any(p.lower() in low for p in FOLLOWUP_PHRASES)
    no = any(p.lower() in low for p in NO_FOLLOWUP_PHRASES)
    assert (yes, no) == (f.followup_arranged, not f.followup_arranged), text
    assert f.primary_problem in text
    assert str(f.age) in text
    for m in f.medications:
        assert m in text


def test_same_state_same_text():
    facts = [random_facts(np.random.default_rng(i)) for i in range(50)]
    a = np.random.default_rng(123)
    b = np.random.default_rng(123)
    assert [render_discharge_summary(a, f) for f in facts] == [render_discharge_summary(b, f) for f in facts]


def test_different_seeds_give_different_text():
    f = random_facts(np.random.default_rng(7))
    texts = {render_discharge_summary(np.random.default_rng(s), f) for s in range(20)}
    assert len(texts) == 20


def test_every_fact_has_its_polarity_and_experiencer():
    r = np.random.default_rng(0)
    rng = np.random.default_rng(1)
    for _ in range(600):
        f = random_facts(r)
        check_note(render_discharge_summary(rng, f), f)


def test_facts_survive_heavy_typos():
    r = np.random.default_rng(10)
    rng = np.random.default_rng(11)
    for _ in range(200):
        f = random_facts(r, typo_rate=0.4)
        check_note(render_discharge_summary(rng, f), f)


def test_typos_only_hit_unprotected_words():
    """Typos are drawn after the text, so typo_rate 0 vs >0 share the same base note."""
    phrases = [
        p
        for group in (
            NEGATION_CUES,
            POST_NEGATION_CUES,
            LIVES_ALONE_PHRASES,
            COST_BARRIER_PHRASES,
            FOLLOWUP_PHRASES,
            NO_FOLLOWUP_PHRASES,
            RELATIVES,
            PRIMARY_PROBLEMS,
            *CONDITIONS.values(),
            *SYMPTOMS.values(),
        )
        for p in group
    ]
    # Drug names may be misspelt in the narrative; the discharge list itself is checked
    # verbatim by check_note under heavy typos.
    protected_rx = re.compile(rf"(?<![\w-])(?:{_alt(phrases)})(?![\w-])", re.IGNORECASE)
    cue_words = {w for c in NEGATION_CUES + POST_NEGATION_CUES for w in c.split()}
    r = np.random.default_rng(3)
    changed = 0
    for i in range(300):
        f = random_facts(r, typo_rate=0.0)
        clean = render_discharge_summary(np.random.default_rng(i), f)
        f.typo_rate = 0.3
        noisy = render_discharge_summary(np.random.default_rng(i), f)
        a, b = clean.split(" "), noisy.split(" ")
        assert len(a) == len(b)
        spans = [m.span() for m in protected_rx.finditer(clean)]
        pos = 0
        for x, y in zip(a, b, strict=True):
            start, pos = pos, pos + len(x) + 1
            if x == y:
                continue
            changed += 1
            assert not any(s < start + len(x) and start < e for s, e in spans), (x, y, clean)
            assert x.rstrip(".,;:)").lower() not in cue_words, (x, y)
            assert y.rstrip(".,;:)").lower() not in cue_words, (x, y)
    assert changed > 500


def test_typo_rate_roughly_respected():
    r = np.random.default_rng(4)
    words = diffs = 0
    for i in range(300):
        f = random_facts(r, typo_rate=0.0)
        clean = render_discharge_summary(np.random.default_rng(i), f).split(" ")
        f.typo_rate = 0.05
        noisy = render_discharge_summary(np.random.default_rng(i), f).split(" ")
        words += len(clean)
        diffs += sum(x != y for x, y in zip(clean, noisy, strict=True))
    # Only unprotected lowercase words of 4+ letters are eligible, so the rate is lower.
    assert 0.005 < diffs / words < 0.05


def test_length_bounds():
    r = np.random.default_rng(5)
    rng = np.random.default_rng(6)
    lengths = [len(render_discharge_summary(rng, random_facts(r)).split()) for _ in range(1000)]
    assert min(lengths) >= 120
    assert max(lengths) <= 320


def test_empty_facts_have_no_fact_terms():
    f = NoteFacts(
        age=55,
        sex="F",
        primary_problem="cellulitis",
        los_days=0.4,
        disposition="HOME",
        history=[],
        denied_history=[],
        family_history=[],
        symptoms_present=[],
        symptoms_denied=[],
        lives_alone=False,
        cannot_afford_medications=False,
        medications=[],
        followup_arranged=True,
    )
    rng = np.random.default_rng(8)
    for _ in range(200):
        text = render_discharge_summary(rng, f)
        check_note(text, f)
        assert 120 <= len(text.split()) <= 320


def _normalise(sent: str, f: NoteFacts) -> str:
    s = sent.lower().replace(f.primary_problem.lower(), "<x>")
    for rx in (*COND_RE.values(), *SYM_RE.values()):
        s = rx.sub("<t>", s)
    for m in (*f.medications, *RELATIVES):
        s = s.replace(m, "<m>")
    s = re.sub(r"\b(he|she|his|her|himself|herself|pt|patient|the patient)\b", "<p>", s)
    return re.sub(r"\d+", "#", s)


def test_many_distinct_templates():
    r = np.random.default_rng(9)
    rng = np.random.default_rng(10)
    distinct, firsts, neg_sents, aff_sents = set(), set(), set(), set()
    for _ in range(500):
        f = random_facts(r, typo_rate=0.0)
        sents = sentences(render_discharge_summary(rng, f))
        norm = [_normalise(s, f) for s in sents]
        distinct.update(norm)
        firsts.add(next(n for n in norm if "<x>" in n))  # the HPI opening
        for s, n in zip(sents, norm, strict=True):
            if "<t>" in n:
                (neg_sents if ANY_CUE_RE.search(s) else aff_sents).add(n)
    assert len(distinct) > 600
    assert len(firsts) > 100
    assert len(neg_sents) > 100
    assert len(aff_sents) > 100


def test_negation_cue_variety_and_post_negation():
    for cue in (
        "denies",
        "no",
        "no history of",
        "negative for",
        "without",
        "no evidence of",
        "not",
        "ruled out",
        "free of",
    ):
        assert cue in NEGATION_CUES
    r = np.random.default_rng(12)
    rng = np.random.default_rng(13)
    seen_cues, post = set(), 0
    for _ in range(400):
        f = random_facts(r, typo_rate=0.0)
        text = render_discharge_summary(rng, f)
        seen_cues.update(m.lower() for m in CUE_RE.findall(text))
        terms = [SYM_RE[k] for k in f.symptoms_denied] + [COND_RE[k] for k in f.denied_history]
        for s in sentences(text):
            for rx in terms:
                m = rx.search(s)
                if m and re.match(
                    rf"\W*(?:was\s+)?(?:{_alt(POST_NEGATION_CUES)})\b", s[m.end() :], re.IGNORECASE
                ):
                    post += 1
    assert len(seen_cues) >= 12
    assert post > 20


def test_rejects_contradictory_or_unknown_facts():
    f = random_facts(np.random.default_rng(0))
    f.history, f.denied_history = ["chf"], ["chf"]
    with pytest.raises(ValueError, match="a condition cannot be both in history and denied_history"):
        render_discharge_summary(np.random.default_rng(0), f)
    f.denied_history = ["not_a_condition"]
    with pytest.raises(KeyError, match="unknown condition 'not_a_condition'"):
        render_discharge_summary(np.random.default_rng(0), f)
    f.denied_history, f.disposition = [], "HOSPICE"
    with pytest.raises(ValueError, match="unknown disposition 'HOSPICE'"):
        render_discharge_summary(np.random.default_rng(0), f)


def _flatten(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _flatten(v)
    else:
        for v in obj:
            yield from _flatten(v)


def test_templates_keep_their_polarity_and_do_not_leak_terms():
    """Static guarantees behind the sampled checks above."""
    from data import notes

    affirmed = (
        notes._SYM_AFF,
        notes._SYM_AFF_POST,
        notes._PMH_AFF,
        notes._INTRO_HX,
        notes._INTRO_PLAIN,
        notes._FAMILY_TEMPLATES,
    )
    for t in _flatten(affirmed):
        assert not ANY_CUE_RE.search(t), t
    filler = (
        notes._COURSE_FILLER,
        notes._HPI_FILLER,
        notes._SOCIAL_FILLER,
        notes._VITALS,
        notes._LABS,
        notes._EXAM_BASE,
        notes._EXAM_NEURO,
        notes._PLAN_FILLER,
        notes._CONDITION_BASE,
        notes._CONDITION_NEURO,
        notes._PROBLEM_COURSE,
        notes._GENERIC_COURSE,
        notes._TITLES,
        notes._PREAMBLE,
        notes._DISPO_TEXT,
        notes._FAMILY_EMPTY,
        notes._LOS,
        notes._LIVES_ALONE,
        notes._LIVES_WITH,
        notes._COST_YES,
        notes._COST_NO,
        notes._FOLLOW_YES,
        notes._FOLLOW_NO,
        notes._COND_MODIFIERS,
        tuple(notes._HEADER_NAMES.values()),
    )
    for t in _flatten(filler):
        for rx in (*COND_RE.values(), *SYM_RE.values()):
            assert not rx.search(t), t
    for t in _flatten((notes._SYM_NEG_TEMPLATES, notes._COND_NEG_TEMPLATES)):
        assert CUE_RE.search(t.replace("<", "").replace(">", "")), t
