"""Note-model inference runtimes (ml/note_runtime.py): int8 torch and ONNX Runtime score like the fp32
torch model, in the same order, through the same calibrator, and survive a save/load round trip.

A tiny random BERT (tests/conftest.py `tiny_bert`), no Ray. Tolerances, on probabilities:
ONNX (fp32) within 1e-4 of torch; the int8 runtimes within 0.05 (random weights, 2 layers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.note_runtime import RUNTIMES, check_runtime
from ml.tabular import Calibrator
from ml.text import NotePredictor, TextConfig, load_model, load_tokenizer

TOLERANCE = {"torch": 0.0, "onnx": 1e-4, "int8": 0.05, "onnx-int8": 0.05}
TEXTS = [
    "Patient denies chest pain.",
    "Discharge summary. 78 y/o F with CHF, COPD and CKD stage 3, admitted with decompensated heart "
    "failure. Diuresed with IV furosemide. Creatinine 1.9. Lives alone; follow-up in 7 days. " * 3,
    "Stable.",
    "Reports fever and cough for three days; chest X-ray with a right lower lobe infiltrate.",
    "",
    "Home with services. Follow up with cardiology in two weeks.",
    "Sodium 131, BNP 1450, SpO2 91% on room air at discharge; readmitted twice this year.",
]


@pytest.fixture(scope="module")
def predictor(tiny_bert: Path) -> NotePredictor:
    import torch

    config = TextConfig(model=str(tiny_bert), max_length=48, head_tokens=16)
    model = load_model(str(tiny_bert), ["stay", "readmit"])
    torch.manual_seed(0)
    with torch.no_grad():  # larger than the 0.02 init, so that the texts' probabilities spread out
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(0.0, 0.2)
    return NotePredictor(
        model,
        load_tokenizer(str(tiny_bert)),
        ["stay", "readmit"],
        config,
        positive="readmit",
        calibrator=Calibrator("platt", coef=1.5, intercept=-0.2),
    )


@pytest.fixture(scope="module")
def runtimes(predictor: NotePredictor) -> dict[str, NotePredictor]:
    return {name: predictor.with_runtime(name, threads=1) for name in RUNTIMES}


def test_runtime_names() -> None:
    assert RUNTIMES == ("torch", "int8", "onnx", "onnx-int8")
    assert check_runtime("onnx") == "onnx"


@pytest.mark.parametrize("name", RUNTIMES)
def test_each_runtime_scores_like_torch(predictor, runtimes, name: str) -> None:
    want = predictor.predict_proba(TEXTS, batch_size=3)
    got = runtimes[name].predict_proba(TEXTS, batch_size=3)
    assert runtimes[name].runtime == name
    assert got.shape == want.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(got, want, atol=TOLERANCE[name], rtol=0)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    assert np.ptp(want[:, 1]) > 0.1  # the texts score apart, so closeness means something
    # the calibrator applies alike: risk is calibrator(raw) for every runtime
    np.testing.assert_allclose(
        runtimes[name].risk(TEXTS, batch_size=3), predictor.calibrator(got[:, 1]), atol=1e-6
    )


@pytest.mark.parametrize("name", RUNTIMES)
def test_mixed_lengths_keep_their_order_and_ignore_padding(runtimes, name: str) -> None:
    """Batched (sorted by length, padded per batch) = each text alone, row for row."""
    runtime = runtimes[name]
    together = runtime.predict_proba(TEXTS, batch_size=4)
    alone = np.vstack([runtime.predict_proba([text], batch_size=1) for text in TEXTS])
    # int8: activations are quantized with one scale per batch (padding included), so the other
    # rows of a batch move a row a little
    atol = max(TOLERANCE[name], 1e-5)
    np.testing.assert_allclose(together, alone, atol=atol, rtol=0)
    reversed_ = runtime.predict_proba(TEXTS[::-1], batch_size=4)[::-1]
    np.testing.assert_allclose(reversed_, together, atol=atol, rtol=0)


@pytest.mark.parametrize("name", RUNTIMES)
def test_empty_input(runtimes, name: str) -> None:
    assert runtimes[name].predict_proba([]).shape == (0, 2)
    assert runtimes[name].risk([]).shape == (0,)


def test_conversion_leaves_the_original_unchanged(predictor, runtimes) -> None:
    """The fp32 model stays in eval mode and unquantized (the ONNX export must not turn dropout on)."""
    assert predictor.runtime == "torch"
    assert not predictor.model.training
    first = predictor.predict_proba(TEXTS)
    np.testing.assert_array_equal(predictor.predict_proba(TEXTS), first)
    assert type(predictor.model.bert.encoder.layer[0].output.dense).__name__ == "Linear"
    assert runtimes["int8"].model is predictor.model  # `model` is always the fp32 one (for save)


def test_onnx_runs_on_the_threads_asked(runtimes) -> None:
    options = runtimes["onnx"]._forward.session.get_session_options()
    assert options.intra_op_num_threads == 1


@pytest.mark.parametrize("name", RUNTIMES)
def test_load_round_trip(predictor, tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    folder = predictor.save(tmp_path_factory.mktemp("note-predictor"))
    loaded = NotePredictor.load(folder, runtime=name)
    assert loaded.runtime == name
    assert loaded.calibrator == predictor.calibrator
    np.testing.assert_allclose(
        loaded.predict_proba(TEXTS), predictor.predict_proba(TEXTS), atol=TOLERANCE[name], rtol=0
    )
    # a loaded, converted predictor saves the fp32 weights again
    again = NotePredictor.load(loaded.save(tmp_path_factory.mktemp("again")))
    np.testing.assert_allclose(again.predict_proba(TEXTS), predictor.predict_proba(TEXTS), atol=1e-6)


def test_unknown_runtime_is_a_clear_error(predictor, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown note runtime 'fp16': choose one of torch, int8, onnx"):
        predictor.with_runtime("fp16")  # type: ignore[arg-type]
    # refused before anything is read: the folder does not even exist
    with pytest.raises(ValueError, match="unknown note runtime 'ONNX'"):
        NotePredictor.load(tmp_path / "missing", runtime="ONNX")  # type: ignore[arg-type]
