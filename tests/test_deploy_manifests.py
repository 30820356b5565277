"""Deployment files (kuberay/, raycluster.yaml, Dockerfile), checked offline: no cluster, no image.

The logic lives in kuberay/checks.py and kuberay/render.py; each test feeds it the real files
or a broken copy, so every check is shown to pass on the repository and to catch what it claims.
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # kuberay/ is repository tooling, not an installed package
checks = importlib.import_module("kuberay.checks")
render = importlib.import_module("kuberay.render")

RAY_VERSION = checks.installed_ray_version()
SERVE_CONFIG = REPO_ROOT / "serve" / "config.yaml"
MANIFEST_PATHS = checks.manifest_paths()


@pytest.fixture(scope="module")
def manifests() -> list[Any]:
    return checks.load_manifests()


def _one(manifests: list[Any], kind: str, name: str | None = None) -> Any:
    found = [m for m in manifests if m.doc.get("kind") == kind and name in (None, m.doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _with(manifest: Any, doc: dict) -> Any:
    return checks.Manifest(manifest.path, manifest.index, doc)


@pytest.fixture(scope="module")
def rayservice(manifests: list[Any]) -> Any:
    return _one(manifests, "RayService")


@pytest.fixture(scope="module")
def serve_config() -> dict:
    return yaml.safe_load(SERVE_CONFIG.read_text())


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load((REPO_ROOT / "raycluster.yaml").read_text())


# ------------------------------------------------------------------ the files as committed


def test_kuberay_folder_has_every_manifest() -> None:
    names = {p.name for p in MANIFEST_PATHS}
    expected = {
        "rayservice.yaml",
        "raycluster.yaml",
        "rayjob-train.yaml",
        "rayjob-tune.yaml",
        "rayjob-monitor.yaml",
        "podmonitor.yaml",
        "grafana-dashboard.yaml",
        "rayjob-watch.yaml",
        "cronjob-watch.yaml",
        "cronjob-watch-rayjob.yaml",
        "networkpolicy.yaml",
        "secret.example.yaml",
    }
    assert expected <= names
    assert not (REPO_ROOT / "kuberay" / ".gitkeep").exists()


@pytest.mark.parametrize("path", MANIFEST_PATHS, ids=lambda p: p.name)
def test_manifest_file_passes_every_check(path: Path) -> None:
    """apiVersion/kind/metadata.name, specs, groups, containers with image and resources, images
    tagged with rayVersion, head num-cpus "0", no pip installs, env and shared volume wiring."""
    docs = checks.load_manifests([path])
    assert docs, f"{path.name} holds no document"
    assert [p for m in docs for p in checks.check_manifest(m, RAY_VERSION)] == []


def test_manifests_agree_with_each_other(manifests: list[Any]) -> None:
    """PodMonitor ports exist on the pods; the ConfigMap, Secret and PVC the pods use exist."""
    assert checks.check_manifests(manifests, RAY_VERSION) == []


def test_every_image_is_tagged_with_the_ray_version(manifests: list[Any], launcher: dict) -> None:
    specs = [checks.cluster_spec(m) for m in manifests if checks.cluster_spec(m) is not None]
    assert len(specs) == 8  # RayService, RayCluster, 6 RayJobs
    assert {spec["rayVersion"] for spec in specs} == {RAY_VERSION}
    images = [image for m in manifests for _, image in checks.iter_images(m.doc)]
    images += [image for _, image in checks.iter_images(launcher)]
    assert images and {checks.image_tag(i) for i in images} == {RAY_VERSION, f"{RAY_VERSION}-gpu"}
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={RAY_VERSION}\n" in dockerfile
    assert "FROM rayproject/ray:${RAY_VERSION}-" in dockerfile


def test_head_runs_no_tasks_anywhere(manifests: list[Any], launcher: dict) -> None:
    for m in manifests:
        spec = checks.cluster_spec(m)
        if spec is not None:
            assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", m.where
    assert launcher["available_node_types"][launcher["head_node_type"]]["resources"] == {"CPU": 0}


def test_nothing_is_pip_installed_at_run_time(manifests: list[Any]) -> None:
    for m in manifests:
        assert "runtimeEnvYAML" not in (m.doc.get("spec") or {}), m.where
        assert checks.check_no_installs(m) == []


# ------------------------------------------------------------------ serveConfigV2


def test_rayservice_carries_serve_config(rayservice: Any, serve_config: dict) -> None:
    carried = yaml.safe_load(rayservice.doc["spec"]["serveConfigV2"])
    expected = copy.deepcopy(serve_config)
    expected["http_options"]["host"] = "0.0.0.0"  # the one Kubernetes override of the CPU variant
    assert carried == expected
    assert render.drift() == "", "kuberay/rayservice.yaml is stale: run `python kuberay/render.py`"


def test_serve_configs_validate_with_ray_schema(rayservice: Any, serve_config: dict) -> None:
    assert checks.validate_serve_config(serve_config) == []
    assert checks.validate_serve_config(yaml.safe_load(rayservice.doc["spec"]["serveConfigV2"])) == []


def _deployment(config: dict, name: str) -> dict:
    return next(d for _, d in checks.serve_deployments(config) if d["name"] == name)


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


TYPOS: dict[str, Callable[[dict], None]] = {
    "max_ongoing_request": lambda c: _rename(
        _deployment(c, "Router"), "max_ongoing_requests", "max_ongoing_request"
    ),
    "target_ongoing_request": lambda c: _rename(
        _deployment(c, "NoteScorer")["autoscaling_config"],
        "target_ongoing_requests",
        "target_ongoing_request",
    ),
    "num_gpu": lambda c: _deployment(c, "NoteScorer")["ray_actor_options"].update(num_gpu=1),
    "http_option": lambda c: _rename(c, "http_options", "http_option"),
    "import_paths": lambda c: _rename(c["applications"][0], "import_path", "import_paths"),
    "request_timeout": lambda c: c["http_options"].update(request_timeout=5),
}


@pytest.mark.parametrize("typo", TYPOS)
def test_typo_in_serve_config_is_caught(serve_config: dict, typo: str) -> None:
    """Ray's ServeDeploySchema ignores unknown keys (forward compatibility), so a typo would
    deploy silently with the default; the strict check names it."""
    bad = copy.deepcopy(serve_config)
    TYPOS[typo](bad)
    problems = checks.validate_serve_config(bad)
    assert any(typo in p and "unknown" in p for p in problems), problems


BAD_VALUES: dict[str, Callable[[dict], None]] = {
    "max_ongoing_requests": lambda c: _deployment(c, "Router").update(max_ongoing_requests="lots"),
    "min_replicas": lambda c: _deployment(c, "TabularScorer")["autoscaling_config"].update(min_replicas=-1),
    "route_prefix": lambda c: c["applications"][0].update(route_prefix="no-leading-slash"),
    "proxy_location": lambda c: c.update(proxy_location="Everywhere"),
}


@pytest.mark.parametrize("field", BAD_VALUES)
def test_bad_value_in_serve_config_fails_ray_schema(serve_config: dict, field: str) -> None:
    bad = copy.deepcopy(serve_config)
    BAD_VALUES[field](bad)
    problems = checks.validate_serve_config(bad)
    assert any(field in p for p in problems), problems


def test_render_check_detects_drift_and_render_fixes_it(tmp_path: Path) -> None:
    committed = (REPO_ROOT / "kuberay" / "rayservice.yaml").read_text()
    stale = tmp_path / "rayservice.yaml"
    stale.write_text(committed.replace("weight: 0.9", "weight: 0.5", 1))
    assert stale.read_text() != committed
    assert render.main(["--check", "--manifest", str(stale)]) == 1
    assert render.main(["--manifest", str(stale)]) == 0
    assert render.main(["--check", "--manifest", str(stale)]) == 0
    assert stale.read_text() == committed  # rendering is deterministic and touches only serveConfigV2


def test_gpu_variant_puts_note_scorer_on_the_gpu_group(rayservice: Any, tmp_path: Path) -> None:
    out = tmp_path / "rayservice-gpu.yaml"
    assert render.main(["--gpu-note-scorer", "--out", str(out)]) == 0
    (doc,) = yaml.safe_load_all(out.read_text())
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    gpus = {
        d["name"]: d["ray_actor_options"].get("num_gpus", 0)
        for app, d in checks.serve_deployments(config)
        if app == "mediscale"  # the risk service; other applications stay on CPUs
    }
    assert gpus == {"TabularScorer": 0, "NoteScorer": 1, "Router": 0}
    assert all(
        d["ray_actor_options"].get("num_gpus", 0) == 0
        for app, d in checks.serve_deployments(config)
        if app != "mediscale"
    )
    assert checks.check_manifest(_with(rayservice, doc), RAY_VERSION) == []  # schema, capacity, images
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster == rayservice.doc["spec"]["rayClusterConfig"]  # only serveConfigV2 differs


def test_serve_replicas_must_fit_the_worker_groups(rayservice: Any, serve_config: dict) -> None:
    cluster = rayservice.doc["spec"]["rayClusterConfig"]
    assert checks.check_serve_capacity(serve_config, cluster, "rayservice") == []
    too_big = copy.deepcopy(serve_config)
    _deployment(too_big, "NoteScorer")["ray_actor_options"]["num_cpus"] = 16
    assert any("NoteScorer needs 16.0 CPU" in p for p in checks.check_serve_capacity(too_big, cluster, "x"))
    gpu = render.k8s_serve_config(serve_config, gpu_note_scorer=True)
    no_gpu_group = copy.deepcopy(cluster)
    no_gpu_group["workerGroupSpecs"] = [g for g in cluster["workerGroupSpecs"] if g["groupName"] != "gpu"]
    assert any("1.0 GPU" in p for p in checks.check_serve_capacity(gpu, no_gpu_group, "x"))


# ------------------------------------------------------------------ deployments vs the app


def test_rayservice_deployments_are_the_serve_config_deployments(rayservice: Any, serve_config: dict) -> None:
    carried = yaml.safe_load(rayservice.doc["spec"]["serveConfigV2"])
    names = [d["name"] for _, d in checks.serve_deployments(serve_config)]
    assert len(names) == len(set(names))
    assert [d["name"] for _, d in checks.serve_deployments(carried)] == names
    service = {d["name"] for app, d in checks.serve_deployments(serve_config) if app == "mediscale"}
    assert service == {"TabularScorer", "NoteScorer", "Router"}


def test_config_deployments_exist_in_the_built_app(serve_config: dict) -> None:
    """Builds serve/config.yaml's import_path with its args, as `serve deploy` does: a missing
    serve/app.py, an import error or a name missing from the app fails."""
    assert checks.serve_app_file().is_file()
    assert checks.check_app_deployments(serve_config) == []


def test_app_deployment_check_catches_a_renamed_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake_mediscale_app.py").write_text(
        textwrap.dedent(
            """
            from ray import serve


            @serve.deployment
            class TabularScorer:
                pass


            @serve.deployment
            class Router:
                def __init__(self, tabular):
                    self.tabular = tabular


            def build_app(args):
                return Router.bind(TabularScorer.bind())
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = {"name": "mediscale", "import_path": "fake_mediscale_app:build_app", "args": {"x": 1}}
    good = {"applications": [{**app, "deployments": [{"name": "TabularScorer"}, {"name": "Router"}]}]}
    assert checks.check_app_deployments(good) == []
    bad = {"applications": [{**app, "deployments": [{"name": "TabularScorer"}, {"name": "Routr"}]}]}
    assert any("'Routr' is not in" in p for p in checks.check_app_deployments(bad))


