"""Non-neural baselines for clinical text classification, to show what a transformer must beat.

Three classifiers share one sklearn-style interface (`fit(texts, labels)`, `predict(texts)`,
`classes_`; they are sklearn estimators, so `get_params`, `clone` and `score` work too):

* `DictionaryBaseline` - a keyword system: the condition word is there, so the finding counts.
  It cannot see negation, which is exactly the failure the other models are measured against.
* `NegexRules` - the NegEx rule algorithm (Chapman et al. 2001): trigger phrases before or after
  the condition negate it within a short window unless a pseudo-trigger or a termination term
  intervenes. Nothing is learned.
* `TfidfLogReg` - word 1-2 gram TF-IDF with a class-balanced logistic regression: the standard
  bag-of-words learner.

NegEx texts (see `data.sources.text_tasks.read_negex`) mark the condition to judge in square
brackets, "Patient denies [chest pain].". The same sentences also hold de-identification tags in
brackets ("**NAME[AAA]", "**AGE[in 50s]", "[Report de-identified ... by De-ID v.6.14.02]"), so
`find_concept` skips those and returns the one condition marker. Texts without a marker (the
reader's "concept: ... | sentence" rows, or MTS-Dialog sections) are handled per model.

`classification_scores` is the scoring the text benchmark reports for every model.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

NEGATED = "Negated"
AFFIRMED = "Affirmed"

# ------------------------------------------------------------------------------- concept marker

_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
# A de-identification tag is `**NAME[...]`, `**AGE[...]`, `*PATH-NUMBER[...]`: a starred word
# glued to the bracket. The De-ID banner is a bracketed sentence of its own.
_DEID_TAG_BEFORE = re.compile(r"\*[A-Za-z-]+$")
_DEID_BANNER = "report de-identified"


def find_concept(text: str) -> tuple[int, int] | None:
    """(start, end) of the bracketed condition, brackets included, or None if not marked.

    De-identification tags in brackets are skipped; if several candidates remain the first is
    taken, as `mark_concept` marks the first occurrence of the concept.
    """
    for match in _BRACKETED.finditer(text):
        if _DEID_TAG_BEFORE.search(text, 0, match.start()):
            continue
        if match.group(1).strip().lower().startswith(_DEID_BANNER):
            continue
        return match.span()
    return None


def _as_list(texts: Iterable[str], what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a sequence of strings, not one string")
    out = list(texts)
    bad = [type(t).__name__ for t in out if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{what} must all be strings; found {sorted(set(bad))}")
    return out


def _check_xy(texts: Iterable[str], labels: Iterable[str]) -> tuple[list[str], list[str]]:
    x = _as_list(texts)
    y = [str(v) for v in _as_list(labels, "labels")]
    if len(x) != len(y):
        raise ValueError(f"texts and labels have different lengths ({len(x)} vs {len(y)})")
    if not x:
        raise ValueError("cannot fit on zero texts")
    return x, y


def _majority(labels: Sequence[str]) -> str:
    """Most frequent label; ties go to the alphabetically first, so the result is reproducible."""
    counts = Counter(labels)
    return min(counts, key=lambda label: (-counts[label], label))


# ------------------------------------------------------------------------------ 1. dictionary


class DictionaryBaseline(ClassifierMixin, BaseEstimator):
    """Keyword lookup: a text that mentions the marked condition is a finding.

    This is how a plain keyword/ICD-string search counts conditions, and it is the floor the
    negation-aware models must clear: on NegEx it predicts `present_label` ("Affirmed") for
    every marked sentence, so it never finds a negation (Negated-F1 is 0 by construction).

    `present_label` is the label meaning "finding present"; if None, fit takes the majority
    training label. Texts without a bracketed condition (nothing to look up) get the majority
    training label, so on a multi-class task with no markers this is the majority-class baseline.
    """

    def __init__(self, present_label: str | None = None) -> None:
        self.present_label = present_label

    def fit(self, texts: Iterable[str], labels: Iterable[str]) -> DictionaryBaseline:
        """Record the classes, the majority label and the "present" label; nothing else is learned."""
        _, y = _check_xy(texts, labels)
        self.classes_ = sorted(set(y))
        self.majority_label_ = _majority(y)
        self.present_label_ = self.majority_label_ if self.present_label is None else self.present_label
        if self.present_label_ not in self.classes_:
            raise ValueError(f"present_label {self.present_label_!r} is not a training label {self.classes_}")
        return self

    def predict(self, texts: Iterable[str]) -> list[str]:
        """`present_label_` where a condition is marked, else the majority training label."""
        if not hasattr(self, "classes_"):
            raise NotFittedError("DictionaryBaseline is not fitted; call fit() first")
        return [
            self.present_label_ if find_concept(t) is not None else self.majority_label_
            for t in _as_list(texts)
        ]


# ------------------------------------------------------------------------------ 2. NegEx rules

# Term lists in the style of the published NegEx trigger set (Chapman et al. 2001 and the
# NegEx distribution's term list). Matching is on lower-case word tokens, longest phrase first.
# Additions to it: post-triggers "absent", "negative", "resolved"; "which" as a termination term.
# Checked on NegEx reports 1-80 only (never the test reports): "none" as a pre-trigger was left
# out, as it negated findings listed after "COMPLICATIONS: None" in procedure notes.
_RULE_OUT_VERBS = ("rules", "ruled", "did rule", "can rule", "adequate to rule", "sufficient to rule")
_RULE_OUT_OBJECTS = ("out", "him out", "her out", "the patient out")
_RULE_OUT = tuple(
    f"{verb} {obj}{suffix}"
    for verb in _RULE_OUT_VERBS
    for obj in _RULE_OUT_OBJECTS
    for suffix in ("", " for", " against")
)

PRE_NEGATION: tuple[str, ...] = (
    "absence of",
    "cannot",
    "cannot see",
    "checked for",
    "declined",
    "declines",
    "denied",
    "denies",
    "denying",
    "evaluate for",
    "fails to reveal",
    "free of",
    "negative for",
    "never",
    "never developed",
    "never had",
    "no",
    "no abnormal",
    "no cause of",
    "no complaints of",
    "no evidence",
    "no evidence of",
    "no evidence to suggest",
    "no findings of",
    "no findings to indicate",
    "no new",
    "no new evidence",
    "no other evidence",
    "no radiographic evidence of",
    "no sign of",
    "no signs of",
    "no significant",
    "no suggestion of",
    "no suspicious",
    "not",
    "not appear",
    "not appreciate",
    "not associated with",
    "not complain of",
    "not demonstrate",
    "not exhibit",
    "not feel",
    "not had",
    "not have",
    "not know of",
    "not known to have",
    "not reveal",
    "not see",
    "not to be",
    "patient was not",
    "rather than",
    "resolved",
    "test for",
    "to exclude",
    "unremarkable for",
    "with no",
    "without",
    "without any evidence of",
    "without evidence",
    "without indication of",
    "without sign of",
    *_RULE_OUT,
)

POST_NEGATION: tuple[str, ...] = (
    "unlikely",
    "is unlikely",
    "free",
    "absent",
    "negative",
    "resolved",  # "[nausea] resolved": NegEx lists it as a pre-trigger; it reads as post here too
    "was ruled out",
    "is ruled out",
    "are ruled out",
    "have been ruled out",
    "has been ruled out",
)

# Phrases that contain a trigger word but do not negate; NegEx's "possible" phrases
# ("rule out", "not ruled out") are here too, since they do not assert absence either.
PSEUDO_NEGATION: tuple[str, ...] = (
    "no increase",
    "no suspicious change",
    "no significant change",
    "no change",
    "no interval change",
    "no definite change",
    "no significant interval change",
    "not extend",
    "not cause",
    "not drain",
    "not certain if",
    "not certain whether",
    "gram negative",
    "without difficulty",
    "not necessarily",
    "not only",
    "rule out",
    "rule him out",
    "rule her out",
    "rule the patient out",
    "r o",
    "did not rule out",
    "not ruled out",
    "not been ruled out",
    "being ruled out",
    "be ruled out",
)

TERMINATION: tuple[str, ...] = (
    "but",
    "however",
    "nevertheless",
    "yet",
    "though",
    "although",
    "still",
    "aside from",
    "except",
    "apart from",
    "secondary to",
    "which",
    "cause of",
    "cause for",
    "causes of",
    "source of",
    "sources of",
    "reason for",
    "reasons for",
    "etiology of",
    "origin of",
)

_TOKEN = re.compile(r"[a-z0-9]+")
_CONTRACTION = re.compile(r"n't\b")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; "n't" becomes "not" so "doesn't" can trigger like "does not"."""
    return _TOKEN.findall(_CONTRACTION.sub(" not", text.lower()))


