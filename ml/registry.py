"""MLflow tracking and model registry: where models are logged, versioned and picked for serving.

Every model (XGBoost tabular now, a BERT note model later) is an MLflow pyfunc model registered
under a name such as `readmission-tabular`. Serving never asks for a version number, only for an
alias. Registering never exposes a model to patients: a new version is tagged `approval: pending`
and no alias moves. A named person then runs `approve` (who, when, why: version tags, an
append-only `approval_history` model tag, and the CLI's `approval` row in the audit table), which
moves `challenger` to it; `reject` blocks a version for good. `champion` moves only on `promote`
(approved versions only) or `rollback`. The one exception is the very first version of a model
(no champion yet): it becomes `champion` (and `challenger`, the same model) tagged
`approval: bootstrap`, so that a fresh install can serve something.

The champion history lives in a registered-model tag, not in this process, so a rollback works
from any process or machine that reaches the same registry.

Nothing here runs at import. The tracking URI comes from `MLFLOW_TRACKING_URI` when set (a shared
server; its credentials, if any, also come only from the environment, e.g.
`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`), else a sqlite file in the data dir.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from data.config import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

log = logging.getLogger(__name__)
T = TypeVar("T")

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
# Registered-model tag values are capped (5000 chars in the SQL stores): keep the newest entries only.
HISTORY_LIMIT = 100
# Approval: a model-version tag (`pending` on registration) and an append-only registered-model tag.
APPROVAL_TAG = "approval"
PENDING, APPROVED, REJECTED, BOOTSTRAP = "pending", "approved", "rejected", "bootstrap"
EXPOSABLE = (APPROVED, BOOTSTRAP)  # the states `promote` accepts
APPROVAL_KEYS = (APPROVAL_TAG, "approved_by", "approved_at", "approval_reason")
REJECTION_KEYS = ("rejected_by", "rejected_at", "rejection_reason")
APPROVALS_TAG = "approval_history"
APPROVALS_MAX_CHARS = 4900  # registered-model tag values are String(5000) in the SQL stores
APPROVER_MAX, REASON_MAX = 128, 500
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"

_state: dict[str, str | None] = {"uri": None}
# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI (for child processes); these are the
# local defaults this process put there, which must not then count as "set by the environment".
_own_defaults: set[str] = set()


class RegistryError(ValueError):
    """A registry request that cannot be met (unknown model, version or alias; nothing to roll back)."""


@dataclass
class VersionInfo:
    """One registered model version, as the CLI and the serving layer need it."""

    name: str
    version: str
    run_id: str
    aliases: list[str] = field(default_factory=list)
    created: str = ""
    tags: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- tracking set-up


def _env_uri() -> str | None:
    uri = Settings.from_env().tracking_uri
    return None if uri in _own_defaults else uri


def _data_dir(settings: Settings | None) -> Path:
    return (settings or Settings.from_env()).data_dir.resolve()


def tracking_uri(settings: Settings | None = None) -> str:
    """The tracking/registry URI: a shared server named in the environment wins over the local db."""
    return _env_uri() or f"sqlite:///{_data_dir(settings)}/{DB_FILE}"


def configure(settings: Settings | None = None) -> str:
    """Point MLflow (tracking and registry) at `tracking_uri()`; safe to call any number of times."""
    import mlflow

    uri = tracking_uri(settings)
    if _env_uri() is None:
        _data_dir(settings).mkdir(parents=True, exist_ok=True)
        _own_defaults.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if _state["uri"] != uri:
        log.info("MLflow tracking and registry at %s", uri)
    _state["uri"] = uri
    return uri


def saved_state() -> tuple[str | None, frozenset[str]]:
    """This module's configuration (the URI `configure` chose, the local defaults it exported), for
    `restore_state`. Tests point the registry at data dirs of their own and must put it back; MLflow's
    own URIs and their environment variables are the caller's to save."""
    return _state["uri"], frozenset(_own_defaults)


def restore_state(saved: tuple[str | None, frozenset[str]]) -> None:
    """Put back what `saved_state` returned."""
    _state["uri"] = saved[0]
    _own_defaults.clear()
    _own_defaults.update(saved[1])