# ------------------------------------------------------------------ RayJobs


@pytest.mark.parametrize(
    "name",
    [
        "mediscale-train-tabular",
        "mediscale-train-notes",
        "mediscale-tune-xgboost",
        "mediscale-tune-text",
        "mediscale-monitor-decide",
        "mediscale-monitor-watch",
    ],
)
def test_rayjob_entrypoint_parses_with_the_project_cli(manifests: list[Any], name: str) -> None:
    job = _one(manifests, "RayJob", name)
    spec = job.doc["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    result = checks.check_entrypoint(spec["entrypoint"])
    assert result.status == "ok", result.message


@pytest.mark.parametrize(
    "entrypoint",
    [
        "python -m ml train-tabular --feature s3://b/f",  # typo'd option
        "python -m ml train-tabular --register",  # required --features missing
        "python -m ml train-tabulr --features s3://b/f",  # unknown command, not a pending one
        "python -m ml train-tabular --features s3://b/f --num-workers zero",  # bad type
        "ray job submit -- python -m ml train-tabular",  # not `python -m`
    ],
)
def test_bad_entrypoint_is_rejected(entrypoint: str) -> None:
    assert checks.check_entrypoint(entrypoint).status == "error"


# ------------------------------------------------------------------ negative: manifests


def _break_cluster(doc: dict, change: Callable[[dict], None]) -> dict:
    broken = copy.deepcopy(doc)
    change(broken["spec"]["rayClusterConfig"])
    return broken


def _gpu_group(cluster: dict) -> dict:
    return next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


BROKEN_CLUSTERS: dict[str, tuple[Callable[[dict], None], str]] = {
    "rayVersion": (lambda c: c.update(rayVersion="2.59.0"), "but the installed Ray is"),
    "unquoted rayVersion": (lambda c: c.update(rayVersion=2.6), "must be a quoted string"),
    "image tag": (
        lambda c: _container(c["headGroupSpec"]).update(image="registry.example.com/mediscale:2.59.0"),
        "has tag '2.59.0'",
    ),
    "latest image": (lambda c: _container(c["headGroupSpec"]).update(image="rayproject/ray"), "has tag None"),
    "cpu image on gpu group": (
        lambda c: _container(_gpu_group(c)).update(image=f"registry.example.com/mediscale:{RAY_VERSION}"),
        "GPU group uses image",
    ),
    "head num-cpus": (lambda c: c["headGroupSpec"]["rayStartParams"].update({"num-cpus": "1"}), 'want "0"'),
    "int start param": (
        lambda c: c["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        "must be a string",
    ),
    "typo field": (lambda c: c.update(workerGroupSpec=c.pop("workerGroupSpecs")), "did you mean"),
    "restart policy": (
        lambda c: c["headGroupSpec"]["template"]["spec"].update(restartPolicy="Always"),
        "restartPolicy",
    ),
    "no autoscaling": (lambda c: c.update(enableInTreeAutoscaling=False), "enableInTreeAutoscaling"),
    "no toleration": (lambda c: _gpu_group(c)["template"]["spec"].pop("tolerations"), "toleration"),
    "no resources": (lambda c: _container(c["headGroupSpec"]).pop("resources"), "resources.requests.cpu"),
    "replicas above max": (lambda c: _gpu_group(c).update(replicas=9), "minReplicas <= replicas"),
    "no secret env": (lambda c: _container(c["headGroupSpec"])["envFrom"].pop(), "secretRef"),
    "no shared volume": (
        lambda c: _container(_gpu_group(c))["volumeMounts"].remove(
            _mount(_container(_gpu_group(c)), "shared")
        ),
        "not mounted at /mnt/mediscale",
    ),
    "probe without serve check": (
        lambda c: _container(_gpu_group(c)).update(
            readinessProbe={"httpGet": {"path": "/api/local_raylet_healthz", "port": 52365}}
        ),
        "must check the Serve proxy",
    ),
    # security: Ray token auth
    "no token auth": (lambda c: c.pop("authOptions"), "no Ray token auth"),
    "token auth disabled": (
        lambda c: c["authOptions"].update(mode="disabled"),
        "Ray token auth is required",
    ),
    "authOptions typo": (
        lambda c: _rename(c["authOptions"], "secretName", "secretname"),
        "did you mean 'secretName'",
    ),
    # security: serving pods' secrets, proxy gate, MLflow, key file
    "serving gets read-write secrets": (
        lambda c: _container(c["headGroupSpec"])["envFrom"].append(
            {"secretRef": {"name": "mediscale-secrets"}}
        ),
        "gives serving the read-write S3 keys",
    ),
    "serving S3 key from mediscale-secrets": (
        lambda c: _container(_gpu_group(c))["env"].append(
            {
                "name": "AWS_SECRET_ACCESS_KEY",
                "valueFrom": {"secretKeyRef": {"name": "mediscale-secrets", "key": "AWS_SECRET_ACCESS_KEY"}},
            }
        ),
        "serving's S3 keys come only from mediscale-s3-readonly",
    ),
    "no read-only S3 secret": (
        lambda c: _container(_cpu_group(c))["envFrom"].pop(),
        "missing secretRef mediscale-s3-readonly",
    ),
    "serving without the salt": (
        lambda c: _drop_env(_container(_cpu_group(c)), "MEDISCALE_PATIENT_KEY_SALT"),
        "MEDISCALE_PATIENT_KEY_SALT: missing",
    ),
    "no proxy auth gate": (
        lambda c: _drop_env(_container(c["headGroupSpec"]), "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"),
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH: None",
    ),
    "model code execution allowed": (
        lambda c: _set_env(_container(_cpu_group(c)), "MLFLOW_ALLOW_MODEL_CODE_EXECUTION", "true"),
        "MLFLOW_ALLOW_MODEL_CODE_EXECUTION: 'true'",
    ),
    "keys file path": (
        lambda c: _set_env(_container(_gpu_group(c)), "MEDISCALE_API_KEYS_FILE", "/tmp/keys.json"),
        "MEDISCALE_API_KEYS_FILE: '/tmp/keys.json'",
    ),
    "keys file writable": (
        lambda c: _mount(_container(_cpu_group(c)), "api-keys").update(readOnly=False),
        "must be mounted readOnly: true",
    ),
    "keys file not mounted": (
        lambda c: _container(c["headGroupSpec"])["volumeMounts"].remove(
            _mount(_container(c["headGroupSpec"]), "api-keys")
        ),
        "/etc/mediscale/keys/keys.json is not mounted",
    ),
    "keys file from another secret": (
        lambda c: _volume(_gpu_group(c), "api-keys")["secret"].update(secretName="mediscale-secrets"),
        "is not Secret mediscale-api-keys",
    ),
    "production overridden": (
        lambda c: _set_env(_container(_cpu_group(c)), "MEDISCALE_ENV", "development"),
        "overrides the ConfigMap's production",
    ),
}


def _cpu_group(cluster: dict) -> dict:
    return next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "cpu")


def _drop_env(container: dict, name: str) -> None:
    container["env"] = [e for e in container["env"] if e["name"] != name]


def _set_env(container: dict, name: str, value: str) -> None:
    _drop_env(container, name)
    container["env"].append({"name": name, "value": value})


def _mount(container: dict, name: str) -> dict:
    return next(m for m in container["volumeMounts"] if m["name"] == name)


def _volume(group: dict, name: str) -> dict:
    return next(v for v in group["template"]["spec"]["volumes"] if v["name"] == name)


@pytest.mark.parametrize("case", BROKEN_CLUSTERS)
def test_broken_rayservice_is_caught(rayservice: Any, case: str) -> None:
    change, expected = BROKEN_CLUSTERS[case]
    problems = checks.check_manifest(_with(rayservice, _break_cluster(rayservice.doc, change)), RAY_VERSION)
    assert any(expected in p for p in problems), problems


def test_deprecated_and_unknown_rayservice_fields_are_caught(rayservice: Any) -> None:
    doc = copy.deepcopy(rayservice.doc)
    doc["spec"]["serviceUnhealthySecondThreshold"] = 900
    doc["spec"]["upgradeStrategy"] = {"type": "BlueGreen"}
    doc["spec"]["serveConfigv2"] = doc["spec"].pop("serveConfigV2")
    problems = checks.check_manifest(_with(rayservice, doc), RAY_VERSION)
    assert any("deprecated" in p for p in problems)
    assert any("upgradeStrategy.type" in p for p in problems)
    assert any("serveConfigv2: unknown field (did you mean 'serveConfigV2'?)" in p for p in problems)


def test_rayjob_with_pip_runtime_env_is_caught(manifests: list[Any]) -> None:
    job = _one(manifests, "RayJob", "mediscale-tune-xgboost")
    doc = copy.deepcopy(job.doc)
    doc["spec"]["runtimeEnvYAML"] = "pip:\n  - xgboost==3.0.0\n"
    doc["spec"]["shutdownAfterJobFinishes"] = False
    problems = checks.check_manifest(_with(job, doc), RAY_VERSION)
    assert any("installs with 'pip'" in p for p in problems)
    assert any("shutdownAfterJobFinishes" in p for p in problems)


def test_secret_template_never_holds_values(manifests: list[Any]) -> None:
    secret = _one(manifests, "Secret", "mediscale-secrets")
    assert set(secret.doc["stringData"]) == checks.SECRET_KEYS
    doc = copy.deepcopy(secret.doc)
    doc["stringData"]["MLFLOW_TRACKING_PASSWORD"] = "hunter2"
    doc["data"] = {"AWS_ACCESS_KEY_ID": "QUtJQUVYQU1QTEU="}
    problems = checks.check_manifest(_with(secret, doc), RAY_VERSION)
    assert any("MLFLOW_TRACKING_PASSWORD: not a <placeholder>" in p for p in problems)
    assert any("base64 values" in p for p in problems)


def test_podmonitor_port_missing_on_pods_is_caught(manifests: list[Any]) -> None:
    broken = []
    for m in manifests:
        doc = copy.deepcopy(m.doc)
        if doc.get("kind") == "RayCluster":
            ports = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["ports"]
            ports[:] = [p for p in ports if p["name"] != "metrics"]
        broken.append(_with(m, doc))
    problems = checks.check_podmonitors(broken)
    assert any("port 'metrics' not declared" in p and "RayCluster" in p for p in problems), problems


# ------------------------------------------------------------------ Grafana dashboard

DASHBOARD = REPO_ROOT / "kuberay" / "grafana" / "mediscale-dashboard.json"


def test_dashboard_configmap_embeds_exactly_the_json_file(manifests: list[Any]) -> None:
    configmap = _one(manifests, "ConfigMap", "mediscale-grafana-dashboard")
    assert configmap.doc["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap.doc["data"] == {"mediscale-dashboard.json": DASHBOARD.read_text()}
    json.loads(configmap.doc["data"]["mediscale-dashboard.json"])  # the sidecar gets valid JSON
    assert checks.check_dashboard_configmap(configmap) == []
    assert render.dashboard_drift() == ""


def test_dashboard_reads_only_metrics_the_app_or_ray_exports() -> None:
    """Every metric name in the dashboard's PromQL is serve/metrics.py's (with Ray's `ray_` prefix
    and Prometheus suffixes) or one of Ray's listed metrics, which tests/test_serve_metrics.py
    checks against a real scrape."""
    assert checks.check_dashboard() == []
    from serve import metrics

    used = {n for _, expr in checks.dashboard_queries() for n in checks.promql_metric_names(expr)}
    app = {n for n in used if n.startswith("ray_mediscale_")}
    assert app and app <= metrics.exported_names()
    assert used - app <= set(checks.RAY_DASHBOARD_METRICS)
    defined = {d.name for d in metrics.DEFINITIONS}
    shown = {d.name for d in metrics.DEFINITIONS if set(d.exported()) & used}
    assert shown == defined  # every application metric has a panel


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (variant) (rate(ray_mediscale_requests_total{status=~"5.."}[5m]))',
            {"ray_mediscale_requests_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (le, stage) "
            "(rate(ray_mediscale_stage_latency_seconds_bucket[$__rate_interval])))",
            {"ray_mediscale_stage_latency_seconds_bucket"},
        ),
        (
            "sum(rate(a_sum[1m])) / ignoring (le) group_left sum(rate(a_count[1m])) offset 5m",
            {"a_sum", "a_count"},
        ),
        ('max by (outcome) (m{application=~"$application", x="rate(y)"}) == 1', {"m"}),
        (
            "max(ray_mediscale_decision_timestamp_seconds) * 1000 and on (job) up",
            {"ray_mediscale_decision_timestamp_seconds", "up"},
        ),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert checks.promql_metric_names(expr) == names


def test_dashboard_check_catches_unknown_metrics_and_bad_quantiles(tmp_path: Path) -> None:
    doc = json.loads(DASHBOARD.read_text())
    targets = [t for p in doc["panels"] for t in p.get("targets") or []]
    targets[0]["expr"] = targets[0]["expr"].replace(
        "ray_mediscale_requests_total", "mediscale_requests_total"
    )
    targets[1]["expr"] = "histogram_quantile(0.9, sum by (le) (rate(ray_mediscale_risk_sum[5m])))"
    doc["panels"][1]["datasource"] = {"type": "prometheus", "uid": "prom-1"}
    broken = tmp_path / "dashboard.json"
    broken.write_text(json.dumps(doc))
    problems = checks.check_dashboard(broken)
    assert any("mediscale_requests_total is exported by neither" in p for p in problems), problems
    assert any("histogram_quantile over ray_mediscale_risk_sum" in p for p in problems), problems
    assert any("datasource is not ${datasource}" in p for p in problems), problems


def test_dashboard_configmap_drift_is_caught_and_render_fixes_it(
    manifests: list[Any], tmp_path: Path
) -> None:
    configmap = _one(manifests, "ConfigMap", "mediscale-grafana-dashboard")
    stale = copy.deepcopy(configmap.doc)
    stale["data"]["mediscale-dashboard.json"] = DASHBOARD.read_text().replace("MediScale", "MediScal", 1)
    assert any("differs from" in p for p in checks.check_dashboard_configmap(_with(configmap, stale)))
    unlabelled = copy.deepcopy(configmap.doc)
    unlabelled["metadata"]["labels"]["grafana_dashboard"] = 1
    assert any(
        "grafana_dashboard" in p for p in checks.check_dashboard_configmap(_with(configmap, unlabelled))
    )
    committed = (REPO_ROOT / "kuberay" / "grafana-dashboard.yaml").read_text()
    edited = tmp_path / "mediscale-dashboard.json"
    edited.write_text(DASHBOARD.read_text().replace('"refresh": "30s"', '"refresh": "1m"'))
    assert render.dashboard_drift(REPO_ROOT / "kuberay" / "grafana-dashboard.yaml", edited) != ""
    rendered = render.dashboard_configmap(edited.read_text())
    assert (
        rendered != committed
        and yaml.safe_load(rendered)["data"]["mediscale-dashboard.json"] == edited.read_text()
    )
    assert render.dashboard_configmap(DASHBOARD.read_text()) == committed  # deterministic


# ------------------------------------------------------------------ cluster launcher


def test_launcher_config_validates_with_ray_schema(launcher: dict) -> None:
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    assert (Path(ray.autoscaler.__file__).parent / "ray-schema.json").is_file()
    validate_config(prepare_config(copy.deepcopy(launcher)))  # raises on an invalid config
    assert checks.check_launcher(launcher, RAY_VERSION) == []


BROKEN_LAUNCHERS: dict[str, tuple[Callable[[dict], None], str]] = {
    "no head_node_type": (lambda c: c.pop("head_node_type"), "head_node_type"),
    "typo key": (lambda c: _rename(c, "setup_commands", "setup_command"), "'setup_command' was unexpected"),
    "typo node key": (
        lambda c: _rename(c["available_node_types"]["cpu_worker"], "min_workers", "min_worker"),
        "'min_worker' was unexpected",
    ),
    "fractional resource": (
        lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),
        "is not of type 'integer'",
    ),
    "head runs tasks": (lambda c: c["available_node_types"]["head"]["resources"].update(CPU=8), '"CPU": 0'),
    "image tag": (
        lambda c: c["docker"].update(image="registry.example.com/mediscale:latest"),
        "has tag 'latest'",
    ),
    "cpu image on gpu nodes": (
        lambda c: c["available_node_types"]["gpu_worker"].pop("docker"),
        "GPU group uses image",
    ),
    "no token auth": (
        lambda c: c.update(
            worker_start_ray_commands=[
                cmd.replace("export RAY_AUTH_MODE=token; ", "") for cmd in c["worker_start_ray_commands"]
            ]
        ),
        "worker_start_ray_commands: `ray start` must run with RAY_AUTH_MODE=token",
    ),
}


@pytest.mark.parametrize("case", BROKEN_LAUNCHERS)
def test_broken_launcher_config_is_caught(launcher: dict, case: str) -> None:
    change, expected = BROKEN_LAUNCHERS[case]
    broken = copy.deepcopy(launcher)
    change(broken)
    problems = checks.check_launcher(broken, RAY_VERSION)
    assert any(expected in p for p in problems), problems


# ------------------------------------------------------------------ Dockerfile


def test_dockerfile_and_dockerignore() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    dockerignore = (REPO_ROOT / ".dockerignore").read_text()
    assert checks.check_dockerfile(dockerfile, RAY_VERSION) == []
    assert checks.check_dockerignore(dockerignore) == []
    stale = dockerfile.replace(f"ARG RAY_VERSION={RAY_VERSION}", "ARG RAY_VERSION=2.59.0")
    assert any("ARG RAY_VERSION='2.59.0'" in p for p in checks.check_dockerfile(stale, RAY_VERSION))
    everything = dockerfile.replace("COPY --chown=ray:users data ./data", "COPY . .")
    assert any("copies '.'" in p for p in checks.check_dockerfile(everything, RAY_VERSION))
    as_root = dockerfile + "USER root\n"
    assert any("non-root" in p for p in checks.check_dockerfile(as_root, RAY_VERSION))
    leaky = dockerignore.replace("*\n", "", 1)
    assert any(".venv/bin/python would be sent" in p for p in checks.check_dockerignore(leaky))


# ------------------------------------------------------------------ the nightly watch CronJob


def test_watch_cronjob_submits_the_rendered_rayjob_with_least_privilege(manifests: list[Any]) -> None:
    assert checks.check_watch_wiring(manifests) == []
    cron = _one(manifests, "CronJob", "mediscale-monitor-watch")
    pod = cron.doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [volume] = pod["volumes"]
    assert volume["configMap"]["name"] == render.WATCH_CONFIGMAP_NAME
    role = _one(manifests, "Role", "mediscale-watch").doc
    assert role["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list"]}
    ]
    assert render.watch_drift() == ""


