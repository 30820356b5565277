"""Real clinical text: the fine-tuned note model against dictionary, NegEx rules and TF-IDF.

NegEx (Chapman et al. 2001): every method learns (if it learns) from reports 1-80 only and is
scored once on reports 81-120: F1 of the Negated class and accuracy. The fine-tuned model uses
reports 65-80 for validation (calibration, the reported valid loss), nothing is tuned on test.
MTS-Dialog: section header from `section_text` (20 classes); trained on the training set,
scored on the official validation set: accuracy and macro-F1. Dictionary and NegEx rules do
not apply to MTS-Dialog. Run:

    python bench/text_tasks.py --json bench/results/text_tasks.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import emit  # noqa: E402

log = logging.getLogger("bench.text_tasks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    default_datasets = os.environ.get("MEDISCALE_DATASETS", ROOT.parent / "shared" / "datasets")
    parser.add_argument("--datasets", type=Path, default=Path(default_datasets))
    parser.add_argument(
        "--home",
        type=Path,
        default=ROOT / "artifacts" / "bench" / "text",
        help="MLflow data dir for these runs (kept apart from the real registry)",
    )
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--negex-epochs", type=float, default=3.0)
    parser.add_argument("--mts-epochs", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=["negex", "mtsdialog"],
        default=["negex", "mtsdialog"],
        help="run these; the other task's figures are kept from an existing --json file",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    os.environ["MEDISCALE_DATA_DIR"] = str(args.home)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    import ray

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    report: dict = {
        "negex_test_f1_negated": {},
        "negex_test_accuracy": {},
        "mtsdialog_valid_accuracy": {},
        "mtsdialog_valid_macro_f1": {},
        "seconds": {},
        "config": {},
    }
    if args.json and args.json.exists():  # keep the figures of a task not run now
        report |= json.loads(args.json.read_text())
    if "negex" in args.tasks:
        run_negex(args, report)
        emit(report, args.json)
    if "mtsdialog" in args.tasks:
        run_mtsdialog(args, report)
        emit(report, args.json)
    ray.shutdown()


def run_negex(args: argparse.Namespace, report: dict) -> None:
    from ml.experiment import train_text
    from ml.text import TextConfig
    from ml.text_baselines import DictionaryBaseline, NegexRules, TfidfLogReg, classification_scores
    from ml.text_tasks import negex_splits

    negex = negex_splits(args.datasets)
    development = [*negex.train["text"], *negex.valid["text"]]
    development_labels = [*negex.train["label"], *negex.valid["label"]]
    test_texts, test_labels = negex.test["text"].tolist(), negex.test["label"].tolist()
    for name, model in (
        ("dictionary", DictionaryBaseline()),
        ("negex_rules", NegexRules()),
        ("tfidf_lr", TfidfLogReg()),
    ):
        scores = classification_scores(
            test_labels, model.fit(development, development_labels).predict(test_texts), positive="Negated"
        )
        report["negex_test_f1_negated"][name] = scores["f1_positive"]
        report["negex_test_accuracy"][name] = scores["accuracy"]
        print(f"negex {name}: {scores}", flush=True)

    negex_config = TextConfig(
        model=args.model,
        max_length=96,
        head_tokens=32,
        batch_size=16,
        epochs=args.negex_epochs,
        learning_rate=5e-5,
        cpus_per_worker=args.threads,
    )
    t0 = time.perf_counter()
    tuned = train_text("negex", negex_config, datasets=str(args.datasets), n_boot=200)
    report["seconds"]["negex_finetune"] = time.perf_counter() - t0
    report["negex_test_f1_negated"]["finetuned"] = tuned["test_f1_positive"]
    report["negex_test_accuracy"]["finetuned"] = tuned["test_accuracy"]
    report["config"]["negex"] = negex_config.model_dump()
    report["negex_rows"] = {"train": len(negex.train), "valid": len(negex.valid), "test": len(negex.test)}
    print(f"negex finetuned: f1 {tuned['test_f1_positive']:.3f} acc {tuned['test_accuracy']:.3f}", flush=True)


def run_mtsdialog(args: argparse.Namespace, report: dict) -> None:
    from ml.experiment import train_text
    from ml.text import TextConfig
    from ml.text_baselines import TfidfLogReg, classification_scores
    from ml.text_tasks import mtsdialog_splits

    mts = mtsdialog_splits(args.datasets)
    official_train = [*mts.train["text"], *mts.valid["text"]]
    official_labels = [*mts.train["label"], *mts.valid["label"]]
    tfidf = TfidfLogReg().fit(official_train, official_labels)
    scores = classification_scores(mts.test["label"].tolist(), tfidf.predict(mts.test["text"].tolist()))
    report["mtsdialog_valid_accuracy"]["tfidf_lr"] = scores["accuracy"]
    report["mtsdialog_valid_macro_f1"]["tfidf_lr"] = scores["macro_f1"]
    print(f"mtsdialog tfidf_lr: {scores}", flush=True)

    mts_config = TextConfig(
        model=args.model,
        max_length=128,
        head_tokens=64,
        batch_size=16,
        epochs=args.mts_epochs,
        learning_rate=1e-4,
        class_weight="balanced",
        cpus_per_worker=args.threads,
    )
    t0 = time.perf_counter()
    tuned = train_text("mtsdialog", mts_config, datasets=str(args.datasets), n_boot=200)
    report["seconds"]["mtsdialog_finetune"] = time.perf_counter() - t0
    report["mtsdialog_valid_accuracy"]["finetuned"] = tuned["test_accuracy"]
    report["mtsdialog_valid_macro_f1"]["finetuned"] = tuned["test_macro_f1"]
    report["config"]["mtsdialog"] = mts_config.model_dump()
    report["mtsdialog_rows"] = {
        "train": len(mts.train),
        "holdout": len(mts.valid),
        "official_valid": len(mts.test),
    }
    print(
        f"mtsdialog finetuned: acc {tuned['test_accuracy']:.3f} macro-F1 {tuned['test_macro_f1']:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