class NegexRules(ClassifierMixin, BaseEstimator):
    """NegEx (Chapman et al. 2001): is the bracketed condition negated by a nearby trigger?

    Algorithm, on lower-case word tokens (punctuation dropped):

    1. Find every trigger phrase outside the condition, longest match first, so a pseudo-trigger
       ("no increase") or a post-trigger ("was ruled out") wins over a word inside it ("no").
    2. Before the condition, look at the nearest event (trigger or termination term). The
       condition is negated if that event is a pre-negation trigger whose end lies at most
       `window` tokens before the condition starts. A termination term ("but"), a pseudo-trigger
       or any other trigger in between ends the earlier trigger's scope.
    3. Otherwise, after the condition, the condition is negated if the first event is a
       post-negation trigger ("[tumor] free") starting within `window` tokens of it.

    `fit` only records the classes and checks the labels: the rules are not trained, so
    `predict` works before `fit` as well. A text with no bracketed condition cannot be anchored
    and is predicted `affirmed_label`. The term lists can be replaced to adapt the rules.
    """

    def __init__(
        self,
        window: int = 5,
        negated_label: str = NEGATED,
        affirmed_label: str = AFFIRMED,
        pre_negation: Sequence[str] = PRE_NEGATION,
        post_negation: Sequence[str] = POST_NEGATION,
        pseudo_negation: Sequence[str] = PSEUDO_NEGATION,
        termination: Sequence[str] = TERMINATION,
    ) -> None:
        self.window = window
        self.negated_label = negated_label
        self.affirmed_label = affirmed_label
        self.pre_negation = pre_negation
        self.post_negation = post_negation
        self.pseudo_negation = pseudo_negation
        self.termination = termination

    def fit(self, texts: Iterable[str], labels: Iterable[str]) -> NegexRules:
        """Record `classes_`; raises if the labels are not the two this rule set outputs."""
        _, y = _check_xy(texts, labels)
        known = {self.negated_label, self.affirmed_label}
        other = sorted(set(y) - known)
        if other:
            raise ValueError(f"NegexRules only predicts {sorted(known)}; labels also hold {other}")
        self.classes_ = sorted(known)
        return self

    def _lexicon(self) -> tuple[dict[tuple[str, ...], str], int]:
        """Phrase (as tokens) -> kind, and the longest phrase length. Later kinds win on clashes."""
        lexicon: dict[tuple[str, ...], str] = {}
        for kind, phrases in (
            ("termination", self.termination),
            ("pre", self.pre_negation),
            ("post", self.post_negation),
            ("pseudo", self.pseudo_negation),
        ):
            for phrase in phrases:
                tokens = tuple(tokenize(phrase))
                if tokens:
                    lexicon[tokens] = kind
        return lexicon, max((len(k) for k in lexicon), default=0)

    @staticmethod
    def _events(
        tokens: list[str], lexicon: dict[tuple[str, ...], str], longest: int
    ) -> list[tuple[int, int, str, str]]:
        """(start, end, kind, phrase) of each non-overlapping term, scanning left to right."""
        events = []
        i = 0
        while i < len(tokens):
            for size in range(min(longest, len(tokens) - i), 0, -1):
                kind = lexicon.get(tuple(tokens[i : i + size]))
                if kind is not None:
                    events.append((i, i + size, kind, " ".join(tokens[i : i + size])))
                    i += size
                    break
            else:
                i += 1
        return events

    def explain(self, text: str) -> str | None:
        """The trigger phrase that negates the marked condition, or None if it is not negated."""
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be a positive int, got {self.window!r}")
        span = find_concept(text)
        if span is None:
            return None
        lexicon, longest = self._lexicon()
        before = tokenize(text[: span[0]])
        after = tokenize(text[span[1] :])
        events = self._events(before, lexicon, longest)
        if events:
            _, end, kind, phrase = events[-1]
            if kind == "pre" and len(before) - end <= self.window:
                return phrase
        events = self._events(after, lexicon, longest)
        if events:
            start, _, kind, phrase = events[0]
            if kind == "post" and start < self.window:
                return phrase
        return None

    def predict(self, texts: Iterable[str]) -> list[str]:
        """`negated_label` where a trigger's scope covers the condition, else `affirmed_label`."""
        return [
            self.negated_label if self.explain(t) is not None else self.affirmed_label
            for t in _as_list(texts)
        ]


