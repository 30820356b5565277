"""The note model's MLflow pyfunc, logged as "models from code": MLflow stores this file with the
model instead of a pickled object, so loading it unpickles nothing. Serving does not use it (it
loads the checked predictor folder itself: ml.registry.load_verified)."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd


class NotePyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc face of NotePredictor: a `text` column in; risk (binary tasks) or label out."""

    def load_context(self, context: Any) -> None:
        from ml.text import NotePredictor

        self.predictor = NotePredictor.load(context.artifacts["predictor"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.score(self.predictor, model_input)

    @staticmethod
    def score(predictor: Any, model_input: pd.DataFrame) -> pd.DataFrame:
        texts = model_input["text"].fillna("").astype(str).tolist()
        proba = predictor.predict_proba(texts)
        out = pd.DataFrame(
            proba, columns=[f"p_{label}" for label in predictor.labels], index=model_input.index
        )
        out.insert(0, "label", [predictor.labels[i] for i in proba.argmax(axis=1)])
        if predictor.positive is not None:
            raw = proba[:, predictor.labels.index(predictor.positive)]
            out.insert(0, "risk", predictor.calibrator(raw) if predictor.calibrator is not None else raw)
        return out


# MLflow runs this file under a generated module name to get the model; a plain import
# (`ml.pyfunc_notes`) only wants the class.
if __name__ != "ml.pyfunc_notes":
    mlflow.models.set_model(NotePyfunc())