def _client() -> MlflowClient:
    """A client on the configured store; configures from the environment on first use."""
    from mlflow import MlflowClient

    if _state["uri"] is None:
        configure()
    return MlflowClient()


def experiment(name: str, settings: Settings | None = None) -> str:
    """Get or create the experiment `name` and return its id.

    With the local sqlite default the artifacts go beside the db (`<data_dir>/mlartifacts/<name>`)
    instead of MLflow's `./mlruns` in whatever folder the process happens to run; a remote server
    chooses its own artifact location.
    """
    configure(settings)
    client = _client()
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            log.warning("experiment %r was deleted; restoring it", name)
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    location = None
    if _env_uri() is None:
        folder = _data_dir(settings) / ARTIFACTS_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.as_uri()
    experiment_id = client.create_experiment(name, artifact_location=location)
    log.info("created experiment %r (id %s)", name, experiment_id)
    return experiment_id


# --------------------------------------------------------------------------- lookups


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _known_names(client: MlflowClient) -> list[str]:
    names: list[str] = []
    token = None
    while True:
        page = client.search_registered_models(max_results=100, page_token=token)
        names.extend(m.name for m in page)
        token = page.token
        if not token:
            return sorted(names)


def _model(client: MlflowClient, name: str) -> RegisteredModel:
    """The registered model, or a RegistryError that lists what does exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        known = ", ".join(_known_names(client)) or "none"
        raise RegistryError(f"unknown model {name!r}; registered models: {known}") from None


def _version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    """A version of an existing model, or a RegistryError naming the model and its versions."""
    from mlflow.exceptions import MlflowException

    _model(client, name)
    text = str(version).strip()
    if text.isdigit():
        try:
            return client.get_model_version(name, text)
        except MlflowException as exc:
            if not _is_missing(exc):
                raise
    numbers = sorted(int(v.version) for v in _versions(client, name))
    known = ", ".join(str(n) for n in numbers) or "none"
    raise RegistryError(f"unknown version {version!r} of model {name!r}; versions: {known}")


def _aliases(model: RegisteredModel) -> dict[str, str]:
    # The SQL store returns versions as ints here, the REST store as strings.
    return {alias: str(v) for alias, v in (model.aliases or {}).items()}


def _versions(client: MlflowClient, name: str | None = None) -> list[ModelVersion]:
    """Every version (of one model, or of all), paging through the store."""
    escaped = name.replace("'", "\\'") if name is not None else None
    where = f"name = '{escaped}'" if escaped is not None else None
    found: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(where, max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _info(client: MlflowClient, mv: ModelVersion, aliases: dict[str, str] | None = None) -> VersionInfo:
    """VersionInfo with aliases read from the registered model, the one place they are always current."""
    if aliases is None:
        aliases = _aliases(client.get_registered_model(mv.name))
    version = str(mv.version)
    created = datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, tz=UTC).isoformat(
        timespec="seconds"
    )
    return VersionInfo(
        name=mv.name,
        version=version,
        run_id=mv.run_id or "",
        aliases=sorted(a for a, v in aliases.items() if v == version),
        created=created,
        tags=dict(mv.tags or {}),
    )


def _list_tag(model: RegisteredModel, tag: str) -> list:
    """A model tag that holds a JSON list (champion history, approvals); [] when absent."""
    raw = (model.tags or {}).get(tag)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"model {model.name!r} has a corrupt {tag} tag (not JSON)") from exc
    return value if isinstance(value, list) else []


def _history(model: RegisteredModel) -> list[str]:
    return [str(v) for v in _list_tag(model, HISTORY_TAG)]


# --------------------------------------------------------------------------- registry API


def _source_uri(client: MlflowClient, run_id: str, artifact_path: str) -> str:
    """The URI to register: the run's LoggedModel of that name (MLflow 3), else the run artifact path.

    MLflow 3 stores `log_model(name=...)` output as a LoggedModel outside the run's artifacts;
    `runs:/<run>/<name>` still resolves but only through a fallback that logs a warning, so the
    LoggedModel is looked up and registered directly when there is one.
    """
    run = client.get_run(run_id)
    escaped = artifact_path.replace("'", "\\'")
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{escaped}'",
        max_results=1,
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
    )
    if models:
        return models[0].model_uri
    return f"runs:/{run_id}/{artifact_path}"


def register(
    run_id: str,
    artifact_path: str,
    name: str,
    tags: dict[str, str] | None = None,
    await_seconds: int = 60,
) -> VersionInfo:
    """Register the model logged in a run as a new version of `name`, tagged `approval: pending`:
    no alias moves, so nothing new reaches patients until someone runs `approve`.

    The one exception: the first version of a model (no champion yet) becomes champion (and
    challenger, the same model), tagged `approval: bootstrap`, so a fresh install can serve.
    `tags` may not set the approval tags (only `approve` / `reject` do).
    """
    import mlflow

    reserved = sorted(set(tags or {}) & {*APPROVAL_KEYS, *REJECTION_KEYS})
    if reserved:
        raise RegistryError(f"tags {reserved} are set by approve/reject only, not at registration")
    client = _client()
    source = _source_uri(client, run_id, artifact_path)
    tags = {**(tags or {}), APPROVAL_TAG: PENDING}  # with the version itself: never untagged
    mv = mlflow.register_model(source, name, await_registration_for=await_seconds, tags=tags)
    version = str(mv.version)
    record_digest(name, version)  # refuses (and deletes) a version whose predictor holds a pickle
    if CHAMPION not in _aliases(client.get_registered_model(name)):
        # Bootstrap: the documented exception to approval, recorded as such.
        client.set_model_version_tag(name, version, APPROVAL_TAG, BOOTSTRAP)
        _append_approval(client, name, version, BOOTSTRAP, "register", "first version of the model")
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_registered_model_alias(name, CHALLENGER, version)
        log.info("%s v%s is the first version: champion (approval: bootstrap)", name, version)
    else:
        log.info(
            "%s v%s registered, pending approval (from %s): `python -m ml registry approve %s %s "
            "--by NAME --reason TEXT` exposes it as challenger",
            name, version, source, name, version,
        )  # fmt: skip
    return _info(client, client.get_model_version(name, version))


def promote(name: str, version: str | int) -> VersionInfo:
    """Make `version` the champion, remembering the previous one in the model's tags for rollback.

    Only an approved (or bootstrap) version can be promoted: a RegistryError says to approve first.
    """
    client = _client()
    mv = _version(client, name, version)
    target = str(mv.version)
    model = client.get_registered_model(name)
    previous = _aliases(model).get(CHAMPION)
    state = (mv.tags or {}).get(APPROVAL_TAG)
    if previous != target and state not in EXPOSABLE:
        how = (
            "it was rejected and cannot be approved; register a new version"
            if state == REJECTED
            else f"approve it first: python -m ml registry approve {name} {target} --by NAME --reason TEXT"
        )
        raise RegistryError(f"{name} v{target} is not approved (approval: {state or 'none'}): {how}")
    if previous is not None and previous != target:
        # History first: if the alias move then fails, rollback lands on the current champion (a no-op)
        # rather than losing the way back.
        history = [*_history(model), previous][-HISTORY_LIMIT:]
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_alias(name, CHAMPION, target)
    log.info("%s champion: v%s -> v%s", name, previous, target)
    return _info(client, mv)


def rollback(name: str) -> VersionInfo:
    """Return champion to the version it had before the last promotion (popping the history)."""
    client = _client()
    model = _model(client, name)
    history = _history(model)
    if not history:
        raise RegistryError(f"model {name!r} has no earlier champion to roll back to")
    target = history[-1]
    mv = _version(client, name, target)
    current = _aliases(model).get(CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))
    log.info("%s champion rolled back: v%s -> v%s", name, current, target)
    return _info(client, mv)


def _checked(approver: str, reason: str) -> tuple[str, str]:
    who, why = (approver or "").strip(), (reason or "").strip()
    if not who:
        raise RegistryError("an approver is required (--by): a named person, not an empty string")
    if not why:
        raise RegistryError("a reason is required (--reason)")
    if len(who) > APPROVER_MAX or len(why) > REASON_MAX:
        raise RegistryError(f"approver at most {APPROVER_MAX} characters, reason at most {REASON_MAX}")
    return who, why


def approvals(model: RegisteredModel) -> list[dict[str, Any]]:
    """The model's approval history (oldest first): version, decision, by, at, reason."""
    return [v for v in _list_tag(model, APPROVALS_TAG) if isinstance(v, dict)]


