"""Note model: tokenization, the Ray Train loop (2 workers), resume, out-of-memory recovery,
clear errors, the registry round trip, and behaviour of a real model trained on NegEx."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.text import (
    ModelNotFound,
    StepRunner,
    TextConfig,
    TextDataError,
    TextSplits,
    encode,
    fit,
    head_tail,
    load_tokenizer,
    pad_batch,
)

CONDITIONS = ["chest pain", "fever", "cough", "nausea", "headache", "rash", "dyspnea"]


def toy_negation(n: int, seed: int) -> pd.DataFrame:
    """Learnable negation sentences: 'denies' / 'reports' decide the label."""
    rng = np.random.default_rng(seed)
    negated = rng.random(n) < 0.5
    return pd.DataFrame(
        {
            "text": [
                f"Patient {'denies' if neg else 'reports'} [{CONDITIONS[i % len(CONDITIONS)]}] today."
                for i, neg in enumerate(negated)
            ],
            "label": np.where(negated, "Negated", "Affirmed"),
            "group": np.arange(n),
        }
    )


def toy_splits() -> TextSplits:
    return TextSplits(
        "toy",
        toy_negation(256, 0),
        toy_negation(64, 1),
        toy_negation(64, 2),
        ["Affirmed", "Negated"],
        positive="Negated",
    )


def tiny(tiny_bert: Path, **changes) -> TextConfig:
    base = {
        "model": str(tiny_bert),
        "max_length": 32,
        "head_tokens": 8,
        "batch_size": 16,
        "learning_rate": 2e-3,
        "warmup_ratio": 0.05,
    }
    return TextConfig(**(base | changes))


# --------------------------------------------------------------------------- code


def test_head_tail_keeps_both_ends_and_leaves_short_texts() -> None:
    ids = list(range(100))
    assert head_tail(ids, 10, 4) == [0, 1, 2, 3, 94, 95, 96, 97, 98, 99]
    assert head_tail(ids[:8], 10, 4) == ids[:8]
    assert head_tail(ids, 10, 10) == ids[:10]


def test_encode_adds_special_tokens_and_truncates_to_max_length(tiny_bert: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_bert))
    long_text = "start " + "middle " * 300 + "finish"
    short, long = encode(tokenizer, ["chest pain", long_text], max_length=16, head_tokens=4)
    assert short[0] == tokenizer.cls_token_id and short[-1] == tokenizer.sep_token_id
    assert len(long) == 16
    words = tokenizer.convert_ids_to_tokens(long)
    assert words[1] == "start" and words[-2] == "finish"  # head and tail both survive


def test_dynamic_padding_pads_to_the_longest_row() -> None:
    batch = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_config_rejects_a_head_longer_than_the_budget() -> None:
    with pytest.raises(ValueError, match="head_tokens"):
        TextConfig(max_length=16, head_tokens=15)


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub: huggingface_hub reads HF_HUB_OFFLINE once, at import, so the constant is patched too
    (with the variable alone, an earlier import made this test wait ~45 s on network retries)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_unknown_model_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    with pytest.raises(ModelNotFound, match="no-such-org/no-such-model"):
        load_tokenizer("no-such-org/no-such-model")


def test_default_model_resolves_offline_to_the_bundled_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    tokenizer = load_tokenizer(TextConfig().model)
    assert tokenizer("chest pain")["input_ids"][0] == tokenizer.cls_token_id


def test_empty_split_and_label_mismatch_are_refused(tiny_bert: Path) -> None:
    good = toy_splits()
    empty = TextSplits("toy", good.train.iloc[:0], good.valid, good.test, good.labels)
    with pytest.raises(TextDataError, match="train split has no rows"):
        fit(empty, tiny(tiny_bert))
    odd = good.test.assign(label="Possible")
    with pytest.raises(TextDataError, match=r"test split has label\(s\) \['Possible'\]"):
        fit(TextSplits("toy", good.train, good.valid, odd, good.labels), tiny(tiny_bert))
    one_class = good.train.assign(label="Affirmed")
    with pytest.raises(TextDataError, match=r"\['Negated'\] never occur in the train split"):
        fit(TextSplits("toy", one_class, good.valid, good.test, good.labels), tiny(tiny_bert))


def _one_step(tiny_bert: Path, config: TextConfig, rows: pd.DataFrame) -> tuple[StepRunner, list]:
    import torch
    from transformers import AutoModelForSequenceClassification, get_constant_schedule

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.eval()  # no dropout: both runs must see identical arithmetic
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runner = StepRunner(
        model, optimizer, get_constant_schedule(optimizer), config, torch.device("cpu"), 0, None
    )
    tokenizer = load_tokenizer(str(tiny_bert))
    ids = [np.asarray(i) for i in encode(tokenizer, rows["text"].tolist(), 32, 8)]
    runner.step(ids, (rows["label"] == "Negated").to_numpy().astype(np.int64))
    return runner, [p.detach().clone() for p in model.parameters()]


def test_forced_out_of_memory_halves_the_batch_and_gives_the_same_step(tiny_bert: Path) -> None:
    rows = toy_negation(16, 3)
    plain, expected = _one_step(tiny_bert, tiny(tiny_bert), rows)
    recovered, got = _one_step(tiny_bert, tiny(tiny_bert, debug_oom_above=4), rows)
    assert plain.micro_batch == 16 and plain.oom_events == 0
    assert recovered.micro_batch == 4 and recovered.oom_events == 2  # 16 -> 8 -> 4
    # Same effective batch: the update equals the one without out-of-memory.
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def test_out_of_memory_at_batch_one_gives_up_clearly(tiny_bert: Path) -> None:
    with pytest.raises(RuntimeError, match="micro-batch of 1"):
        _one_step(tiny_bert, tiny(tiny_bert, batch_size=2, debug_oom_above=0), toy_negation(2, 4))


def test_local_and_ray_data_tokenization_give_the_same_rows(
    ray_cluster: object, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small splits are tokenized in the driver, large ones by Ray Data: the same rows either way."""
    import ml.text

    frame = toy_negation(40, 5).assign(text=lambda f: f["text"] + " More words." * 3)
    config = tiny(tiny_bert, max_length=12, head_tokens=4)

    def rows(ds) -> list:
        return [(r["input_ids"].dtype.name, r["input_ids"].tolist(), r["label"]) for r in ds.iter_rows()]

    local = rows(ml.text.tokenized_dataset(frame, ["Affirmed", "Negated"], config))
    monkeypatch.setattr(ml.text, "LOCAL_TOKENIZE_MAX_ROWS", 10)
    ray_data = rows(ml.text.tokenized_dataset(frame, ["Affirmed", "Negated"], config))
    assert len(local) == 40 and sorted(local) == sorted(ray_data)
    assert {len(ids) for _, ids, _ in local} == {12} and {dtype for dtype, _, _ in local} == {"int32"}
    assert [label for _, _, label in local] == (frame["label"] == "Negated").astype(int).tolist()


