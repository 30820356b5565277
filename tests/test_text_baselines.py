"""Tests for the keyword / NegEx-rule / TF-IDF text baselines (ml.text_baselines).

Hand-written sentences pin down each rule of the NegEx algorithm; tests marked `shared_data`
score the baselines on the real NegEx test reports (81-120) and MTS-Dialog validation set, with
thresholds a little under the measured values so a regression in the rules or features fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prerequisites import shared_dataset
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from data.sources.text_tasks import negex_split, read_mts_dialog, read_negex
from ml.text_baselines import (
    AFFIRMED,
    NEGATED,
    DictionaryBaseline,
    NegexRules,
    TfidfLogReg,
    classification_scores,
    find_concept,
    mark_tokens,
    tokenize,
)

# ------------------------------------------------------------------------------ concept marker


def test_find_concept_skips_deid_tags_and_banner() -> None:
    text = "[Report de-identified (Safe-harbor compliant) by De-ID v.6.14.02] **NAME[AAA] denies [PAIN]."
    start, end = find_concept(text)
    assert text[start:end] == "[PAIN]"
    assert find_concept("Mr. **NAME[AAA] is a **AGE[in 50s]-year-old man.") is None
    assert find_concept("concept: pain | no brackets here") is None


def test_mark_tokens_wraps_only_the_concept() -> None:
    marked = mark_tokens("**AGE[in 60s] man denies [chest pain].")
    assert "**AGE[in 60s]" in marked
    assert "CONCEPTSTART chest pain CONCEPTEND" in " ".join(marked.split())
    assert mark_tokens("no marker") == "no marker"


def test_tokenize_lowercases_and_expands_nt() -> None:
    assert tokenize("She DOESN'T have r/o PE.") == ["she", "does", "not", "have", "r", "o", "pe"]


# ------------------------------------------------------------------------------- NegEx rules


@pytest.mark.parametrize(
    ("text", "label", "trigger"),
    [
        ("Patient denies [chest pain].", NEGATED, "denies"),
        ("Patient reports [chest pain].", AFFIRMED, None),
        ("No [murmurs], gallops, or rubs.", NEGATED, "no"),
        ("No murmurs, gallops, or [rubs].", NEGATED, "no"),
        ("There is no evidence of [pneumothorax].", NEGATED, "no evidence of"),
        ("IMPRESSION: NEGATIVE FOR [MALIGNANCY].", NEGATED, "negative for"),
        ("The CT ruled out [pulmonary embolism].", NEGATED, "ruled out"),
        ("She doesn't have [fever].", NEGATED, "not have"),
        # pseudo-triggers hold a trigger word but do not negate
        ("There is no increase in [pain].", AFFIRMED, None),
        ("No change in [renal function] was seen.", AFFIRMED, None),
        ("Cultures grew gram negative [rods].", AFFIRMED, None),
        ("Rule out [pneumonia].", AFFIRMED, None),
        ("[Pneumonia] was not ruled out.", AFFIRMED, None),
        # post-negation triggers, after the condition
        ("[Pneumonia] was ruled out.", NEGATED, "was ruled out"),
        ("The margins are [tumor] free.", NEGATED, "free"),
        ("[Myocardial infarction] is unlikely.", NEGATED, "is unlikely"),
        ("His [nausea] resolved.", NEGATED, "resolved"),
        # termination terms end a trigger's scope
        ("Patient denies fever but reports [chest pain].", AFFIRMED, None),
        ("Patient denies fever or [chest pain].", NEGATED, "denies"),
        ("No fever, however [cough] persists.", AFFIRMED, None),
        ("[Cough], but cultures were negative.", AFFIRMED, None),
        # nothing marked: nothing to anchor the rules on
        ("concept: pain | The patient denies it.", AFFIRMED, None),
    ],
)
def test_negex_rules_sentences(text: str, label: str, trigger: str | None) -> None:
    rules = NegexRules()
    assert rules.predict([text]) == [label]
    assert rules.explain(text) == trigger


def test_negex_window_limits_scope_both_ways() -> None:
    # 6 tokens (fever chills cough nausea vomiting or) lie between "no" and the condition
    pre = "No fever, chills, cough, nausea, vomiting or [rash]."
    assert NegexRules(window=6).predict([pre]) == [NEGATED]
    assert NegexRules(window=5).predict([pre]) == [AFFIRMED]
    assert NegexRules().predict([pre]) == [AFFIRMED]  # default window is 5
    # "unlikely" starts 5 tokens after the condition (as the cause is now)
    post = "[Sepsis] as the cause is now unlikely."
    assert NegexRules(window=6).explain(post) == "unlikely"
    assert NegexRules(window=5).explain(post) is None


def test_negex_custom_terms_and_labels() -> None:
    rules = NegexRules(pre_negation=("absent",), post_negation=(), negated_label="yes", affirmed_label="no")
    assert rules.predict(["absent [reflexes]", "denies [pain]"]) == ["yes", "no"]


def test_negex_fit_records_classes_and_checks_labels() -> None:
    rules = NegexRules()
    assert rules.predict(["denies [pain]"]) == [NEGATED]  # rules need no training
    assert rules.fit(["denies [pain]"], [AFFIRMED]) is rules
    assert rules.classes_ == [AFFIRMED, NEGATED]
    with pytest.raises(ValueError, match="Possible"):
        rules.fit(["a [b]", "c [d]"], [AFFIRMED, "Possible"])
    with pytest.raises(ValueError, match="window"):
        NegexRules(window=0).predict(["no [pain]"])
    with pytest.raises(TypeError, match="sequence"):
        rules.predict("no [pain]")
    assert clone(NegexRules(window=7)).get_params()["window"] == 7


# ---------------------------------------------------------------------------------- dictionary


def test_dictionary_affirms_negated_text() -> None:
    """The documented failure: a keyword lookup counts a denied condition as present."""
    texts = ["Patient reports [chest pain].", "Patient has [fever].", "Patient denies [cough]."]
    model = DictionaryBaseline().fit(texts, [AFFIRMED, AFFIRMED, NEGATED])
    assert model.present_label_ == AFFIRMED
    assert model.classes_ == [AFFIRMED, NEGATED]
    assert model.predict(["Patient denies [chest pain].", "No [edema]."]) == [AFFIRMED, AFFIRMED]
    assert model.score(["Patient denies [chest pain]."], [NEGATED]) == 0.0


def test_dictionary_present_label_and_majority_fallback() -> None:
    texts = ["[x] one", "plain two", "plain three", "plain four"]
    labels = ["present", "other", "other", "third"]
    model = DictionaryBaseline(present_label="present").fit(texts, labels)
    assert model.predict(["a [marked] text", "no marker at all"]) == ["present", "other"]
    assert DictionaryBaseline().fit(texts, labels).predict(["[m] t"]) == ["other"]  # majority
    with pytest.raises(ValueError, match="missing"):
        DictionaryBaseline(present_label="missing").fit(texts, labels)
    with pytest.raises(NotFittedError, match="DictionaryBaseline is not fitted; call fit"):
        DictionaryBaseline().predict(["[x]"])
    with pytest.raises(ValueError, match="lengths"):
        DictionaryBaseline().fit(["a", "b"], ["x"])


# ----------------------------------------------------------------------------------- TF-IDF+LR


def _position_task(words: list[str]) -> tuple[list[str], list[str]]:
    """Same words in every pair; only which one is marked decides the label."""
    texts, labels = [], []
    for a, b in zip(words, words[1:] + words[:1], strict=True):
        texts += [f"no [{a}], {b} present.", f"no {a}, [{b}] present."]
        labels += [NEGATED, AFFIRMED]
    return texts, labels


def test_tfidf_uses_concept_markers() -> None:
    train_words = [f"finding{i}" for i in range(20)]
    test_words = [f"other{i}" for i in range(10)]
    x, y = _position_task(train_words)
    x_test, y_test = _position_task(test_words)
    marked = TfidfLogReg().fit(x, y)
    assert marked.classes_ == [AFFIRMED, NEGATED]
    assert marked.predict(x_test) == y_test  # generalises to unseen words through the markers
    unmarked = TfidfLogReg(mark_concept=False).fit(x, y)
    # without markers each pair is the same bag of words, so at most one of the two is right
    assert classification_scores(y, unmarked.predict(x))["accuracy"] <= 0.5


def test_tfidf_toy_multiclass_and_proba() -> None:
    topics = {
        "cardio": ["chest pain", "palpitations", "murmur", "tachycardia", "angina"],
        "resp": ["cough", "wheeze", "dyspnea", "sputum", "rhonchi"],
        "gi": ["nausea", "vomiting", "diarrhea", "abdominal pain", "melena"],
    }
    texts, labels = [], []
    for label, words in topics.items():
        for i, w in enumerate(words):
            texts += [f"patient with {w} today", f"{w} and {words[(i + 1) % 5]} noted"]
            labels += [label, label]
    model = TfidfLogReg().fit(texts, labels)
    held_out = ["new angina and murmur", "productive cough with sputum", "melena after vomiting"]
    assert model.predict(held_out) == ["cardio", "resp", "gi"]
    proba = model.predict_proba(held_out)
    assert proba.shape == (3, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert [model.classes_[i] for i in proba.argmax(axis=1)] == model.predict(held_out)
    with pytest.raises(NotFittedError, match="TfidfLogReg is not fitted; call fit"):
        TfidfLogReg().predict(["x"])
    with pytest.raises(ValueError, match="two classes"):
        TfidfLogReg().fit(["a", "b"], ["x", "x"])


# ------------------------------------------------------------------------------------- scores


def test_classification_scores_known_values() -> None:
    y_true = [NEGATED, NEGATED, AFFIRMED, AFFIRMED, AFFIRMED]
    y_pred = [NEGATED, AFFIRMED, AFFIRMED, AFFIRMED, NEGATED]
    scores = classification_scores(y_true, y_pred, positive=NEGATED)
    # Negated: P = R = 1/2 -> F1 0.5; Affirmed: P = R = 2/3 -> F1 2/3
    assert scores == pytest.approx({"accuracy": 0.6, "macro_f1": (0.5 + 2 / 3) / 2, "f1_positive": 0.5})
    assert set(classification_scores(y_true, y_pred)) == {"accuracy", "macro_f1"}
    never = classification_scores(y_true, [AFFIRMED] * 5, positive=NEGATED)
    assert never["f1_positive"] == 0.0 and never["accuracy"] == 0.6
    with pytest.raises(ValueError, match="neither"):
        classification_scores(y_true, y_pred, positive="Possible")
    with pytest.raises(ValueError, match="lengths"):
        classification_scores(y_true, y_pred[:2])
    with pytest.raises(ValueError, match="zero"):
        classification_scores([], [])


# ---------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def negex(datasets_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = shared_dataset(datasets_dir, "negex", "Annotations-1-120.txt")
    return negex_split(read_negex(str(path)))


@pytest.mark.shared_data
def test_negex_baselines_on_test_reports(negex: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """Reports 1-80 train, 81-120 test. Measured: rules F1 0.955 / acc 0.981, TF-IDF 0.953 / 0.980."""
    train, test = negex
    x, y = train["text"].tolist(), train["label"].tolist()
    x_test, y_test = test["text"].tolist(), test["label"].tolist()

    def scores(model) -> dict[str, float]:
        return classification_scores(y_test, model.fit(x, y).predict(x_test), positive=NEGATED)

    dictionary = scores(DictionaryBaseline())
    assert dictionary["f1_positive"] == 0.0
    assert dictionary["accuracy"] == pytest.approx(y_test.count(AFFIRMED) / len(y_test))

    rules = scores(NegexRules())
    assert rules["f1_positive"] > 0.93  # Chapman et al. 2001 reported about 0.81
    assert rules["accuracy"] > 0.97

    tfidf = scores(TfidfLogReg())
    assert tfidf["f1_positive"] > 0.93
    assert tfidf["accuracy"] > 0.97
    assert tfidf["f1_positive"] > scores(TfidfLogReg(mark_concept=False))["f1_positive"]


@pytest.mark.shared_data
def test_tfidf_beats_majority_on_mts_dialog(datasets_dir: Path) -> None:
    """Measured on the 100 validation sections: accuracy 0.64, macro-F1 0.38 (majority: 0.22)."""
    folder = shared_dataset(datasets_dir, "mts_dialog")
    train, valid = read_mts_dialog(str(folder), "train"), read_mts_dialog(str(folder), "valid")
    x, y = train["text"].tolist(), train["label"].tolist()
    y_valid = valid["label"].tolist()
    majority = classification_scores(y_valid, DictionaryBaseline().fit(x, y).predict(valid["text"].tolist()))
    assert majority["accuracy"] == pytest.approx(y_valid.count("FAM/SOCHX") / len(y_valid))
    tfidf = classification_scores(y_valid, TfidfLogReg().fit(x, y).predict(valid["text"].tolist()))
    assert tfidf["accuracy"] > majority["accuracy"] + 0.3
    assert tfidf["accuracy"] > 0.58
    assert tfidf["macro_f1"] > 0.3