def _append_approval(
    client: MlflowClient, name: str, version: str, decision: str, by: str, reason: str, **extra: str
) -> dict[str, Any]:
    """Append one entry to the model's approval history, keeping the newest that fit in the tag
    (the complete record is the audit table's `approval` rows)."""
    entry = {
        "version": version,
        "decision": decision,
        "by": by,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reason": reason[:200],
        **extra,
    }
    history = [*approvals(client.get_registered_model(name)), entry][-HISTORY_LIMIT:]
    while len(history) > 1 and len(json.dumps(history)) > APPROVALS_MAX_CHARS:
        history = history[1:]
    client.set_registered_model_tag(name, APPROVALS_TAG, json.dumps(history))
    return entry


def approve(name: str, version: str | int, approver: str, reason: str) -> VersionInfo:
    """A named person approves a version for patients: tags it (`approval: approved`, who, when,
    why), appends to the model's approval history, then moves `challenger` to it.

    Refuses unknown versions, an empty approver or reason, and rejected versions.
    """
    who, why = _checked(approver, reason)
    client = _client()
    mv = _version(client, name, version)
    target, tags = str(mv.version), dict(mv.tags or {})
    if tags.get(APPROVAL_TAG) == REJECTED:
        raise RegistryError(
            f"{name} v{target} was rejected by {tags.get('rejected_by', '?')} at "
            f"{tags.get('rejected_at', '?')} ({tags.get('rejection_reason', '')}): a rejected version "
            "cannot be approved; register a new version"
        )
    # Audit before exposure: if the alias move fails, the record still says who asked for it.
    entry = _append_approval(client, name, target, APPROVED, who, why)
    for key, value in zip(APPROVAL_KEYS, (APPROVED, who, entry["at"], why), strict=True):
        client.set_model_version_tag(name, target, key, value)
    client.set_registered_model_alias(name, CHALLENGER, target)
    log.info("%s v%s approved by %s (%s): now %s", name, target, who, why, CHALLENGER)
    return _info(client, client.get_model_version(name, target))


