"""Note concepts and their assertion: `data.concepts` against a dictionary, NegEx rules and medspaCy.

Why each comparison:

- NegEx kit, test reports 81-120 only (real sentences, never tuned on): is the extractor's
  `assertion` as good at negation as the NegEx rules the text benchmark already reports
  (`ml.text_baselines.NegexRules`) and as medspaCy's ConText, the published implementation of
  the algorithm it follows? The dictionary baseline is the floor (it never negates).
  `rsAnnotations-1-120-random.txt` labels the same sentences with experiencer and temporality,
  so family and historical detection are scored on the same reports.
- Synthetic discharge notes with known facts (held-out seeds, `data.notes`): do the note
  features the readmission model gets (`note_concept_values`) match the facts each note was
  written from? A dictionary that counts any surface form, blind to negation and experiencer,
  shows what the assertion rules buy on exactly those features.

medspaCy is scored only where `import medspacy` works (it downgrades numpy, so it lives in its
own venv, never the project's). Run:

    python bench/note_assertion.py --json bench/results/note_assertion.json
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import emit  # noqa: E402

from data.concepts import CONCEPTS, CONDITIONS, NOTE_PREFIX, SYMPTOMS, assertion, note_concept_values  # noqa: E402

NEGATED, AFFIRMED = "Negated", "Affirmed"
DENIED_P = 0.45  # a symptom the patient does not have is denied in the note (as data/synth.py)
FOLLOWUP_P = 0.8  # follow-up arranged (data/synth.py: 0.82, less for AMA and cost barriers)
Judge = Callable[[str, int, int], dict[str, bool] | None]


def locate(phrase: str, text: str) -> tuple[int, int] | None:
    """First case-insensitive occurrence of `phrase` in `text`; any white space between words."""
    words = phrase.split()
    match = re.search(r"\s+".join(map(re.escape, words)), text, re.I) if words else None
    return match.span() if match else None


def load_medspacy() -> tuple[Judge | None, dict[str, Any]]:
    """ConText on one target span (a TargetRule for that phrase), or None and why it cannot run."""
    try:
        import medspacy
        import spacy
        from medspacy.target_matcher import TargetMatcher, TargetRule
    except Exception as err:  # ImportError, or a broken install (numpy ABI)
        return None, {"ran": False, "reason": f"import medspacy failed: {type(err).__name__}: {err}"}
    try:  # PyRuSH logs every sentence at DEBUG through loguru
        from loguru import logger

        logger.disable("PyRuSH")
    except ImportError:
        pass
    nlp = medspacy.load()
    sentences, context = nlp.get_pipe("medspacy_pyrush"), nlp.get_pipe("medspacy_context")

    def judge(text: str, start: int, end: int) -> dict[str, bool] | None:
        matcher = TargetMatcher(nlp)
        matcher.add(TargetRule(text[start:end], "CONCEPT"))
        doc = context(matcher(sentences(nlp.make_doc(text))))
        ents = [e for e in doc.ents if e.start_char < end and start < e.end_char]
        if not ents:
            return None
        e = ents[0]
        return {"negated": e._.is_negated, "family": e._.is_family, "historical": e._.is_historical}

    versions = {"medspacy": medspacy.__version__, "spacy": spacy.__version__, "numpy": np.__version__}
    return judge, {"ran": True, "versions": versions}


def context_labels(test: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Temporality and experiencer per test row from the rs file (no report numbers there, so it is
    joined on concept + sentence); None where identical rows disagree or the file is missing."""
    test = test.assign(temporality=None, experiencer=None)
    if not path.is_file():
        return test
    rs = pd.read_csv(path, sep="\t", encoding="latin-1", dtype=str, keep_default_na=False)
    if rs.shape[1] < 6:
        return test

    def key(concept: str, sentence: str) -> tuple[str, str]:
        return " ".join(concept.lower().split()), " ".join(sentence.lower().split())

    seen: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for row in rs.itertuples(index=False):
        seen.setdefault(key(row[1], row[2]), set()).add((row[4].strip(), row[5].strip()))
    labels = [seen.get(key(c, s), set()) for c, s in zip(test["concept"], test["sentence"], strict=True)]
    one = [next(iter(x)) if len(x) == 1 else (None, None) for x in labels]
    return test.assign(temporality=[t for t, _ in one], experiencer=[e for _, e in one])