# --------------------------------------------------------------------------- the Ray Train loop


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster: object, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory):
    config = tiny(tiny_bert, num_workers=2, epochs=8, checkpoint_every=8)
    return fit(toy_splits(), config, storage_path=str(tmp_path_factory.mktemp("text-runs")))


def test_loss_falls_with_two_workers(two_worker_run) -> None:
    metrics = two_worker_run.metrics
    assert metrics["world_size"] == 2
    assert metrics["step"] == 8 * 8  # 256 rows / (16 rows x 2 workers) = 8 steps an epoch
    assert metrics["valid_loss"] < 0.35, metrics  # chance is ln 2 = 0.69
    assert metrics["valid_accuracy"] > 0.9
    predicted = two_worker_run.predictor.predict(
        ["Patient denies [fever] today.", "Patient reports [rash] today."]
    )
    assert predicted == ["Negated", "Affirmed"]


def test_resume_continues_from_the_saved_step(ray_cluster: object, tiny_bert: Path, tmp_path: Path) -> None:
    first = fit(toy_splits(), tiny(tiny_bert, max_steps=3), storage_path=str(tmp_path))
    assert first.metrics["step"] == 3 and first.metrics["start_step"] == 0
    resumed = fit(
        toy_splits(),
        tiny(tiny_bert, max_steps=5),
        storage_path=str(tmp_path),
        resume_from=first.checkpoint_path,
    )
    assert resumed.metrics["start_step"] == 3
    assert resumed.metrics["step"] == 5


def test_resume_with_other_labels_is_refused(
    ray_cluster: object, two_worker_run, tiny_bert: Path, tmp_path: Path
) -> None:
    good = toy_splits()
    relabel = {"Affirmed": "present", "Negated": "absent"}
    other = TextSplits(
        "toy",
        *(frame.assign(label=frame["label"].map(relabel)) for frame in (good.train, good.valid, good.test)),
        ["present", "absent"],
    )
    with pytest.raises(Exception, match="checkpoint labels"):
        fit(
            other,
            tiny(tiny_bert, max_steps=2),
            storage_path=str(tmp_path),
            resume_from=two_worker_run.checkpoint_path,
        )