def reject(name: str, version: str | int, approver: str, reason: str) -> VersionInfo:
    """A named person rejects a version: it can then never be approved or promoted. A rejected
    current challenger stops being exposed (`challenger` moves back to the champion's version);
    the champion itself cannot be rejected (promote another version or roll back first)."""
    who, why = _checked(approver, reason)
    client = _client()
    mv = _version(client, name, version)
    target = str(mv.version)
    aliases = _aliases(client.get_registered_model(name))
    if aliases.get(CHAMPION) == target:
        raise RegistryError(
            f"{name} v{target} is the {CHAMPION}: promote another version or roll back before rejecting it"
        )
    exposed = aliases.get(CHALLENGER) == target
    extra = {"challenger_to": aliases.get(CHAMPION) or "none"} if exposed else {}
    entry = _append_approval(client, name, target, REJECTED, who, why, **extra)
    client.set_model_version_tag(name, target, APPROVAL_TAG, REJECTED)
    for key, value in zip(REJECTION_KEYS, (who, entry["at"], why), strict=True):
        client.set_model_version_tag(name, target, key, value)
    if exposed and CHAMPION in aliases:
        client.set_registered_model_alias(name, CHALLENGER, aliases[CHAMPION])
        log.info("%s: %s back to the champion v%s", name, CHALLENGER, aliases[CHAMPION])
    elif exposed:
        client.delete_registered_model_alias(name, CHALLENGER)
    log.info("%s v%s rejected by %s (%s)", name, target, who, why)
    return _info(client, client.get_model_version(name, target))