def binary_scores(truth: Iterable[bool], pred: Iterable[bool]) -> dict[str, Any]:
    t, p = np.asarray(list(truth), bool), np.asarray(list(pred), bool)
    tp = int((t & p).sum())
    f1 = 2 * tp / (t.sum() + p.sum()) if t.sum() else None
    return {"accuracy": float((t == p).mean()), "f1": f1, "true": int(t.sum()), "predicted": int(p.sum())}


def run_negex(datasets: Path) -> dict[str, Any]:
    from data.sources.text_tasks import negex_split, read_negex
    from ml.text_baselines import DictionaryBaseline, NegexRules, classification_scores

    development, test = negex_split(read_negex(str(datasets / "negex")))
    test = context_labels(test, datasets / "negex" / "rsAnnotations-1-120-random.txt")
    labels = test["label"].tolist()
    preds = {
        name: model.fit(development["text"].tolist(), development["label"].tolist()).predict(
            test["text"].tolist()
        )
        for name, model in (("dictionary", DictionaryBaseline()), ("negex_rules", NegexRules()))
    }
    spans = [locate(c, s) for c, s in zip(test["concept"], test["sentence"], strict=True)]
    t0 = time.perf_counter()
    ours = [
        assertion(s, *span) if span else ("present", None)
        for s, span in zip(test["sentence"], spans, strict=True)
    ]
    ms_ours = 1000 * (time.perf_counter() - t0) / len(test)
    preds["concepts"] = [NEGATED if status == "absent" else AFFIRMED for status, _ in ours]
    flags = {"concepts": [{"family": s == "family", "historical": s == "historical"} for s, _ in ours]}
    judge, medspacy_info = load_medspacy()
    if judge:
        t0 = time.perf_counter()
        found = [judge(s, *span) if span else None for s, span in zip(test["sentence"], spans, strict=True)]
        medspacy_info["ms_per_row"] = 1000 * (time.perf_counter() - t0) / len(test)
        medspacy_info["target_not_matched"] = sum(
            f is None for f, span in zip(found, spans, strict=True) if span
        )
        found = [f or {"negated": False, "family": False, "historical": False} for f in found]
        preds["medspacy_context"] = [NEGATED if f["negated"] else AFFIRMED for f in found]
        flags["medspacy_context"] = found
    scores = {name: classification_scores(labels, p, positive=NEGATED) for name, p in preds.items()}
    known = test["experiencer"].notna().to_numpy()
    context: dict[str, Any] = {"rows_scored": 0, "reason": "no experiencer/temporality labels"}
    if known.any():
        context = {
            "rows_scored": int(known.sum()),
            "rows_skipped_ambiguous_labels": int((~known).sum()),
            **{
                what: {
                    name: binary_scores(truth[known], [f[what] for f, k in zip(fl, known, strict=True) if k])
                    for name, fl in flags.items()
                }
                for what, truth in (
                    ("family", test["experiencer"].ne("Patient").to_numpy()),
                    ("historical", test["temporality"].eq("Historical").to_numpy()),
                )
            },
        }
    rows = zip(test.itertuples(), ours, preds["concepts"], preds["negex_rules"], strict=True)
    errors = [
        {"report": int(r.group), "concept": r.concept, "label": r.label, "status": status, "cue": cue,
         "negex_rules": rules, "sentence": r.sentence}
        for r, (status, cue), pred, rules in rows
        if pred != r.label
    ]  # fmt: skip
    # Reports 1-80: the split the rules may be developed on (the test reports stay unseen).
    dev_spans = [locate(c, s) for c, s in zip(development["concept"], development["sentence"], strict=True)]
    dev_ours = [
        NEGATED if span and assertion(s, *span)[0] == "absent" else AFFIRMED
        for s, span in zip(development["sentence"], dev_spans, strict=True)
    ]
    dev_rules = NegexRules().fit(development["text"].tolist(), development["label"].tolist())
    development_scores = {
        name: classification_scores(development["label"].tolist(), p, positive=NEGATED)
        for name, p in (
            ("concepts", dev_ours),
            ("negex_rules", dev_rules.predict(development["text"].tolist())),
        )
    }
    return {
        "development_reports_1_80": {
            "rows": len(development),
            "f1_negated": {name: s["f1_positive"] for name, s in development_scores.items()},
            "accuracy": {name: s["accuracy"] for name, s in development_scores.items()},
        },
        "rows": len(test),
        "reports": int(test["group"].nunique()),
        "f1_negated": {name: s["f1_positive"] for name, s in scores.items()},
        "accuracy": {name: s["accuracy"] for name, s in scores.items()},
        "concept_not_found_in_sentence": sum(span is None for span in spans),
        "ms_per_row_concepts": ms_ours,
        "medspacy": medspacy_info,
        "family_and_historical": context,
        "concepts_errors": errors,
    }


