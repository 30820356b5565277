"""The MediScale Ray Serve application: one calibrated readmission risk per patient record.

Deployments, composed by passing handles to constructors:

    Router (FastAPI ingress, CombinedScorer) -> TabularScorer  (batched by arrival: XGBoost over
                                                               structured data and note concepts,
                                                               calibrated, factors)
                                             -> NoteScorer     (batched by arrival: an optional
                                                               opaque note model, when a variant
                                                               names one)

What each deployment computes is a plain function of serve/scoring.py (features, tabular risk,
combination, Prediction, store row); the deployments only move typed results between them.

- Router: validates the record, assigns a variant (champion / challenger) by a hash of the
  patient id (sticky) or else the request id, asks both scorers for that variant's risks and combines them
  in-process (serve/scorers.py CombinedScorer: one hop per scorer, not two),
  commits the prediction to the store before answering, and optionally scores the other
  variant in the background (shadow) without the client waiting for it. Its `user_config`
  (variants with weights and model references, shadow, alias refresh, risk bands) is hot:
  `reconfigure` resolves the references, loads the new versions into the scorers, and only
  then switches, so requests in flight finish on the old versions and none fail.
- Model references are MLflow aliases (`champion`) or version numbers. Aliases are resolved
  again every `alias_refresh_s`, so `python -m ml registry promote` reaches a running service.
- Scorers load versions on demand and keep the last few, so a switch never unloads a model a
  request still uses. Loading goes through an injected loader (the MLflow registry by default)
  so tests and other registries can swap it.
- Nothing blocks the event loop: model compute and store writes run in threads.

`serve run serve.app:app` uses the defaults; `serve run serve/config.yaml` (or `serve deploy`)
carries every setting.

Modules: settings.py (arguments and user_configs), loading.py (model loader and cache),
scorers.py (the model deployments), router.py (the HTTP ingress), scoring.py (the pure
functions they all call); this file builds the graph.
"""

from __future__ import annotations

from ray import serve

from serve.router import Router, assignment_point, pick_variant
from serve.scorers import CombinedScorer, NoteScorer, TabularScorer
from serve.settings import (
    NOTE_MODEL,
    TABULAR_MODEL,
    AppArgs,
    NoteBatchConfig,
    RouterConfig,
    VariantSpec,
)

__all__ = [
    "NOTE_MODEL",
    "TABULAR_MODEL",
    "AppArgs",
    "CombinedScorer",
    "NoteBatchConfig",
    "NoteScorer",
    "Router",
    "RouterConfig",
    "TabularScorer",
    "VariantSpec",
    "app",
    "assignment_point",
    "build_app",
    "pick_variant",
]


def build_app(args: dict | None = None) -> serve.Application:
    """The application graph; `args` are AppArgs (serve/config.yaml's `args:`)."""
    settings = AppArgs.model_validate(args or {})
    tabular = TabularScorer.bind(settings.tabular_model, settings.data_dir)
    note = NoteScorer.bind(settings.note_model, settings.data_dir, None, settings.note_runtime)
    return Router.bind(tabular, note, settings.model_dump())


app = build_app()
