"""The tabular model's MLflow pyfunc, logged as "models from code": MLflow stores this file with
the model instead of a pickled object, so loading it unpickles nothing. Serving does not use it
(it loads the checked predictor folder itself: ml.registry.load_verified)."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd


class TabularPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc face of TabularPredictor: DataFrame of features in, calibrated risk out."""

    def load_context(self, context: Any) -> None:
        from ml.tabular import TabularPredictor

        self.predictor = TabularPredictor.load(context.artifacts["predictor"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        raw = self.predictor.predict_raw(model_input)
        return pd.DataFrame(
            {"risk": self.predictor.calibrator(raw), "risk_uncalibrated": raw}, index=model_input.index
        )


# MLflow runs this file under a generated module name to get the model; a plain import
# (`ml.pyfunc_tabular`) only wants the class.
if __name__ != "ml.pyfunc_tabular":
    mlflow.models.set_model(TabularPyfunc())