# --- synthetic notes --------------------------------------------------------------------------


def _whole_words(forms: Iterable[str]) -> re.Pattern[str]:
    body = "|".join(r"\s+".join(map(re.escape, f.split())) for f in sorted(forms, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{body})(?![A-Za-z0-9])", re.I)


DICTIONARY = {name: _whole_words(c.forms) for name, c in CONCEPTS.items()}
SOCIAL = ("lives_alone", "cost_barrier", "followup_arranged")
CLINICAL_NAMES = [c.name for c in (*SYMPTOMS, *CONDITIONS)]
CLINICAL = [f"{NOTE_PREFIX}{name}" for name in CLINICAL_NAMES]


def dictionary_values(text: str) -> dict[str, float]:
    """1 where any surface form of the feature's concept appears, whatever its assertion, else 0."""
    return {
        f"{NOTE_PREFIX}{name}": float(bool(DICTIONARY[name].search(text)))
        for name in (*CLINICAL_NAMES, *SOCIAL)
    }


def synthetic_notes(seed: int, n: int) -> tuple[list[str], list[dict[str, float]], int]:
    """(note texts, true feature values, notes whose PROBLEM_INFO condition the note never states).

    Facts are drawn as data/synth.py `_notes_table` draws them; a condition is true if it is in
    the history or named by the primary problem ("CHF exacerbation"). "DKA" implies diabetes in
    PROBLEM_INFO without naming it; such a note states no diabetes, so it counts as 0.
    """
    from data.notes import CONDITIONS as NOTE_FORMS
    from data.notes import DISPOSITIONS, PRIMARY_PROBLEMS, NoteFacts, render_discharge_summary
    from data.synth import COND, MEDICATIONS, PROBLEM_INFO, RELATIVES, SYMPTOM_BASE, _make_patients
    from data.synth import CONDITIONS as SYNTH_CONDITIONS

    rng = np.random.default_rng(seed)
    pts = _make_patients(rng, 0, n)
    names, symptom_names = list(SYNTH_CONDITIONS), list(SYMPTOM_BASE)
    named = {
        p: {c for c, forms in NOTE_FORMS.items() if _whole_words(forms).search(p)} for p in PRIMARY_PROBLEMS
    }
    linked = [PROBLEM_INFO[p][1] for p in PRIMARY_PROBLEMS]
    texts, truths, unstated = [], [], 0
    for i in range(n):
        has = pts.conditions[i]
        weights = np.array([1.0 if c is None else 4.0 if has[COND[c]] else 0.25 for c in linked])
        problem = PRIMARY_PROBLEMS[int(rng.choice(len(weights), p=weights / weights.sum()))]
        implied = PROBLEM_INFO[problem][1]
        history = [c for c, h in zip(names, has, strict=True) if h]
        absent = [c for c in names if c not in history and c != implied]
        denied = [
            absent[j]
            for j in rng.choice(len(absent), min(int(rng.integers(0, 3)), len(absent)), replace=False)
        ]
        family = [(RELATIVES[rng.integers(len(RELATIVES))], names[rng.integers(len(names))])
                  for _ in range(int(rng.integers(0, 3)))]  # fmt: skip
        present = rng.random(len(symptom_names)) < np.array(list(SYMPTOM_BASE.values()))
        denied_symptoms = ~present & (rng.random(len(symptom_names)) < DENIED_P)
        facts = NoteFacts(
            age=int(pts.age0[i]),
            sex=str(pts.sex[i]),
            primary_problem=problem,
            los_days=float(np.exp(rng.normal(np.log(3.5), 0.5))),
            disposition=DISPOSITIONS[int(rng.integers(len(DISPOSITIONS)))],
            history=history,
            denied_history=denied,
            family_history=family,
            symptoms_present=[s for s, v in zip(symptom_names, present, strict=True) if v],
            symptoms_denied=[s for s, v in zip(symptom_names, denied_symptoms, strict=True) if v],
            lives_alone=bool(pts.lives_alone[i]),
            cannot_afford_medications=bool(pts.cost_barrier[i]),
            medications=sorted({m for c in history for m in MEDICATIONS[c]}),
            followup_arranged=bool(rng.random() < FOLLOWUP_P),
        )
        texts.append(render_discharge_summary(rng, facts))
        stated = set(history) | named[problem]
        unstated += implied is not None and implied not in stated
        truths.append({
            **{f"{NOTE_PREFIX}{c.name}": float(c.name in facts.symptoms_present) for c in SYMPTOMS},
            **{f"{NOTE_PREFIX}{c.name}": float(c.name in stated) for c in CONDITIONS},
            f"{NOTE_PREFIX}lives_alone": float(facts.lives_alone),
            f"{NOTE_PREFIX}cost_barrier": float(facts.cannot_afford_medications),
            f"{NOTE_PREFIX}followup_arranged": float(facts.followup_arranged),
        })  # fmt: skip
    return texts, truths, unstated


def run_synthetic(seed: int, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    texts, truths, unstated = synthetic_notes(seed, n)
    render_s = time.perf_counter() - t0
    values, ms = {}, {"draw_facts_and_render": 1000 * render_s / n}
    for name, fn in (("concepts", note_concept_values), ("dictionary", dictionary_values)):
        t0 = time.perf_counter()
        values[name] = pd.DataFrame([fn(t) for t in texts])
        ms[name] = 1000 * (time.perf_counter() - t0) / n
    truth = pd.DataFrame(truths)
    features = {
        f: {name: binary_scores(truth[f] == 1, v[f] == 1) for name, v in values.items()} for f in CLINICAL
    }
    scored = [f for f in CLINICAL if truth[f].sum()]
    social = {}
    for f in (f"{NOTE_PREFIX}{s}" for s in SOCIAL):
        decided = values["concepts"][f].notna()
        social[f] = {"true": int(truth[f].sum())} | {
            name: {
                "decided": float(v[f].notna().mean()),
                "accuracy_when_decided": float((v[f] == truth[f])[v[f].notna()].mean()),
                "accuracy_on_rows_concepts_decided": float((v[f] == truth[f])[decided].mean()),
            }
            for name, v in values.items()
        }
    return {
        "seed": seed,
        "notes": n,
        "features": features,
        "social": social,
        "macro_f1": {name: float(np.mean([features[f][name]["f1"] for f in scored])) for name in values},
        "macro_f1_features": scored,
        "features_never_true": [f for f in CLINICAL if f not in scored],
        "notes_with_implied_condition_unstated": unstated,
        "ms_per_note": ms,
    }


def table(report: dict[str, Any]) -> str:
    negex, synth = report["negex_test"], report["synthetic_notes"]
    lines = [f"NegEx test reports ({negex['rows']} rows)   Negated-F1  accuracy"]
    lines += [
        f"  {m:<18} {negex['f1_negated'][m]:>22.3f} {negex['accuracy'][m]:>9.3f}" for m in negex["accuracy"]
    ]
    context = negex["family_and_historical"]
    for what in ("family", "historical"):
        lines += [f"  {what} {m}: accuracy {v['accuracy']:.3f} (true {v['true']}, predicted {v['predicted']})"
                  for m, v in context.get(what, {}).items()]  # fmt: skip
    lines.append(f"Synthetic notes ({synth['notes']})  macro-F1 symptoms+conditions")
    lines += [f"  {m:<18} {v:>22.3f}" for m, v in synth["macro_f1"].items()]
    for f, s in synth["social"].items():
        lines += [f"  {f:<24} {m}: decided {v['decided']:.3f} acc {v['accuracy_when_decided']:.3f}"
                  for m, v in s.items() if m != "true"]  # fmt: skip
    lines.append(f"  ms per note: {', '.join(f'{k} {v:.2f}' for k, v in synth['ms_per_note'].items())}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    default_datasets = os.environ.get("MEDISCALE_DATASETS", ROOT.parent / "shared" / "datasets")
    parser.add_argument("--datasets", type=Path, default=Path(default_datasets))
    parser.add_argument(
        "--seed",
        type=int,
        default=1000,
        help="held out: `python -m data synth` and the tests use small seeds",
    )
    parser.add_argument("--notes", type=int, default=2000)
    args = parser.parse_args()
    load_at_start = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"negex_test": run_negex(args.datasets)}
    report["seconds"] = {"negex": time.perf_counter() - t0}
    t1 = time.perf_counter()
    report["synthetic_notes"] = run_synthetic(args.seed, args.notes)
    report["seconds"] |= {"synthetic": time.perf_counter() - t1, "total": time.perf_counter() - t0}
    import pyarrow
    import sklearn

    report["setup"] = {
        "python": platform.python_version(),
        "interpreter": sys.executable,
        "versions": {
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "pyarrow": pyarrow.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start_and_end": [load_at_start, round(os.getloadavg()[0], 2)],
        "datasets": str(args.datasets),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(table(report))
    emit(report, args.json)


if __name__ == "__main__":
    main()
