"""One client's note must never fail another's request: a NoteScorer replica batches concurrent
calls from many clients into one forward pass (serve/batching.py), so a note the model cannot score
has to fail its own call only. The note model is the real registered one, made to fail on one
marked note (as a tokenizer or model crash would)."""

from __future__ import annotations

import sys

import pytest
import ray.cloudpickle


class Poisoned:
    """The real note model, failing on any pass that holds the marked note."""

    def __init__(self, predictor):
        self.predictor = predictor

    def risk(self, texts, batch_size):
        if any("POISON" in t for t in texts):
            raise ValueError("cannot score")
        return self.predictor.risk(texts, batch_size)


class PoisonedLoader:
    """The registry loader, built in the replica (it configures MLflow there), poisoning notes."""

    def __init__(self, home: str):
        self.home = home
        self._registry = None

    def _loader(self):
        from serve.loading import RegistryLoader

        if self._registry is None:
            self._registry = RegistryLoader(self.home)
        return self._registry

    def resolve(self, name, ref):
        return self._loader().resolve(name, ref)

    def tabular(self, name, version):
        return self._loader().tabular(name, version)

    def note(self, name, version):
        return Poisoned(self._loader().note(name, version))


def test_one_failing_note_fails_only_its_own_call(registered_models: dict) -> None:
    from ray import serve

    from serve.scorers import NoteFailure, NoteScorer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    home = str(registered_models["home"])
    deployment = NoteScorer.options(
        name="PoisonNoteScorer",
        ray_actor_options={"num_cpus": 0.25},
        max_ongoing_requests=32,  # Serve's default (5) would let only 5 of the 12 calls in at once
        user_config={"max_batch_size": 16},
    )
    try:
        handle = serve.run(
            deployment.bind("readmission-notes", home, PoisonedLoader(home)),
            name="note-isolation",
            route_prefix=None,
        )
        texts = [f"Patient {i} reports chest pain; lives alone." for i in range(12)]
        texts[5] = "POISON note"
        calls = [handle.score.remote(("1", t, "champion")) for t in texts]
        together = [c.result(timeout_s=120) for c in calls]
        # the first call runs alone (and loads the model); the rest arrive meanwhile: one batch
        shared = handle.batch_stats.remote().result(timeout_s=60)
        alone = [handle.score.remote(("1", t, "champion")).result(timeout_s=60) for t in texts[:2]]
    finally:
        serve.shutdown()
    assert shared.items == 12 and shared.batches <= 3, shared  # the poisoned note had company
    assert isinstance(together[5], NoteFailure), together[5]
    assert "POISON" not in str(together[5]) and "ValueError" in str(together[5])
    others = [r for i, r in enumerate(together) if i != 5]
    assert all(isinstance(r, float) and 0 <= r <= 1 for r in others), others
    assert together[:2] == pytest.approx(alone, abs=1e-4)  # the others' answers are unchanged