def newest_version(name: str) -> VersionInfo | None:
    """The highest-numbered version of a model, or None when the model has none (or is unknown)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise
    found = _versions(client, name)
    if not found:
        return None
    return _info(client, max(found, key=lambda v: int(v.version)), _aliases(model))


def set_alias(name: str, alias: str, version: str | int) -> None:
    """Point any other alias at an existing version: `champion` moves only through promote/rollback
    and `challenger` only through approve/reject (both audited)."""
    if alias in (CHAMPION, CHALLENGER):
        how = "promote/rollback" if alias == CHAMPION else "approve (python -m ml registry approve)"
        raise RegistryError(f"{alias!r} moves only through {how}, not set_alias")
    client = _client()
    mv = _version(client, name, version)
    client.set_registered_model_alias(name, alias, str(mv.version))
    log.info("%s@%s -> v%s", name, alias, mv.version)


def version_for(name: str, alias: str) -> str:
    """The version an alias points at, or a RegistryError listing the model's aliases."""
    client = _client()
    aliases = _aliases(_model(client, name))
    if alias not in aliases:
        known = ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())) or "none"
        raise RegistryError(f"model {name!r} has no alias {alias!r}; aliases: {known}")
    return aliases[alias]


def resolve(name: str, ref: str | int) -> str:
    """The version a reference names: a version number as is (checked), an alias looked up."""
    text = str(ref).strip()
    if text.isdigit():
        return str(_version(_client(), name, text).version)
    return version_for(name, text)


def check_exposable(name: str, version: str | int) -> None:
    """RegistryError unless the version was approved (or is a model's bootstrap version): a
    version number pinned in a serving config must not skip the approval step."""
    mv = _version(_client(), name, version)
    state = (mv.tags or {}).get(APPROVAL_TAG)
    if state not in EXPOSABLE:
        raise RegistryError(
            f"{name} v{mv.version} is not approved for patients (approval: {state or 'none'}): "
            f"python -m ml registry approve {name} {mv.version} --by WHO --reason WHY"
        )


def load_version(name: str, version: str | int) -> Any:
    """The pyfunc model of one fixed version. Loading it runs the model's code file (or unpickles an
    older version) from the artifact store: serving uses `load_verified` instead."""
    import mlflow

    checked = _version(_client(), name, version).version
    return mlflow.pyfunc.load_model(f"models:/{name}/{checked}")


def list_models() -> list[VersionInfo]:
    """Every version of every registered model, models by name, versions newest first."""
    client = _client()
    by_name: dict[str, list[ModelVersion]] = {}
    for mv in _versions(client):
        by_name.setdefault(mv.name, []).append(mv)
    infos: list[VersionInfo] = []
    for name in sorted(by_name):
        aliases = _aliases(client.get_registered_model(name))
        for mv in sorted(by_name[name], key=lambda v: int(v.version), reverse=True):
            infos.append(_info(client, mv, aliases))
    return infos


def model_uri(name: str, alias: str = CHAMPION) -> str:
    """`models:/name@alias`, checked first so a typo fails here rather than deep inside a loader."""
    version_for(name, alias)
    return f"models:/{name}@{alias}"


def load(name: str, alias: str = CHAMPION) -> Any:
    """The pyfunc model behind an alias (the champion unless told otherwise); runs the model's code
    from the artifact store, like `load_version`: not for serving."""
    import mlflow

    uri = model_uri(name, alias)
    log.info("loading %s", uri)
    return mlflow.pyfunc.load_model(uri)


def format_table(infos: list[VersionInfo]) -> str:
    """A fixed-width table (model, version, aliases, approval, run, created) for the command line
    (approval `-`: registered before approvals existed)."""
    header = ("model", "version", "aliases", "approval", "run", "created")
    rows = [
        (
            i.name,
            i.version,
            ",".join(i.aliases) or "-",
            i.tags.get(APPROVAL_TAG) or "-",
            i.run_id or "-",
            i.created,
        )
        for i in infos
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- artifact integrity
# Serving never unpickles: it loads the predictor's own files (no pickles) after checking them
# against the digest recorded here at registration, so writing the artifact store is not enough
# to run code in a replica (ml/artifacts.py).

DIGEST_TAG = "artifact_sha256"  # version tag: ml.artifacts.digest of the predictor folder
PATH_TAG = "artifact_path"  # version tag: that folder's path inside the model's artifacts
PREDICTOR_ARTIFACT = "predictor"  # the pyfunc artifact holding the predictor's own files


def _inside(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts


def _predictor_path(name: str, version: str) -> str | None:
    """Where the version's pyfunc keeps its `predictor` artifact (read from its MLmodel), or None."""
    from mlflow.models import Model

    flavor = Model.load(f"models:/{name}/{version}").flavors.get("python_function") or {}
    return ((flavor.get("artifacts") or {}).get(PREDICTOR_ARTIFACT) or {}).get("path")


def _download(name: str, version: str, path: str, dst: str | Path) -> Path:
    import mlflow

    uri = f"models:/{name}/{version}/{path}"
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))