# ---------------------------------------------------------------------------- 3. TF-IDF + LR

CONCEPT_START = " CONCEPTSTART "
CONCEPT_END = " CONCEPTEND "


def mark_tokens(text: str) -> str:
    """Replace the condition's brackets by word tokens so TF-IDF keeps them.

    The default tokenizer drops "[" and "]", which would lose which condition is judged (a
    sentence often lists several). As words, bigrams such as "no conceptstart" and
    "conceptend or" carry the position of negation cues relative to the condition.
    """
    span = find_concept(text)
    if span is None:
        return text
    start, end = span
    return f"{text[:start]}{CONCEPT_START}{text[start + 1 : end - 1]}{CONCEPT_END}{text[end:]}"


class TfidfLogReg(ClassifierMixin, BaseEstimator):
    """TF-IDF word 1-2 grams + logistic regression: the strongest cheap learned baseline.

    Sublinear tf damps repeated words in long notes; `class_weight="balanced"` keeps minority
    classes (Negated, rare MTS-Dialog headers) from being ignored. With `mark_concept` the
    bracketed condition is wrapped in CONCEPTSTART/CONCEPTEND tokens (see `mark_tokens`);
    texts without a marker are used as they are.

    `min_df=2` and `C=10` were chosen by cross-validation on training data only (5-fold grouped
    by report on NegEx reports 1-80, 5-fold on MTS-Dialog train): both beat sklearn's C=1 and
    min_df=1 there, and min_df=2 drops most n-grams (singletons), which also speeds up fitting.
    """

    def __init__(
        self,
        ngram_range: tuple[int, int] = (1, 2),
        min_df: int = 2,
        C: float = 10.0,
        max_iter: int = 5000,
        mark_concept: bool = True,
        random_state: int = 0,
    ) -> None:
        self.ngram_range = ngram_range
        self.min_df = min_df
        self.C = C
        self.max_iter = max_iter
        self.mark_concept = mark_concept
        self.random_state = random_state

    def _prepare(self, texts: Iterable[str]) -> list[str]:
        x = _as_list(texts)
        return [mark_tokens(t) for t in x] if self.mark_concept else x

    def fit(self, texts: Iterable[str], labels: Iterable[str]) -> TfidfLogReg:
        """Fit the vectorizer and the classifier on the training texts only."""
        x, y = _check_xy(texts, labels)
        if len(set(y)) < 2:
            raise ValueError(f"need at least two classes to fit, got {sorted(set(y))}")
        self.pipeline_ = Pipeline(
            [
                (
                    "tfidf",
                    TfidfVectorizer(ngram_range=self.ngram_range, sublinear_tf=True, min_df=self.min_df),
                ),
                (
                    "logreg",
                    LogisticRegression(
                        C=self.C,
                        class_weight="balanced",
                        max_iter=self.max_iter,
                        random_state=self.random_state,
                    ),
                ),
            ]
        )
        # L-BFGS on ~1e5 parameters gains nothing from BLAS threads, and on a busy machine (Ray
        # workers beside it) they oversubscribe: MTS-Dialog fit 1-3 s with one thread, 15-20 s without.
        with threadpool_limits(limits=1, user_api="blas"):
            self.pipeline_.fit(self._prepare(x), y)
        self.classes_ = [str(c) for c in self.pipeline_.classes_]
        log.debug(
            "tfidf+lr: %d texts, %d features, %d classes",
            len(x),
            len(self.pipeline_.named_steps["tfidf"].vocabulary_),
            len(self.classes_),
        )
        return self

    def _check_fitted(self) -> Pipeline:
        if not hasattr(self, "pipeline_"):
            raise NotFittedError("TfidfLogReg is not fitted; call fit() first")
        return self.pipeline_

    def predict(self, texts: Iterable[str]) -> list[str]:
        """Most probable class per text."""
        return [str(p) for p in self._check_fitted().predict(self._prepare(texts))]

    def predict_proba(self, texts: Iterable[str]) -> np.ndarray:
        """Class probabilities, shape (n_texts, n_classes), columns in `classes_` order."""
        return self._check_fitted().predict_proba(self._prepare(texts))


# ----------------------------------------------------------------------------------- scoring


def classification_scores(
    y_true: Sequence[str], y_pred: Sequence[str], positive: str | None = None
) -> dict[str, float]:
    """accuracy, macro_f1 and, if `positive` is given, f1_positive (F1 of that one class).

    Macro-F1 averages over every label seen in y_true or y_pred, so a model that never predicts
    a class is charged 0 for it; classes with no predictions score 0 rather than warn.
    """
    y_true = [str(v) for v in y_true]
    y_pred = [str(v) for v in y_pred]
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred have different lengths ({len(y_true)} vs {len(y_pred)})")
    if not y_true:
        raise ValueError("cannot score zero predictions")
    scores = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
    if positive is not None:
        if positive not in y_true and positive not in y_pred:
            raise ValueError(f"positive label {positive!r} occurs in neither y_true nor y_pred")
        scores["f1_positive"] = float(
            f1_score(y_true, y_pred, labels=[positive], average="macro", zero_division=0)
        )
    return scores