def test_watch_cronjob_problems_are_caught(manifests: list[Any]) -> None:
    cron = _one(manifests, "CronJob", "mediscale-monitor-watch")
    broken = copy.deepcopy(cron.doc)
    broken["spec"]["concurrencyPolicy"] = "Allow"
    pod = broken["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["containers"][0]["image"] = "bitnami/kubectl:latest"
    pod["containers"][0]["command"] = ["python", "-m", "monitor", "submit-rayjobs", "x.yaml"]
    problems = checks.check_cronjob(checks.Manifest(cron.path, cron.index, broken), RAY_VERSION)
    assert any("concurrencyPolicy" in p for p in problems)
    assert any("bitnami/kubectl:latest" in p for p in problems)
    assert any("submit-rayjobs" in p for p in problems)
    others = [m for m in manifests if m.doc.get("kind") != "Role"]
    assert any("not bound to a Role" in p for p in checks.check_watch_wiring(others))
    stale = [
        m
        for m in manifests
        if m.doc.get("kind") == "ConfigMap" and m.doc["metadata"]["name"] == render.WATCH_CONFIGMAP_NAME
    ]
    changed = copy.deepcopy(stale[0].doc)
    changed["data"]["rayjob.yaml"] += "# edited by hand\n"
    assert any(
        "differs from rayjob-watch.yaml" in p
        for p in checks.check_watch_configmap(checks.Manifest(stale[0].path, 0, changed), RAY_VERSION)
    )


# ------------------------------------------------------------------ security review


def _clusters(manifests: list[Any]) -> list[Any]:
    return [m for m in manifests if checks.cluster_spec(m) is not None]


def test_every_ray_cluster_has_token_auth(manifests: list[Any], launcher: dict) -> None:
    """KubeRay's authOptions (mode token, the shared Secret) on the RayService, the RayCluster and
    every RayJob; the launcher starts Ray with RAY_AUTH_MODE=token."""
    clusters = _clusters(manifests)
    assert len(clusters) == 8
    for m in clusters:
        assert checks.cluster_spec(m)["authOptions"] == {"mode": "token", "secretName": "mediscale-ray-auth"}
        assert checks.cluster_spec(m)["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token" in cmd and "ray start" in cmd for cmd in launcher[key])


@pytest.mark.parametrize("name", ["mediscale-dev", "mediscale-train-notes", "mediscale-monitor-watch"])
def test_cluster_without_token_auth_is_caught(manifests: list[Any], name: str) -> None:
    [m] = [m for m in _clusters(manifests) if m.doc["metadata"]["name"] == name]
    doc = copy.deepcopy(m.doc)
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    del spec["authOptions"]
    problems = checks.check_manifest(_with(m, doc), RAY_VERSION)
    assert any("no Ray token auth" in p for p in problems), problems


def test_token_auth_by_env_is_accepted_and_checked(rayservice: Any) -> None:
    """Without authOptions (an older operator), RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from a
    Secret on every Ray container count as token auth; one container without them does not."""
    doc = copy.deepcopy(rayservice.doc)
    cluster = doc["spec"]["rayClusterConfig"]
    del cluster["authOptions"]
    token = {"secretKeyRef": {"name": "mediscale-ray-auth", "key": "auth_token"}}
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        _set_env(_container(group), "RAY_AUTH_MODE", "token")
        _container(group)["env"].append({"name": "RAY_AUTH_TOKEN", "valueFrom": token})
    assert checks.check_token_auth(cluster, "x") == []
    assert checks.check_manifest(_with(rayservice, doc), RAY_VERSION) == []
    _drop_env(_container(_gpu_group(cluster)), "RAY_AUTH_TOKEN")
    assert any("no Ray token auth" in p for p in checks.check_token_auth(cluster, "x"))


def test_serving_and_training_secrets_are_split(manifests: list[Any], rayservice: Any) -> None:
    """The RayService's pods: read-only S3 keys, the rest of mediscale-secrets key by key, the gate,
    the key file read-only. The training/tuning/watch RayJobs keep the read-write Secret."""
    cluster = rayservice.doc["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        container = _container(group)
        assert {"secretRef": {"name": "mediscale-s3-readonly"}} in container["envFrom"]
        assert "mediscale-secrets" not in [r.get("secretRef", {}).get("name") for r in container["envFrom"]]
        env = {e["name"]: e for e in container["env"]}
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
        assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"]["value"] == "serve.gate:proxy_middlewares"
        assert env["MLFLOW_ALLOW_MODEL_CODE_EXECUTION"]["value"] == "false"
        assert env["MEDISCALE_API_KEYS_FILE"]["value"] == "/etc/mediscale/keys/keys.json"
        assert _mount(container, "api-keys") == {
            "name": "api-keys",
            "mountPath": "/etc/mediscale/keys",
            "readOnly": True,
        }
        assert _volume(group, "api-keys")["secret"]["secretName"] == "mediscale-api-keys"
    for name in ("mediscale-train-tabular", "mediscale-tune-xgboost", "mediscale-monitor-watch"):
        spec = _one(manifests, "RayJob", name).doc["spec"]["rayClusterSpec"]
        assert {"secretRef": {"name": "mediscale-secrets"}} in _container(spec["headGroupSpec"])["envFrom"]
    config = _one(manifests, "ConfigMap", "mediscale-config").doc["data"]
    assert config["MEDISCALE_ENV"] == "production"


def test_secret_templates_and_references(manifests: list[Any]) -> None:
    """Each Secret the manifests name is a template with exactly its keys, placeholders only; a
    reference to a Secret or key no template holds is caught."""
    secrets = {m.doc["metadata"]["name"]: m for m in manifests if m.doc["kind"] == "Secret"}
    assert {name: set(m.doc["stringData"]) for name, m in secrets.items()} == checks.SECRET_TEMPLATES
    assert checks.check_secret_refs(manifests) == []
    unknown = copy.deepcopy(secrets["mediscale-ray-auth"].doc)
    unknown["metadata"]["name"] = "mediscale-ray-token"
    unknown["stringData"]["token"] = "s3cret"
    problems = checks.check_manifest(_with(secrets["mediscale-ray-auth"], unknown), RAY_VERSION)
    assert any("unexpected Secret 'mediscale-ray-token'" in p for p in problems), problems
    assert any("token: not a <placeholder>" in p for p in problems), problems
    others = [
        m for m in manifests if m.doc["kind"] != "Secret" or m.doc["metadata"]["name"] != "mediscale-ray-auth"
    ]
    assert any("refers to Secret 'mediscale-ray-auth'" in p for p in checks.check_secret_refs(others)), (
        "authOptions.secretName must name a templated Secret"
    )
    service = copy.deepcopy(_one(manifests, "RayService").doc)
    _container(service["spec"]["rayClusterConfig"]["headGroupSpec"])["env"][0]["valueFrom"]["secretKeyRef"][
        "key"
    ] = "MLFLOW_USER"
    broken = [_with(m, service) if m.doc["kind"] == "RayService" else m for m in manifests]
    assert any(
        "key 'MLFLOW_USER' of Secret 'mediscale-secrets'" in p for p in checks.check_secret_refs(broken)
    )


@pytest.mark.parametrize(
    ("key", "url", "allowed"),
    [
        ("MLFLOW_TRACKING_URI", "https://mlflow.mlflow.svc.cluster.local", True),
        ("MLFLOW_TRACKING_URI", "http://mlflow.mlflow.svc.cluster.local:5000", False),
        ("MEDISCALE_S3_ENDPOINT_URL", "HTTP://minio.minio.svc.cluster.local:9000", False),
        ("MEDISCALE_S3_ENDPOINT_URL", "http://localhost:9000", True),
        ("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000", True),
        ("MEDISCALE_SERVICE_URL", "http://mediscale-serve-svc:8000", True),
        ("MEDISCALE_SERVICE_URL", "http://mediscale-serve-svc.mediscale.svc.cluster.local:8000", True),
        ("MEDISCALE_SERVICE_URL", "http://mediscale.example.org", False),
        ("MLFLOW_TRACKING_URI", "http://mediscale-serve-svc:8000", False),
        ("MEDISCALE_DATA_DIR", "/mnt/mediscale", True),
    ],
)
def test_plain_http_urls(key: str, url: str, allowed: bool) -> None:
    assert checks.plain_http_allowed(key, url) is allowed


def test_configmap_with_plain_http_is_caught(manifests: list[Any]) -> None:
    configmap = _one(manifests, "ConfigMap", "mediscale-config")
    assert configmap.doc["data"]["MLFLOW_TRACKING_URI"].startswith("https://")
    assert configmap.doc["data"]["MEDISCALE_S3_ENDPOINT_URL"].startswith("https://")
    doc = copy.deepcopy(configmap.doc)
    doc["data"]["MLFLOW_TRACKING_URI"] = "http://mlflow.mlflow.svc.cluster.local:5000"
    problems = checks.check_manifest(_with(configmap, doc), RAY_VERSION)
    assert any("MLFLOW_TRACKING_URI" in p and "plain http" in p for p in problems), problems


# NetworkPolicies


def _policy(manifests: list[Any], name: str) -> Any:
    return _one(manifests, "NetworkPolicy", name)


def _with_policy(manifests: list[Any], name: str, change: Callable[[dict], Any]) -> list[Any]:
    """The manifests with one NetworkPolicy changed (or dropped, when `change` returns False)."""
    out = []
    for m in manifests:
        if m.doc.get("kind") == "NetworkPolicy" and m.doc["metadata"]["name"] == name:
            doc = copy.deepcopy(m.doc)
            if change(doc) is False:
                continue
            m = _with(m, doc)
        out.append(m)
    return out


def test_network_policies_isolate_every_ray_cluster(manifests: list[Any]) -> None:
    policies = [m.doc for m in manifests if m.doc["kind"] == "NetworkPolicy"]
    assert checks.check_network_policies(manifests) == []
    pods = checks.ray_pods(manifests)
    assert {p.cluster for p in pods} == {m.doc["metadata"]["name"] for m in _clusters(manifests)}
    serving_head = next(p for p in pods if p.cluster == "mediscale" and p.head)
    dev_worker = next(p for p in pods if p.cluster == "mediscale-dev" and not p.head)
    other = checks.Source.of("x", "mediscale", dev_worker.labels)
    assert not checks.ingress_admits(policies, serving_head.labels, 8265, other)
    assert not checks.ingress_admits(policies, serving_head.labels, 6379, other)
    operator = checks.Source.of("op", "kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"})
    assert checks.ingress_admits(policies, serving_head.labels, 8265, operator)
    assert not checks.ingress_admits(policies, serving_head.labels, 6379, operator)
    clinicians = checks.Source.of(
        "in", {"kubernetes.io/metadata.name": "ingress", "mediscale.io/clinician-ingress": "true"}
    )
    serving_worker = next(p for p in pods if p.cluster == "mediscale" and not p.head)
    assert checks.ingress_admits(policies, serving_worker.labels, 8000, clinicians)
    assert not checks.ingress_admits(policies, serving_worker.labels, 8265, clinicians)
    assert not checks.ingress_admits(policies, {"app": "anything"}, 8000, clinicians)  # default deny


def _drop_peer(doc: dict, index: int) -> None:
    del doc["spec"]["ingress"][0]["from"][index]


BROKEN_NETWORK: dict[str, tuple[str, Callable[[dict], Any], str]] = {
    "no default deny": ("mediscale-default-deny-ingress", lambda d: False, "no default-deny ingress"),
    "cluster policy dropped": (
        "mediscale-train-notes-ray-internal",
        lambda d: False,
        "mediscale-train-notes cpu: rayjob-train.yaml#1 RayJob/mediscale-train-notes head cannot reach port",
    ),
    "workers cut off from the head": (
        "mediscale-tune-text-ray-internal",
        lambda d: d["spec"]["ingress"].pop(0),
        "cannot reach port 6379 (gcs-server)",
    ),
    "operator on every port": (
        "mediscale-ray-from-operator",
        lambda d: d["spec"]["ingress"][0].pop("ports"),
        "port 6379 (gcs-server) is open to the KubeRay operator",
    ),
    "operator cut off": (
        "mediscale-ray-from-operator",
        lambda d: d["spec"]["ingress"][0]["ports"][0].update(port=8266),
        "the KubeRay operator cannot reach the dashboard port 8265",
    ),
    "serve rule on every port": (
        "mediscale-serve",
        lambda d: d["spec"]["ingress"][0].pop("ports"),
        "port 8265 (dashboard) is open to the ingress namespace",
    ),
    "cluster open to another cluster": (
        "mediscale-dev-ray-internal",
        lambda d: d["spec"]["ingress"][0]["from"][0]["podSelector"].update(
            matchLabels={}, matchExpressions=[{"key": "mediscale.io/ray-cluster", "operator": "Exists"}]
        ),
        "is open to pods of rayjob-",
    ),
    "dashboard open to all namespaces": (
        "mediscale-monitor-decide-ray-internal",
        lambda d: d["spec"]["ingress"].append(
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "Exists"}]
                        }
                    }
                ],
                "ports": [{"port": 8265}],
            }
        ),
        "port 8265 (dashboard) is open to pods of other namespaces",
    ),
    "submitter cut off": (
        "mediscale-train-tabular-ray-internal",
        lambda d: d["spec"]["ingress"].pop(1),
        "the submitter pod of rayjob-train.yaml#0 RayJob/mediscale-train-tabular cannot reach the dashboard",
    ),
    "no scrape": (
        "mediscale-ray-metrics",
        lambda d: d["spec"]["ingress"][0]["ports"].pop(0),
        "Prometheus (prometheus-system) cannot scrape metrics (8080)",
    ),
    "clinicians cut off": (
        "mediscale-serve",
        lambda d: _drop_peer(d, 0),
        "the clinician ingress namespace cannot reach Serve (8000)",
    ),
    "monitor cut off": (
        "mediscale-serve",
        lambda d: _drop_peer(d, 1),
        "the monitor job rayjob-monitor.yaml#0 RayJob/mediscale-monitor-decide head cannot reach Serve",
    ),
    "serve open to every namespace": (
        "mediscale-serve",
        lambda d: d["spec"]["ingress"][0]["from"][0]["namespaceSelector"].update(
            matchLabels={}, matchExpressions=[{"key": "kubernetes.io/metadata.name", "operator": "Exists"}]
        ),
        "Serve (8000) is open to pods of other namespaces",
    ),
}


