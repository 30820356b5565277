"""Note descriptors: a few numbers that describe a discharge note without keeping its text.

Why: the prediction store keeps no note text by default, yet a change in how notes are written
(a new template, more abbreviations, shorter notes, more negated findings) moves the model's
note concepts under it. These descriptors are stored with every served prediction and recorded
in each model's training reference, so `python -m monitor drift` can compare notes without
the notes.

One definition for training and serving: the text is first put through the feature pipeline's
own `clean_note` (idempotent), so a raw note at serving and the cleaned note in the feature
folder give the same descriptors. Keys start with `desc_`: they are never model inputs.
No note (None or blank) makes every descriptor unknown (NaN).
"""

from __future__ import annotations

import math

import pandas as pd

from data.concepts import CONCEPTS, find_mentions

PREFIX = "desc_"
DESCRIPTORS: dict[str, str] = {
    "desc_note_chars": "Characters in the cleaned note.",
    "desc_note_words": "Words in the cleaned note.",
    "desc_mentions_per_100_words": "Concept mentions (any assertion) per 100 words.",
    "desc_negation_rate": "Share of concept mentions asserted absent (denied); NaN without mentions.",
    "desc_family_rate": "Share of concept mentions about a relative; NaN without mentions.",
    "desc_hypothetical_rate": "Share of concept mentions only as a possibility; NaN without mentions.",
    "desc_historical_rate": "Share of concept mentions in the past; NaN without mentions.",
    "desc_abbrev_rate": "Share of concept mentions written as an abbreviation (CP, SOB, CHF); NaN without.",
    "desc_symptom_mentions": "Symptom mentions, any assertion.",
    "desc_condition_mentions": "Chronic condition mentions, any assertion.",
    "desc_social_mentions": "Social mentions (living situation, cost, follow-up), any assertion.",
}
DESCRIPTOR_COLUMNS = tuple(DESCRIPTORS)


def _abbreviated(form: str) -> bool:
    """Written in capitals and short, as the concept lexicon's abbreviations are (CP, SOB, CHF)."""
    return len(form) <= 5 and form.upper() == form and any(c.isalpha() for c in form)


def note_descriptors(text: str | None) -> dict[str, float]:
    """The descriptors of one note (raw or already cleaned: the same answer)."""
    from data.features import clean_note

    cleaned = clean_note(text) if text else ""
    if not cleaned:
        return dict.fromkeys(DESCRIPTOR_COLUMNS, math.nan)
    mentions = find_mentions(cleaned)
    words = len(cleaned.split())
    n = len(mentions)

    def share(count: int) -> float:
        return count / n if n else math.nan

    statuses = [m.status for m in mentions]
    kinds = [CONCEPTS[m.concept].kind for m in mentions]
    return {
        "desc_note_chars": float(len(cleaned)),
        "desc_note_words": float(words),
        "desc_mentions_per_100_words": 100.0 * n / words if words else 0.0,
        "desc_negation_rate": share(statuses.count("absent")),
        "desc_family_rate": share(statuses.count("family")),
        "desc_hypothetical_rate": share(statuses.count("hypothetical")),
        "desc_historical_rate": share(statuses.count("historical")),
        "desc_abbrev_rate": share(sum(_abbreviated(cleaned[m.start : m.end]) for m in mentions)),
        "desc_symptom_mentions": float(kinds.count("symptom")),
        "desc_condition_mentions": float(kinds.count("condition")),
        "desc_social_mentions": float(kinds.count("social")),
    }


def descriptor_frame(texts) -> pd.DataFrame:
    """Descriptors of many notes, one row each, in order (a Series or list of texts, None allowed)."""
    values = [note_descriptors(t if isinstance(t, str) else None) for t in texts]
    return pd.DataFrame(values, columns=list(DESCRIPTOR_COLUMNS), dtype="float64")
