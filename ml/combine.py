"""One risk from the tabular and the note model: logistic stacking on their log-odds.

The weights are fitted on the validation split when the note model is trained (the note model
is trained after the tabular one, so both risks exist for the same validation stays), and are
stored with the note model. Both inputs are calibrated probabilities, so the weights still make
sense for another version of the tabular model; the version they were fitted against is kept
for the record. A stay without a note gets the tabular risk alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


@dataclass
class RiskCombiner:
    """risk = sigmoid(w_tab * logit(tabular) + w_note * logit(note) + bias)."""

    w_tabular: float = 1.0
    w_note: float = 1.0
    bias: float = 0.0
    fitted_on: str = "default"  # what the weights were fitted on (model versions, split, rows)

    @classmethod
    def fit(cls, tabular: np.ndarray, note: np.ndarray, y: np.ndarray, fitted_on: str) -> RiskCombiner:
        from sklearn.linear_model import LogisticRegression

        x = np.column_stack([logit(tabular), logit(note)])
        model = LogisticRegression(C=1.0).fit(x, np.asarray(y, dtype=int))
        (w_tab, w_note), bias = model.coef_[0], model.intercept_[0]
        return cls(float(w_tab), float(w_note), float(bias), fitted_on)

    def __call__(self, tabular: np.ndarray, note: np.ndarray) -> np.ndarray:
        z = self.w_tabular * logit(tabular) + self.w_note * logit(note) + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict:
        return asdict(self)