# --------------------------------------------------------------------------- registry round trip


def test_registered_note_model_round_trip(registered_models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from ml import registry
    from ml.experiment import NOTE_MODEL, load_note_predictor

    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(registered_models["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.configure()  # an earlier module may have pointed MLflow at its own registry
    loaded = load_note_predictor(NOTE_MODEL, "champion")
    trained = registered_models["note"]
    assert trained["registered"]["name"] == NOTE_MODEL
    assert loaded.labels == ["not_readmitted", "readmitted"] and loaded.positive == "readmitted"
    assert loaded.calibrator is not None
    combiner = loaded.extra["combiner"]
    assert "readmission-tabular v1" in combiner["fitted_on"]
    texts = ["Discharge Summary. Lives alone. Could not afford medications.", "Discharged home with family."]
    risk = loaded.risk(texts)
    assert risk.shape == (2,) and np.all((risk >= 0) & (risk <= 1))
    # the stacked model must not be worse than the tabular model alone (the combiner may weight the
    # note at ~0 when it adds nothing; measured: 0.77222 combined vs 0.77222 tabular, note 0.526)
    assert trained["test_auroc_combined"] >= trained["test_auroc_tabular"] - 0.005


def test_train_notes_cli_refuses_an_unknown_task(tmp_path: Path) -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "ml", "train-notes", "--task", "sentiment"],
        capture_output=True,
        text=True,
        env={**os.environ, "MEDISCALE_DATA_DIR": str(tmp_path)},
        timeout=120,
    )
    assert run.returncode == 2
    assert "unknown task 'sentiment'" in run.stderr


# --------------------------------------------------------------------------- behaviour (real model)


@pytest.fixture(scope="module")
def negex_model(ray_cluster: object, datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """all-MiniLM-L6-v2 fine-tuned for one epoch (82 steps) on NegEx reports 1-64 (the test
    reports unseen), at lr 2e-4 with sentences cut to 48 tokens (the median is 20).

    One epoch at lr 1e-4 was not enough: that model called "<name> denies [shortness of breath]
    at rest." Affirmed for 6 of 10 subjects (names and "The patient" alike). Two epochs at 1e-4
    (the earlier setting, ~140 s of training here) and one epoch at 2e-4 both get all 44 probes
    below right; at 2e-4 with three seeds the Negated probabilities of one probe differ by at most
    0.024 across names (limit 0.1), and accuracy on reports 81-120 is 0.97-0.98 (measured
    2026-11-29 with an in-process copy of the training loop).
    """
    from ml.text_tasks import negex_splits

    config = TextConfig(max_length=48, head_tokens=16, batch_size=16, epochs=1, learning_rate=2e-4,
                        cpus_per_worker=2)  # fmt: skip
    return fit(
        negex_splits(datasets_dir), config, storage_path=str(tmp_path_factory.mktemp("negex"))
    ).predictor


def test_denial_is_negated_and_a_report_is_affirmed(negex_model) -> None:
    texts = ["Patient denies [chest pain].", "Patient reports [chest pain].",
             "No evidence of [pneumonia] on chest x-ray.", "Chest x-ray shows [pneumonia]."]  # fmt: skip
    assert negex_model.predict(texts) == ["Negated", "Affirmed", "Negated", "Affirmed"]


NAMES = ["Mr. Smith", "Mrs. Garcia", "Ms. Nguyen", "Mr. Okafor", "John", "Maria Lopez", "Mr. Chen",
         "Mrs. Kowalski", "The patient", "Dr. Patel's patient"]  # fmt: skip


@pytest.mark.parametrize(
    ("template", "expected"),
    [("{name} denies [shortness of breath] at rest.", "Negated"),
     ("{name} reports [shortness of breath] at rest.", "Affirmed"),
     ("{name} has no [chest pain].", "Negated"),
     ("{name} complains of [chest pain].", "Affirmed")],
)  # fmt: skip
def test_the_patient_name_changes_nothing(negex_model, template: str, expected: str) -> None:
    texts = [template.format(name=name) for name in NAMES]
    assert negex_model.predict(texts) == [expected] * len(NAMES)
    proba = negex_model.predict_proba(texts)[:, negex_model.labels.index("Negated")]
    assert proba.max() - proba.min() < 0.1, dict(zip(NAMES, proba.round(3), strict=True))