@pytest.mark.parametrize("case", BROKEN_NETWORK)
def test_broken_network_policy_is_caught(manifests: list[Any], case: str) -> None:
    name, change, expected = BROKEN_NETWORK[case]
    problems = checks.check_network_policies(_with_policy(manifests, name, change))
    assert any(expected in p for p in problems), problems


def test_ray_pods_without_the_cluster_label_or_submitter_label_are_caught(manifests: list[Any]) -> None:
    job = _one(manifests, "RayJob", "mediscale-tune-xgboost")
    doc = copy.deepcopy(job.doc)
    del _cpu_group(doc["spec"]["rayClusterSpec"])["template"]["metadata"]
    del doc["spec"]["submitterPodTemplate"]["metadata"]
    broken = [_with(job, doc) if m is job else m for m in manifests]
    problems = checks.check_network_policies(broken)
    assert any("cpu: pod template label mediscale.io/ray-cluster" in p for p in problems), problems
    assert any("submitter pod of" in p and "cannot reach the dashboard port 8265" in p for p in problems)
    assert any("mediscale.io/ray-submitter" in p for p in checks.check_rayjob(_with(job, doc), RAY_VERSION))
    assert any("no NetworkPolicy" in p for p in checks.check_network_policies([job]))
    only_deny = [
        m
        for m in manifests
        if m.doc["kind"] != "NetworkPolicy" or m.doc["metadata"]["name"] == "mediscale-default-deny-ingress"
    ]
    problems = checks.check_network_policies(only_deny)
    assert any("no NetworkPolicy (but the default deny) selects these Ray pods" in p for p in problems)