def record_digest(name: str, version: str | int) -> str | None:
    """Tag a new version with its predictor folder's digest and path, which the loaders check.

    A predictor folder holding a pickle is refused: RegistryError, and the version is deleted. A
    model without a `predictor` artifact (not one of ours) gets no digest, so no safe loader
    will load it.
    """
    import tempfile

    from ml.artifacts import digest, find_pickles

    client, version = _client(), str(version)
    path = _predictor_path(name, version)
    if path is None:
        supplied = client.get_model_version(name, version).tags or {}
        for tag in (DIGEST_TAG, PATH_TAG):
            if tag in supplied:  # only registration computes these
                client.delete_model_version_tag(name, version, tag)
        log.warning("%s v%s has no %r artifact: no digest recorded", name, version, PREDICTOR_ARTIFACT)
        return None
    if not _inside(path):
        client.delete_model_version(name, version)
        raise RegistryError(
            f"{name} v{version} refused and deleted: artifact path {path!r} is outside the model"
        )
    with tempfile.TemporaryDirectory(prefix="mediscale-register-") as tmp:
        folder = _download(name, version, path, tmp)
        pickles = find_pickles(folder)
        value = digest(folder)
    if pickles:
        client.delete_model_version(name, version)
        raise RegistryError(
            f"{name} v{version} refused and deleted: its {path} holds pickle file(s) {pickles[:5]}; "
            "save models without pickles (XGBoost JSON/UBJSON, safetensors)"
        )
    client.set_model_version_tag(name, version, DIGEST_TAG, value)
    client.set_model_version_tag(name, version, PATH_TAG, path)
    log.info("%s v%s: %s %s (%s)", name, version, DIGEST_TAG, value[:12], path)
    return value


def load_predictor_folder(name: str, version: str | int, dst: str | Path | None = None) -> Path:
    """A private copy of the version's predictor folder, checked: for TabularPredictor.load or
    NotePredictor.load, never a pyfunc (that would unpickle or run code from the store).

    UnsafeModel when the version has no recorded digest, the folder holds a pickle, or its digest
    is not the one recorded at registration. `dst` (else a new temp dir) is the caller's to remove.
    """
    import tempfile

    from ml.artifacts import UnsafeModel, digest, find_pickles

    mv = _version(_client(), name, version)
    version = str(mv.version)
    recorded, path = (mv.tags or {}).get(DIGEST_TAG), (mv.tags or {}).get(PATH_TAG)
    if not recorded or not path:
        raise UnsafeModel(name, version, "registered without an artifact digest; re-register it")
    if not _inside(path):
        raise UnsafeModel(name, version, f"recorded artifact path {path!r} is outside the model")
    folder = _download(name, version, path, dst or tempfile.mkdtemp(prefix="mediscale-model-"))
    pickles = find_pickles(folder)
    if pickles:
        raise UnsafeModel(name, version, f"predictor folder holds pickle file(s) {pickles[:5]}")
    found = digest(folder)
    if found != recorded:
        raise UnsafeModel(
            name, version, f"artifact digest mismatch: recorded {recorded[:12]}…, found {found[:12]}…"
        )
    return folder


