"""The note concept extractor: assertion status, spans, spacing/case invariance, note features.
Fast: no Ray, no models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data.concepts import NOTE_FEATURES, assertion, find_mentions, note_concept_values


def status_of(text: str, concept: str) -> list[str]:
    return [m.status for m in find_mentions(text) if m.concept == concept]


@pytest.mark.parametrize(
    ("text", "concept", "status"),
    [
        ("Patient denies chest pain.", "chest_pain", "absent"),
        ("Patient reports chest pain at discharge.", "chest_pain", "present"),
        ("CP: denied.", "chest_pain", "absent"),
        ("No fever, cough, or shortness of breath.", "shortness_of_breath", "absent"),
        ("Denies chest pain but reports shortness of breath.", "shortness_of_breath", "present"),
        ("Afebrile on the day of discharge.", "fever", "absent"),
        ("Mother had heart failure.", "chf", "family"),
        ("Family History: CHF in his father.", "chf", "family"),
        ("History of heart failure.", "chf", "historical"),
        ("No history of heart failure.", "chf", "absent"),
        ("Return to the ED for chest pain.", "chest_pain", "hypothetical"),
        ("Chest pain, resolved.", "chest_pain", "historical"),
        ("She lives alone.", "lives_alone", "present"),
        ("Does not live alone; her husband is her caregiver.", "lives_alone", "absent"),
        ("Absence of chest pain was confirmed with her family.", "chest_pain", "absent"),
        ("CLINICAL HISTORY: History of COPD. REFERRING DIAGNOSIS: chest pain", "chest_pain", "present"),
    ],
)
def test_assertion_status(text: str, concept: str, status: str) -> None:
    assert status_of(text, concept) == [status]


def test_symptom_history_is_not_current_but_condition_history_is() -> None:
    values = note_concept_values("History of chest pain. History of heart failure.")
    assert values["note_chest_pain"] == 0.0 and values["note_chf"] == 1.0


def test_list_items_end_a_sentence() -> None:
    text = "PMH:\n- dementia\nNegative for COPD."
    assert status_of(text, "dementia") == ["present"] and status_of(text, "copd") == ["absent"]


def test_abbreviations_match_only_in_capitals() -> None:
    assert status_of("Pt has DOE.", "shortness_of_breath") == ["present"]
    assert status_of("Gave one doe of the drug, heating pad applied.", "shortness_of_breath") == []
    assert status_of("Gave one doe of the drug, heating pad applied.", "pad") == []


def test_spans_point_into_the_text_given() -> None:
    text = "  Patient\tDENIES   chest\n pain.\r\nLives alone.  "
    mentions = find_mentions(text)
    assert [(m.concept, m.status) for m in mentions] == [("chest_pain", "absent"), ("lives_alone", "present")]
    assert text[mentions[0].start : mentions[0].end] == "chest\n pain"
    assert mentions[0].cue == "DENIES"


@pytest.mark.parametrize(
    "variant",
    [
        lambda t: t.upper(),
        lambda t: "  " + t.replace(" ", "  ") + "\n\n",
        lambda t: t.replace(". ", ".\n\n"),
        lambda t: t.replace(" ", "\t"),
        lambda t: t.replace("\n", "\r\n"),
    ],
)
def test_note_features_ignore_spacing_and_case(variant) -> None:
    text = (
        "HPI: Reports chest pain. Denies shortness of breath.\nPMH: CHF, COPD.\n"
        "Family History: mother with cancer.\nSocial: Lives alone. Unable to afford medications."
    )
    assert note_concept_values(variant(text)) == note_concept_values(text)


def test_no_note_is_unknown_and_an_empty_finding_is_zero() -> None:
    unknown = note_concept_values(None)
    assert set(unknown) == set(NOTE_FEATURES) and all(math.isnan(v) for v in unknown.values())
    said_nothing = note_concept_values("Doing well.")
    assert said_nothing["note_chest_pain"] == 0.0 and math.isnan(said_nothing["note_lives_alone"])


def test_social_facts() -> None:
    assert note_concept_values("Lives with her daughter.")["note_lives_alone"] == 0.0
    assert note_concept_values("Previously lived alone but moved in with her son.")["note_lives_alone"] == 0.0
    assert note_concept_values("Denies difficulty affording medications.")["note_cost_barrier"] == 0.0
    assert note_concept_values("Cannot afford his insulin.")["note_cost_barrier"] == 1.0
    assert note_concept_values("Declined follow-up.")["note_followup_arranged"] == 0.0
    assert note_concept_values("PCP appointment scheduled.")["note_followup_arranged"] == 1.0


def test_any_term_can_be_asserted() -> None:
    text = "The patient denies any abdominal cramping today."
    start = text.index("abdominal")
    assert assertion(text, start, start + len("abdominal cramping"))[0] == "absent"


def test_generated_notes_match_their_facts() -> None:
    """The generator's facts come back out of its notes (a held-out seed; bench/note_assertion.py
    measures this at scale)."""
    from data.notes import (
        CONDITIONS,
        DISPOSITIONS,
        PRIMARY_PROBLEMS,
        SYMPTOMS,
        NoteFacts,
        render_discharge_summary,
    )
    from data.synth import PROBLEM_INFO

    rng = np.random.default_rng(12345)
    conditions, symptoms = list(CONDITIONS), list(SYMPTOMS)
    for _ in range(60):
        problem = PRIMARY_PROBLEMS[int(rng.integers(len(PRIMARY_PROBLEMS)))]
        has = [c for c in conditions if rng.random() < 0.25 or c == PROBLEM_INFO[problem][1]]
        absent = [c for c in conditions if c not in has]
        present = [s for s in symptoms if rng.random() < 0.2]
        facts = NoteFacts(
            age=70, sex="F", primary_problem=problem,
            los_days=4, disposition=DISPOSITIONS[int(rng.integers(len(DISPOSITIONS)))], history=has,
            denied_history=absent[:2], family_history=[("mother", absent[-1])], symptoms_present=present,
            symptoms_denied=[s for s in symptoms if s not in present][:3],
            lives_alone=bool(rng.random() < 0.5),
            cannot_afford_medications=bool(rng.random() < 0.3), medications=[], followup_arranged=True,
        )  # fmt: skip
        values = note_concept_values(render_discharge_summary(rng, facts))
        for name in symptoms:
            assert values[f"note_{name}"] == float(name in present), name
        for name in absent:
            assert values[f"note_{name}"] == 0.0, name
        assert values["note_lives_alone"] == float(facts.lives_alone)
        if facts.cannot_afford_medications:
            assert values["note_cost_barrier"] == 1.0