def test_networkpolicy_fields_are_checked(manifests: list[Any]) -> None:
    policy = _policy(manifests, "mediscale-serve")
    doc = copy.deepcopy(policy.doc)
    doc["apiVersion"] = "extensions/v1beta1"
    doc["spec"]["ingres"] = doc["spec"].pop("ingress")
    problems = checks.check_manifest(_with(policy, doc), RAY_VERSION)
    assert any("apiVersion 'extensions/v1beta1'" in p for p in problems), problems
    assert any("ingres: unknown field (did you mean 'ingress'?)" in p for p in problems), problems
    doc = copy.deepcopy(policy.doc)
    del doc["spec"]["podSelector"]
    rule = doc["spec"]["ingress"][0]
    rule["from"][0]["namespaceSelector"]["matchLabels"]["mediscale.io/clinician-ingress"] = True
    doc["spec"]["ingress"].append({"ports": [{"port": 8000}]})
    doc["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}, {"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    problems = checks.check_networkpolicy(_with(policy, doc))
    assert any("podSelector: required" in p for p in problems), problems
    assert any("must be a string (quote it)" in p for p in problems), problems
    assert any("ingress[1]: no `from`: admits every source" in p for p in problems), problems
    assert any("namespaceSelector: {} admits every namespace" in p for p in problems), problems
    assert any("0.0.0.0/0 admits every address" in p for p in problems), problems