def load_verified(name: str, version: str | int, load: Callable[[Path], T]) -> T:
    """`load(folder)` (e.g. TabularPredictor.load) on a checked private copy of the version's
    predictor folder; the copy is removed after, since both predictors read their files whole."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mediscale-model-") as tmp:
        return load(load_predictor_folder(name, version, tmp))


# --------------------------------------------------------------------------- training references

REFERENCE_DIR = "reference"
REFERENCE_FILE = "reference.parquet"
REFERENCE_META = "reference.json"
RISK_HOLDOUT_FILE = "risk_holdout.parquet"  # the model's risk on held-out (validation) rows
FEATURES_TAG = "features"  # the feature folder a version was trained on (version and run tag)


def log_reference(frame: Any, meta: dict[str, Any], risk_holdout: Any = None) -> None:
    """Log a training reference (parquet + a JSON description, optionally the model's risk on
    held-out rows) with the active MLflow run."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / REFERENCE_DIR
        folder.mkdir()
        frame.to_parquet(folder / REFERENCE_FILE, index=False)
        if risk_holdout is not None:
            risk_holdout.to_parquet(folder / RISK_HOLDOUT_FILE, index=False)
        described = {**meta, "rows": len(frame), "columns": [str(c) for c in frame.columns]}
        (folder / REFERENCE_META).write_text(json.dumps(described, indent=2, default=str))
        mlflow.log_artifacts(str(folder), REFERENCE_DIR)
    if meta.get(FEATURES_TAG):
        mlflow.set_tag(FEATURES_TAG, str(meta[FEATURES_TAG]))


def load_reference(name: str, version: str | int) -> Any:
    """The training reference of a model version (version -> run -> `reference/reference.parquet`).

    Versions registered before references were recorded have none: a tabular version whose
    feature folder (its `features` tag) is still readable gets one rebuilt from that folder's
    train split; otherwise a RegistryError names the version. `frame.attrs["source"]` says which.
    """
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    client = _client()
    mv = _version(client, name, version)
    label = f"{name} v{mv.version}"
    if mv.run_id:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=f"{REFERENCE_DIR}/{REFERENCE_FILE}"
            )
        except (MlflowException, OSError):
            path = None
        if path:
            frame = pd.read_parquet(path)
            frame.attrs["source"] = f"run {mv.run_id} artifact {REFERENCE_DIR}/{REFERENCE_FILE}"
            return frame
    features = (mv.tags or {}).get(FEATURES_TAG)
    if not features and mv.run_id:
        features = client.get_run(mv.run_id).data.tags.get(FEATURES_TAG)
    if not features:
        raise RegistryError(
            f"{label} has no training reference (registered before references were recorded) and no "
            f"'{FEATURES_TAG}' tag to rebuild one from: retrain it, or check drift against another version"
        )
    return _rebuilt_reference(name, mv.version, features, label)


def load_risk_holdout(name: str, version: str | int) -> Any:
    """The model's risk on held-out rows recorded at training (a `risk` column), or None."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    mv = _version(_client(), name, version)
    if not mv.run_id:
        return None
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path=f"{REFERENCE_DIR}/{RISK_HOLDOUT_FILE}"
        )
    except (MlflowException, OSError):
        return None
    return pd.read_parquet(path)


def _rebuilt_reference(name: str, version: str, features: str, label: str) -> Any:
    """A reference for an older tabular version, from the train split of its tagged feature folder."""
    from data.featureset import FeatureFolder, FeatureFolderError

    try:
        folder = FeatureFolder.open(features)
    except (FeatureFolderError, OSError) as err:
        raise RegistryError(
            f"{label} has no training reference and its feature folder {features} cannot be read "
            f"({type(err).__name__}); retrain it to record one"
        ) from None
    from ml.artifacts import UnsafeModel
    from ml.tabular import MODEL_FILE, TabularPredictor, reference_frame

    try:
        predictor = load_verified(
            name, version, lambda d: TabularPredictor.load(d) if (d / MODEL_FILE).is_file() else None
        )
    except UnsafeModel as err:
        raise RegistryError(f"{label} has no training reference and cannot be loaded: {err}") from None
    if predictor is None:
        raise RegistryError(f"{label} has no training reference and is not a tabular model to rebuild one")

    text = folder.text_column
    columns = [*predictor.feature_names, *([text] if text else [])]
    frame = reference_frame(predictor, folder.read_split("train", columns), text)
    frame.attrs["source"] = f"rebuilt from the train split of {features}"
    return frame
