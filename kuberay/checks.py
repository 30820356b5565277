"""Offline checks of the deployment files: KubeRay manifests, launcher config, Dockerfile.

No cluster is needed: each check reads the files and returns a list of problems (empty = fine),
so tests stay one line each and a broken copy names every problem at once. Ray's own validators
are used where Ray has them (ServeDeploySchema, the cluster launcher's JSON schema); the KubeRay
field lists mirror the ray.io/v1 Go types, so a typo is caught here instead of being silently
pruned by the API server.

    python -m kuberay.checks        # from the repository root: every check, exit 1 on a problem
"""

from __future__ import annotations

import copy
import difflib
import importlib
import json
import re
import shlex
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from kuberay import render

REPO_ROOT = Path(__file__).resolve().parents[1]
KUBERAY_DIR = REPO_ROOT / "kuberay"
LAUNCHER_CONFIG = REPO_ROOT / "raycluster.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

CONFIGMAP_NAME = "mediscale-config"
SECRET_NAME = "mediscale-secrets"
PVC_NAME = "mediscale-shared"
# Every Ray pod mounts the shared volume here, and MEDISCALE_DATA_DIR points at it: Ray Train and
# Tune persist checkpoints from the workers to the run folder, which all pods must see.
SHARED_MOUNT = "/mnt/mediscale"
CONFIGMAP_KEYS = {
    "MLFLOW_TRACKING_URI",
    "MEDISCALE_S3_ENDPOINT_URL",
    "MEDISCALE_DATA_DIR",
    "MEDISCALE_SERVICE_URL",
    "MEDISCALE_ENV",
}
S3_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
SECRET_KEYS = S3_KEYS | {
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MEDISCALE_STORE_URL",
    "MEDISCALE_PATIENT_KEY_SALT",
    "MEDISCALE_API_KEY",  # the `read` key in-cluster clients send to the service (GET /variants)
}
# Serving takes read-only S3 keys from their own Secret: mediscale-secrets' AWS keys are the
# read-write user of the training/tuning/watch RayJobs, and never reach the RayService's pods.
SERVING_S3_SECRET = "mediscale-s3-readonly"
# Ray's cluster token. KubeRay reads the key `auth_token` of authOptions.secretName
# (utils.RAY_AUTH_TOKEN_SECRET_KEY in ray-operator/controllers/ray/utils/constant.go).
RAY_AUTH_SECRET = "mediscale-ray-auth"
RAY_AUTH_SECRET_KEY = "auth_token"
# The service's API key file (`python -m serve keys create --file keys.json`), mounted read-only.
API_KEYS_SECRET = "mediscale-api-keys"
API_KEYS_SECRET_KEY = "keys.json"
API_KEYS_FILE = "/etc/mediscale/keys/keys.json"
# The Secrets the manifests use and the keys each template must list (placeholders only).
SECRET_TEMPLATES = {
    SECRET_NAME: SECRET_KEYS,
    SERVING_S3_SECRET: S3_KEYS,
    RAY_AUTH_SECRET: {RAY_AUTH_SECRET_KEY},
    API_KEYS_SECRET: {API_KEYS_SECRET_KEY},
}
# Environment every serving pod (RayService head and workers: Serve proxies run on each) must set.
SERVING_ENV = {
    # the auth gate in the Serve proxy: Ray calls it and adds its ASGI middlewares to every proxy
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve.gate:proxy_middlewares",
    "MLFLOW_ALLOW_MODEL_CODE_EXECUTION": "false",
    "MEDISCALE_API_KEYS_FILE": API_KEYS_FILE,
}
# ConfigMap URLs may be plain http:// only to the pod itself or to these in-namespace Services,
# whose traffic never leaves the namespace (kuberay/networkpolicy.yaml admits it).
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
PLAIN_HTTP_SERVICES = {"MEDISCALE_SERVICE_URL": ("mediscale-serve-svc",)}
PLACEHOLDER = re.compile(r"^<[a-z0-9-]+>$")
# An image tag is the Ray version, or the Ray version and one of these variants.
IMAGE_VARIANTS = ("", "-gpu")
GPU_RESOURCE = "nvidia.com/gpu"
SERVE_HEALTH_PATH = "-/healthz"
# CLI commands the RayJobs call that are still being written: their check is pending, not failed.
PENDING_COMMANDS: set[tuple[str, str]] = set()
RUNTIME_ENV_INSTALLERS = ("pip", "uv", "conda")
DASHBOARD_JSON = render.DASHBOARD_JSON
# Ray's own metrics the dashboard may use: the ones Ray 2.60 really exports under Serve traffic
# (tests/test_serve_metrics.py scrapes a deployed application and checks every one is there).
RAY_DASHBOARD_METRICS = (
    "ray_serve_num_http_requests_total",
    "ray_serve_http_request_latency_ms_bucket",
    "ray_serve_deployment_replica_healthy",
    "ray_serve_deployment_processing_latency_ms_bucket",
    "ray_serve_deployment_request_counter_total",
    "ray_serve_replica_processing_queries",
)
# What the dashboard must show (a metric name each panel group rests on).
DASHBOARD_MUST_USE = (
    "ray_mediscale_requests_total",
    "ray_mediscale_request_latency_seconds_bucket",
    "ray_mediscale_stage_latency_seconds_bucket",
    "ray_mediscale_risk_bucket",
    "ray_mediscale_predictions_total",
    "ray_mediscale_shadow_band_disagreements_total",
    "ray_mediscale_shadow_risk_difference_bucket",
    "ray_mediscale_feedback_total",
    "ray_mediscale_model_loads_total",
    "ray_mediscale_drift_share",
    "ray_mediscale_decision_outcome",
    "ray_serve_num_http_requests_total",
    "ray_serve_deployment_replica_healthy",
)
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
PROMQL_KEYWORDS |= {"unless", "offset", "inf", "nan"}

KIND_API_VERSIONS = {
    "RayService": "ray.io/v1",
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
    "ServiceAccount": "v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "CronJob": "batch/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}

# Ray token auth. KubeRay ray.io/v1 AuthOptions (ray-operator/apis/ray/v1/raycluster_types.go,
# github.com/ray-project/kuberay): `mode` since v1.5.1, `secretName` and `enableK8sTokenAuth` since
# v1.6.0. KubeRay injects RAY_AUTH_MODE=token and RAY_AUTH_TOKEN into the Ray containers, the
# autoscaler and the RayJob submitter only for an explicit `mode: token` (utils.IsAuthEnabled).
AUTH_OPTIONS_KEYS = {"mode", "secretName", "enableK8sTokenAuth"}
AUTH_MODES = {"disabled", "token"}

# Network isolation (kuberay/networkpolicy.yaml). Every Ray pod template carries CLUSTER_LABEL =
# the name of its RayService/RayCluster/RayJob (KubeRay's own ray.io/cluster value is generated
# for RayService and RayJob clusters); a RayJob's submitter pod carries SUBMITTER_LABEL.
CLUSTER_LABEL = "mediscale.io/ray-cluster"
SUBMITTER_LABEL = "mediscale.io/ray-submitter"
NS_NAME_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace
APP_NAMESPACE = "mediscale"
OPERATOR_NAMESPACE = "kuberay-system"
OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "kuberay-operator"}  # the Helm chart's pod label
INGRESS_NAMESPACE_LABEL = ("mediscale.io/clinician-ingress", "true")  # placeholder, README
SERVE_PORT = 8000
DASHBOARD_PORT = 8265
# Ports no one outside the Ray cluster may reach (the operator: the dashboard only), and a port
# of Ray's worker range (min-worker-port 10002 by default) standing for the internal ones.
RAY_CONTROL_PORTS = {"gcs-server": 6379, "dashboard": DASHBOARD_PORT, "client": 10001}
RAY_INTERNAL_PORT = 10002
NETWORKPOLICY_SPEC_KEYS = {"podSelector", "policyTypes", "ingress", "egress"}
NETWORKPOLICY_RULE_KEYS = {"from", "ports"}
NETWORKPOLICY_PEER_KEYS = {"podSelector", "namespaceSelector", "ipBlock"}
NETWORKPOLICY_PORT_KEYS = {"protocol", "port", "endPort"}
LABEL_SELECTOR_KEYS = {"matchLabels", "matchExpressions"}
SELECTOR_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}

# ray.io/v1 fields (KubeRay ray-operator/apis/ray/v1, v1.4 onwards).
RAYSERVICE_SPEC_KEYS = {
    "rayClusterDeletionDelaySeconds",
    "serviceUnhealthySecondThreshold",
    "deploymentUnhealthySecondThreshold",
    "serveService",
    "gateway",
    "httpRoute",
    "upgradeStrategy",
    "serveConfigV2",
    "rayClusterConfig",
    "excludeHeadPodFromServeSvc",
}
RAYSERVICE_DEPRECATED = {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}
UPGRADE_STRATEGY_KEYS = {"type", "clusterUpgradeOptions"}
UPGRADE_TYPES = {"NewCluster", "None", "NewClusterWithIncrementalUpgrade"}
RAYJOB_SPEC_KEYS = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionPolicy",
    "deletionStrategy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes",
    "suspend",
}
CLUSTER_SPEC_KEYS = {
    "suspend",
    "managedBy",
    "autoscalerOptions",
    "headServiceAnnotations",
    "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions",
    "headGroupSpec",
    "rayVersion",
    "workerGroupSpecs",
    "authOptions",
}
AUTOSCALER_KEYS = {
    "resources",
    "image",
    "imagePullPolicy",
    "securityContext",
    "idleTimeoutSeconds",
    "upscalingMode",
    "env",
    "envFrom",
    "volumeMounts",
    "version",
}
HEAD_GROUP_KEYS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_KEYS = {
    "suspend",
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "numOfHosts",
}
# core/v1 PodSpec and Container fields.
POD_SPEC_KEYS = {
    "activeDeadlineSeconds",
    "affinity",
    "automountServiceAccountToken",
    "containers",
    "dnsConfig",
    "dnsPolicy",
    "enableServiceLinks",
    "ephemeralContainers",
    "hostAliases",
    "hostIPC",
    "hostNetwork",
    "hostPID",
    "hostUsers",
    "hostname",
    "imagePullSecrets",
    "initContainers",
    "nodeName",
    "nodeSelector",
    "os",
    "overhead",
    "preemptionPolicy",
    "priority",
    "priorityClassName",
    "readinessGates",
    "resourceClaims",
    "resources",
    "restartPolicy",
    "runtimeClassName",
    "schedulerName",
    "schedulingGates",
    "securityContext",
    "serviceAccount",
    "serviceAccountName",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "subdomain",
    "terminationGracePeriodSeconds",
    "tolerations",
    "topologySpreadConstraints",
    "volumes",
}
CONTAINER_KEYS = {
    "args",
    "command",
    "env",
    "envFrom",
    "image",
    "imagePullPolicy",
    "lifecycle",
    "livenessProbe",
    "name",
    "ports",
    "readinessProbe",
    "resizePolicy",
    "resources",
    "restartPolicy",
    "securityContext",
    "startupProbe",
    "stdin",
    "stdinOnce",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "tty",
    "volumeDevices",
    "volumeMounts",
    "workingDir",
}


@dataclass(frozen=True)
class Manifest:
    """One YAML document of a manifest file."""

    path: Path
    index: int
    doc: Any

    @property
    def where(self) -> str:
        doc = self.doc if isinstance(self.doc, dict) else {}
        name = (doc.get("metadata") or {}).get("name", "?")
        return f"{self.path.name}#{self.index} {doc.get('kind', '?')}/{name}"


def installed_ray_version() -> str:
    import ray

    return ray.__version__


# ---------------------------------------------------------------- loading


def manifest_paths(kuberay_dir: Path = KUBERAY_DIR) -> list[Path]:
    return sorted([*kuberay_dir.glob("*.yaml"), *kuberay_dir.glob("*.yml")])


def load_manifests(paths: list[Path] | None = None) -> list[Manifest]:
    """Every document of every file (multi-document files allowed; empty documents skipped)."""
    out = []
    for path in manifest_paths() if paths is None else paths:
        for index, doc in enumerate(yaml.safe_load_all(Path(path).read_text())):
            if doc is not None:
                out.append(Manifest(Path(path), index, doc))
    return out


def _get(obj: Any, *keys: str | int) -> Any:
    for key in keys:
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return None
    return obj


def _unknown(keys: Any, allowed: set[str], where: str) -> list[str]:
    if not isinstance(keys, dict):
        return [f"{where}: expected a mapping, got {type(keys).__name__}"]
    problems = []
    for key in keys:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            problems.append(
                f"{where}.{key}: unknown field" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
    return problems


# ---------------------------------------------------------------- images


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None when it has none: `latest` in practice)."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else None


def check_image(image: Any, ray_version: str, where: str, *, gpu: bool | None = None) -> list[str]:
    """The tag must be `<ray_version>` or `<ray_version>-gpu` (and `-gpu` exactly when gpu)."""
    if not isinstance(image, str) or not image:
        return [f"{where}: image missing"]
    tag = image_tag(image)
    allowed = [ray_version + variant for variant in IMAGE_VARIANTS]
    if tag not in allowed:
        return [f"{where}: image {image!r} has tag {tag!r}; expected one of {allowed} (the rayVersion)"]
    if gpu is not None and tag.endswith("-gpu") != gpu:
        kind = "GPU" if gpu else "CPU"
        return [
            f"{where}: {kind} group uses image {image!r}; expected tag {ray_version}{'-gpu' if gpu else ''}"
        ]
    return []


def iter_images(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every `image`-like value anywhere in a document (containers, autoscaler, launcher docker)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            where = f"{path}.{key}" if path else str(key)
            if key in ("image", "head_image", "worker_image"):
                yield where, value
            else:
                yield from iter_images(value, where)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from iter_images(value, f"{path}[{i}]")


def check_all_images(doc: Any, ray_version: str, where: str) -> list[str]:
    return [p for loc, image in iter_images(doc) for p in check_image(image, ray_version, f"{where} {loc}")]


# ---------------------------------------------------------------- Ray cluster specs


def cluster_spec(manifest: Manifest) -> dict | None:
    doc = manifest.doc
    kind = doc.get("kind")
    if kind == "RayCluster":
        return _get(doc, "spec")
    if kind == "RayService":
        return _get(doc, "spec", "rayClusterConfig")
    if kind == "RayJob":
        return _get(doc, "spec", "rayClusterSpec")
    return None


def quantity(value: Any) -> float:
    """A Kubernetes CPU/GPU quantity as a number ("500m" = 0.5)."""
    text = str(value).strip()
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass(frozen=True)
class GroupCapacity:
    name: str
    cpus: float
    gpus: float
    max_replicas: int


def ray_container(group: dict) -> dict:
    """KubeRay's convention: the Ray container is the first one of the pod template."""
    return _get(group, "template", "spec", "containers", 0) or {}


def group_capacity(name: str, group: dict) -> GroupCapacity:
    """Ray resources of one pod of a group, as KubeRay derives them (rayStartParams first)."""
    params = group.get("rayStartParams") or {}
    resources = ray_container(group).get("resources") or {}
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    cpu = params.get("num-cpus", limits.get("cpu", requests.get("cpu", 0)))
    gpu = params.get("num-gpus", limits.get(GPU_RESOURCE, 0))
    return GroupCapacity(name, quantity(cpu), quantity(gpu), int(group.get("maxReplicas") or 0))


def _check_pod_template(
    group: dict, where: str, ray_version: str, *, head: bool, rayservice: bool
) -> list[str]:
    problems = []
    spec = _get(group, "template", "spec")
    if not isinstance(spec, dict):
        return [f"{where}.template.spec: missing"]
    problems += _unknown(spec, POD_SPEC_KEYS, f"{where}.template.spec")
    if spec.get("restartPolicy", "Never") != "Never":
        problems.append(f"{where}.template.spec.restartPolicy: autoscaler v2 needs Never (or unset)")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [*problems, f"{where}.template.spec.containers: missing"]
    for i, container in enumerate(containers):
        problems += _unknown(container, CONTAINER_KEYS, f"{where}.containers[{i}]")
    container = containers[0]
    cwhere = f"{where}.containers[0]({container.get('name', '?')})"
    resources = container.get("resources") or {}
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(section) or {}):
                problems.append(f"{cwhere}.resources.{section}.{resource}: missing")
    gpus = (resources.get("limits") or {}).get(GPU_RESOURCE)
    image = container.get("image")
    if not image:
        problems.append(f"{cwhere}.image: missing")
    elif not check_image(image, ray_version, ""):  # a wrong tag is reported by check_all_images
        problems += check_image(image, ray_version, f"{cwhere}.image", gpu=bool(gpus))  # the variant
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
    if ports.get("metrics") != 8080:
        problems.append(f"{cwhere}.ports: no port `metrics` 8080 (the PodMonitor scrapes it)")
    env_from = container.get("envFrom") or []
    refs = {(k, (v or {}).get("name")) for item in env_from for k, v in item.items()}
    secret = SERVING_S3_SECRET if rayservice else SECRET_NAME
    for ref in (("configMapRef", CONFIGMAP_NAME), ("secretRef", secret)):
        if ref not in refs:
            problems.append(f"{cwhere}.envFrom: missing {ref[0]} {ref[1]}")
    if rayservice:
        problems += check_serving_container(spec, container, cwhere)
    claims = {v.get("name"): _get(v, "persistentVolumeClaim", "claimName") for v in spec.get("volumes") or []}
    mounts = {m.get("mountPath"): m.get("name") for m in container.get("volumeMounts") or []}
    if claims.get(mounts.get(SHARED_MOUNT)) != PVC_NAME:
        problems.append(f"{cwhere}: PVC {PVC_NAME} not mounted at {SHARED_MOUNT} (= MEDISCALE_DATA_DIR)")
    params = group.get("rayStartParams") or {}
    if gpus:
        if str(params.get("num-gpus")) != str(gpus):
            problems.append(f"{where}.rayStartParams.num-gpus: {params.get('num-gpus')!r}, limit is {gpus}")
        tolerations = spec.get("tolerations") or []
        if not any(t.get("key") == GPU_RESOURCE for t in tolerations):
            problems.append(f"{where}: GPU group without a toleration for the {GPU_RESOURCE} taint")
    elif "num-gpus" in params and str(params["num-gpus"]) != "0":
        problems.append(f"{where}.rayStartParams.num-gpus: set on a group without {GPU_RESOURCE} limits")
    probe = container.get("readinessProbe")
    if rayservice and not head and probe and SERVE_HEALTH_PATH not in str(probe):
        problems.append(
            f"{cwhere}.readinessProbe: a custom probe replaces KubeRay's and must check the Serve "
            f"proxy ({SERVE_HEALTH_PATH}), or unhealthy workers keep receiving traffic"
        )
    return problems


def _env(container: dict) -> dict[str, dict]:
    return {e.get("name"): e for e in container.get("env") or [] if isinstance(e, dict)}


def _secret_key_ref(env_var: dict | None) -> tuple[str | None, str | None]:
    ref = _get(env_var, "valueFrom", "secretKeyRef") or {}
    return ref.get("name"), ref.get("key")


def check_serving_container(pod: dict, container: dict, where: str) -> list[str]:
    """A RayService pod (Serve runs on head and workers): read-only S3 keys from their own Secret
    and never mediscale-secrets' read-write ones, the rest of mediscale-secrets key by key, the
    proxy's auth gate, no MLflow model code execution, and the API key file mounted read-only."""
    problems = []
    refs = {(k, (v or {}).get("name")) for item in container.get("envFrom") or [] for k, v in item.items()}
    if ("secretRef", SECRET_NAME) in refs:
        problems.append(
            f"{where}.envFrom: secretRef {SECRET_NAME} gives serving the read-write S3 keys; serving takes "
            f"them from {SERVING_S3_SECRET} and the other keys of {SECRET_NAME} one by one (secretKeyRef)"
        )
    env = _env(container)
    for key in sorted(S3_KEYS & set(env)):
        name, _ = _secret_key_ref(env[key])
        if name != SERVING_S3_SECRET:
            problems.append(
                f"{where}.env.{key}: from {name or 'a literal value'}; serving's S3 keys come only from "
                f"{SERVING_S3_SECRET} (read-only), never {SECRET_NAME}"
            )
    for key in sorted(SECRET_KEYS - S3_KEYS):
        if _secret_key_ref(env.get(key)) != (SECRET_NAME, key):
            problems.append(f"{where}.env.{key}: missing (valueFrom.secretKeyRef {SECRET_NAME}/{key})")
    for key, value in SERVING_ENV.items():
        actual = (env.get(key) or {}).get("value")
        if actual != value:
            problems.append(f"{where}.env.{key}: {actual!r}, want {value!r} on every serving pod")
    if "MEDISCALE_ENV" in env and (env["MEDISCALE_ENV"] or {}).get("value") != "production":
        problems.append(f"{where}.env.MEDISCALE_ENV: overrides the ConfigMap's production")
    mounts = [
        m
        for m in container.get("volumeMounts") or []
        if m.get("mountPath") == API_KEYS_FILE or API_KEYS_FILE.startswith(str(m.get("mountPath")) + "/")
    ]
    if not mounts:
        return [*problems, f"{where}.volumeMounts: the API key file {API_KEYS_FILE} is not mounted"]
    mount = mounts[-1]
    if mount.get("readOnly") is not True:
        problems.append(
            f"{where}.volumeMounts {mount.get('mountPath')}: the key file must be mounted readOnly: true"
        )
    if mount.get("subPath"):
        problems.append(
            f"{where}.volumeMounts {mount.get('mountPath')}: no subPath (it never sees a rolled Secret)"
        )
    volume = next((v for v in pod.get("volumes") or [] if v.get("name") == mount.get("name")), {})
    if _get(volume, "secret", "secretName") != API_KEYS_SECRET:
        problems.append(
            f"{where}: volume {mount.get('name')!r} (the key file) is not Secret {API_KEYS_SECRET}"
        )
    else:
        relative = API_KEYS_FILE[len(str(mount.get("mountPath"))) :].lstrip("/")
        items = _get(volume, "secret", "items")
        paths = (
            {i.get("path"): i.get("key") for i in items}
            if items
            else {API_KEYS_SECRET_KEY: API_KEYS_SECRET_KEY}
        )
        if paths.get(relative) != API_KEYS_SECRET_KEY:
            problems.append(
                f"{where}: {API_KEYS_FILE} is not the key {API_KEYS_SECRET_KEY} of {API_KEYS_SECRET}"
            )
    return problems


def check_token_auth(spec: dict, where: str) -> list[str]:
    """Ray token auth: KubeRay's authOptions with an explicit `mode: token`, or (for an operator
    without authOptions) RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from a Secret on every Ray container."""
    auth = spec.get("authOptions")
    if auth is not None:
        problems = _unknown(auth, AUTH_OPTIONS_KEYS, f"{where}.authOptions")
        if not isinstance(auth, dict):
            return problems
        if auth.get("mode") not in AUTH_MODES:
            problems.append(f"{where}.authOptions.mode: {auth.get('mode')!r} not in {sorted(AUTH_MODES)}")
        elif auth["mode"] != "token":
            problems.append(f"{where}.authOptions.mode: {auth['mode']!r}: Ray token auth is required (token)")
        if auth.get("enableK8sTokenAuth") and auth.get("secretName"):
            problems.append(f"{where}.authOptions: enableK8sTokenAuth and secretName exclude each other")
        return problems
    groups = [spec.get("headGroupSpec") or {}, *(spec.get("workerGroupSpecs") or [])]
    for group in groups:
        env = _env(ray_container(group))
        if (env.get("RAY_AUTH_MODE") or {}).get("value") != "token" or None in _secret_key_ref(
            env.get("RAY_AUTH_TOKEN")
        ):
            return [
                f"{where}: no Ray token auth: set authOptions {{mode: token, secretName: {RAY_AUTH_SECRET}}} "
                "(or RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from a Secret on every Ray container)"
            ]
    return []


def check_cluster_spec(spec: Any, where: str, ray_version: str, *, rayservice: bool = False) -> list[str]:
    """rayVersion, autoscaling, head num-cpus "0", groups, containers, images, GPU wiring."""
    if not isinstance(spec, dict):
        return [f"{where}: Ray cluster spec missing"]
    problems = _unknown(spec, CLUSTER_SPEC_KEYS, where)
    version = spec.get("rayVersion")
    if not isinstance(version, str):
        problems.append(f"{where}.rayVersion: {version!r} must be a quoted string")
    elif version != ray_version:
        problems.append(f"{where}.rayVersion: {version!r} but the installed Ray is {ray_version!r}")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(f"{where}.enableInTreeAutoscaling: must be true")
    if "autoscalerOptions" in spec:
        problems += _unknown(spec["autoscalerOptions"], AUTOSCALER_KEYS, f"{where}.autoscalerOptions")
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        return [*problems, f"{where}.headGroupSpec: missing"]
    problems += _unknown(head, HEAD_GROUP_KEYS, f"{where}.headGroupSpec")
    groups: list[tuple[str, dict, bool]] = [(f"{where}.headGroupSpec", head, True)]
    workers = spec.get("workerGroupSpecs")
    if not isinstance(workers, list) or not workers:
        problems.append(f"{where}.workerGroupSpecs: missing (the head runs no tasks)")
        workers = []
    names = [w.get("groupName") for w in workers if isinstance(w, dict)]
    if len(set(names)) != len(names):
        problems.append(f"{where}.workerGroupSpecs: duplicate groupName in {names}")
    for i, group in enumerate(workers):
        gwhere = f"{where}.workerGroupSpecs[{i}]({group.get('groupName', '?')})"
        problems += _unknown(group, WORKER_GROUP_KEYS, gwhere)
        if not group.get("groupName"):
            problems.append(f"{gwhere}.groupName: missing")
        counts = {
            k: group.get(k, 0 if k == "replicas" else None)
            for k in ("replicas", "minReplicas", "maxReplicas")
        }
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values()):
            problems.append(f"{gwhere}: replicas/minReplicas/maxReplicas must be integers, got {counts}")
        elif not counts["minReplicas"] <= counts["replicas"] <= counts["maxReplicas"]:
            problems.append(f"{gwhere}: need minReplicas <= replicas <= maxReplicas, got {counts}")
        groups.append((gwhere, group, False))
    for gwhere, group, is_head in groups:
        params = group.get("rayStartParams")
        if not isinstance(params, dict):
            problems.append(f"{gwhere}.rayStartParams: missing (may be empty, not absent)")
            params = {}
        for key, value in params.items():
            if not isinstance(value, str):
                problems.append(f"{gwhere}.rayStartParams.{key}: {value!r} must be a string (quote it)")
        problems += _check_pod_template(group, gwhere, ray_version, head=is_head, rayservice=rayservice)
    head_params = head.get("rayStartParams") or {}
    if head_params.get("num-cpus") != "0":
        problems.append(
            f'{where}.headGroupSpec.rayStartParams.num-cpus: {head_params.get("num-cpus")!r}, want "0"'
        )
    if head_params.get("dashboard-host") != "0.0.0.0":
        problems.append(f"{where}.headGroupSpec.rayStartParams.dashboard-host: want 0.0.0.0")
    problems += check_token_auth(spec, where)
    return problems


# ---------------------------------------------------------------- runtime envs (no pip installs)


def check_no_installs(manifest: Manifest) -> list[str]:
    """The image carries the project: no runtime_env pip/uv/conda, no `pip install` entrypoints."""
    problems = []
    doc, where = manifest.doc, manifest.where
    runtime_env_yaml = _get(doc, "spec", "runtimeEnvYAML")
    if runtime_env_yaml:
        env = yaml.safe_load(runtime_env_yaml) or {}
        problems += [
            f"{where}.spec.runtimeEnvYAML: installs with {k!r}" for k in RUNTIME_ENV_INSTALLERS if k in env
        ]
    entrypoint = _get(doc, "spec", "entrypoint") or ""
    if re.search(r"\b(pip|uv|conda)\b.*\binstall\b", entrypoint):
        problems.append(f"{where}.spec.entrypoint: installs packages at run time")
    serve_yaml = _get(doc, "spec", "serveConfigV2")
    if isinstance(serve_yaml, str):
        config = yaml.safe_load(serve_yaml) or {}
        for app in config.get("applications") or []:
            envs = [app.get("runtime_env") or {}]
            envs += [_get(d, "ray_actor_options", "runtime_env") or {} for d in app.get("deployments") or []]
            for env in envs:
                problems += [
                    f"{where} serveConfigV2 app {app.get('name')!r}: runtime_env installs with {k!r}"
                    for k in RUNTIME_ENV_INSTALLERS
                    if k in env
                ]
    return problems


# ---------------------------------------------------------------- Serve config


def _models_in(annotation: Any) -> list[type]:
    """Pydantic models an annotation accepts directly (through Optional/Union/Annotated)."""
    from pydantic import BaseModel

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _list_items(annotation: Any) -> Any:
    """The item annotation of a list annotation (through Optional/Union), else None."""
    origin = typing.get_origin(annotation)
    if origin in (list, typing.List):  # noqa: UP006 - typing.List is what Ray's models use
        return typing.get_args(annotation)[0] if typing.get_args(annotation) else None
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            item = _list_items(arg)
            if item is not None:
                return item
    return None


def _accepts_plain_dict(annotation: Any) -> bool:
    """Whether a Union annotation also takes a bare dict (then pydantic does not check the model)."""
    args = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else ()
    )
    return any(a is dict or typing.get_origin(a) is dict for a in args)


def _pydantic_errors(err: Any, path: str) -> list[str]:
    prefix = f"{path}." if path else ""
    return [f"{prefix}{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]


def strict_serve_problems(value: Any, model: type, path: str = "") -> list[str]:
    """What Ray Serve's schema lets through unchecked, at any depth.

    - Unknown keys: ServeDeploySchema (and DeploymentSchema, HTTPOptionsSchema,
      AutoscalingConfig, ...) ignore them for forward compatibility, so a typo such as
      `max_ongoing_request` would deploy silently with the default. The models' own field lists
      say what is known.
    - Fields typed `Union[Dict, Model]` (autoscaling_config, request_router_config, ...) accept
      any dict at validation; Serve builds the model only at deploy time. They are validated
      against the model here.
    """
    from pydantic import ValidationError

    if not isinstance(value, dict):
        return []
    fields = model.model_fields
    by_key = dict(fields) | {f.alias: f for f in fields.values() if f.alias}
    problems = []
    for key, sub in value.items():
        where = f"{path}.{key}" if path else str(key)
        field = by_key.get(key)
        if field is None:
            hint = difflib.get_close_matches(str(key), sorted(by_key), n=1)
            problems.append(
                f"{where}: unknown {model.__name__} field" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
            continue
        if isinstance(sub, dict):
            for sub_model in _models_in(field.annotation)[:1]:
                problems += strict_serve_problems(sub, sub_model, where)
                if _accepts_plain_dict(field.annotation):
                    try:
                        sub_model.model_validate(sub)
                    except ValidationError as err:
                        problems += _pydantic_errors(err, where)
        elif isinstance(sub, list):
            item_models = _models_in(_list_items(field.annotation))
            for i, item in enumerate(sub):
                label = f"[{i}]" + (f"({item['name']})" if isinstance(item, dict) and "name" in item else "")
                for item_model in item_models[:1]:
                    problems += strict_serve_problems(item, item_model, where + label)
    return problems


def validate_serve_config(config: Any) -> list[str]:
    """Ray's ServeDeploySchema (types, values), plus what it leaves to deploy time: unknown keys,
    dict-typed sub-configs and the route_prefix format."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema, _route_prefix_format

    problems = []
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as err:
        problems += _pydantic_errors(err, "")
    problems += strict_serve_problems(config, ServeDeploySchema)
    for i, app in enumerate(config.get("applications") or [] if isinstance(config, dict) else []):
        try:
            _route_prefix_format(None, app.get("route_prefix"))
        except ValueError as err:
            problems.append(f"applications.{i}.route_prefix: {err}")
    return problems


def serve_deployments(config: dict) -> Iterator[tuple[str, dict]]:
    for app in config.get("applications") or []:
        for deployment in app.get("deployments") or []:
            yield app.get("name", "?"), deployment


def check_serve_capacity(config: dict, spec: dict, where: str) -> list[str]:
    """Every replica fits on some worker pod, and all replicas at max_replicas fit the groups."""
    workers = [group_capacity(g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs") or []]
    problems = []
    need_cpu = need_gpu = 0.0
    for app, deployment in serve_deployments(config):
        options = deployment.get("ray_actor_options") or {}
        cpu, gpu = float(options.get("num_cpus", 1)), float(options.get("num_gpus", 0))
        if not any(w.cpus >= cpu and w.gpus >= gpu and w.max_replicas > 0 for w in workers):
            problems.append(
                f"{where}: {app}/{deployment.get('name')} needs {cpu} CPU + {gpu} GPU per replica; "
                f"no worker group has a pod that big ({workers})"
            )
        replicas = deployment.get("num_replicas")
        if "autoscaling_config" in deployment:
            replicas = (deployment.get("autoscaling_config") or {}).get("max_replicas", 1)
        replicas = replicas if isinstance(replicas, int) else 1
        need_cpu += cpu * replicas
        need_gpu += gpu * replicas
    have_cpu = sum(w.cpus * w.max_replicas for w in workers)
    have_gpu = sum(w.gpus * w.max_replicas for w in workers)
    if need_cpu > have_cpu or need_gpu > have_gpu:
        problems.append(
            f"{where}: at max_replicas Serve needs {need_cpu} CPU / {need_gpu} GPU, the worker groups "
            f"reach {have_cpu} CPU / {have_gpu} GPU"
        )
    return problems


def check_rayservice(
    manifest: Manifest, ray_version: str, serve_config: Path = render.SERVE_CONFIG
) -> list[str]:
    doc, where = manifest.doc, manifest.where
    spec = doc.get("spec") or {}
    problems = _unknown(spec, RAYSERVICE_SPEC_KEYS, f"{where}.spec")
    for key in sorted(RAYSERVICE_DEPRECATED & set(spec)):
        problems.append(f"{where}.spec.{key}: deprecated and ignored by KubeRay (issue 1685); remove it")
    strategy = spec.get("upgradeStrategy")
    if strategy is not None:
        problems += _unknown(strategy, UPGRADE_STRATEGY_KEYS, f"{where}.spec.upgradeStrategy")
        if strategy.get("type") not in UPGRADE_TYPES:
            problems.append(
                f"{where}.spec.upgradeStrategy.type: {strategy.get('type')!r} not in {UPGRADE_TYPES}"
            )
    cluster = spec.get("rayClusterConfig")
    problems += check_cluster_spec(cluster, f"{where}.spec.rayClusterConfig", ray_version, rayservice=True)
    text = spec.get("serveConfigV2")
    if not isinstance(text, str):
        return [*problems, f"{where}.spec.serveConfigV2: must be a YAML string (`serveConfigV2: |`)"]
    config = yaml.safe_load(text)
    problems += [f"{where} serveConfigV2 {p}" for p in validate_serve_config(config)]
    source = render.load_serve_config(serve_config)
    variants = [render.k8s_serve_config(source, gpu_note_scorer=gpu) for gpu in (False, True)]
    if config not in variants:
        problems.append(
            f"{where}.spec.serveConfigV2 differs from {serve_config.name} (+ Kubernetes overrides): "
            "run `python kuberay/render.py`"
        )
    if _get(config, "http_options", "host") != render.K8S_HTTP_HOST:
        problems.append(
            f"{where} serveConfigV2.http_options.host: must be {render.K8S_HTTP_HOST} on Kubernetes"
        )
    if isinstance(cluster, dict) and isinstance(config, dict):
        problems += check_serve_capacity(config, cluster, where)
    return problems


def serve_app_file(root: Path = REPO_ROOT) -> Path:
    return root / "serve" / "app.py"


def app_deployment_names(app_config: dict) -> set[str]:
    """Deployment names of the application `import_path` builds, the way `serve deploy` builds it."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    target = import_attr(app_config["import_path"])
    app = call_user_app_builder_with_args_if_necessary(target, app_config.get("args") or {})
    built = build_app(app, name=app_config.get("name", "default"))
    return {deployment.name for deployment in built.deployments}


def check_app_deployments(config: dict) -> list[str]:
    """Every deployment the config names exists in its built application."""
    problems = []
    for app in config.get("applications") or []:
        names = app_deployment_names(app)
        for deployment in app.get("deployments") or []:
            if deployment.get("name") not in names:
                problems.append(
                    f"app {app.get('name')!r}: config deployment {deployment.get('name')!r} is not in "
                    f"{app['import_path']} (it has {sorted(names)})"
                )
    return problems


# ---------------------------------------------------------------- RayJobs


@dataclass(frozen=True)
class EntrypointCheck:
    status: str  # "ok", "pending" (command not written yet) or "error"
    message: str = ""


def check_entrypoint(entrypoint: str) -> EntrypointCheck:
    """Parse `python -m MODULE COMMAND ARGS` with the project's own Typer CLI (nothing runs)."""
    import typer

    argv = shlex.split(entrypoint)
    if len(argv) < 3 or argv[:2] != ["python", "-m"]:
        return EntrypointCheck("error", f"{entrypoint!r}: expected `python -m MODULE ...`")
    module, args = argv[2], argv[3:]
    command = args[0] if args else ""
    pending = (module, command) in PENDING_COMMANDS
    try:
        cli = importlib.import_module(f"{module}.cli")
    except ModuleNotFoundError as err:
        if err.name == f"{module}.cli" and pending:
            return EntrypointCheck("pending", f"{module}/cli.py not written yet")
        return EntrypointCheck("error", f"{entrypoint!r}: cannot import {module}.cli ({err})")
    app = getattr(cli, "app", None)
    if app is None:
        return EntrypointCheck("error", f"{module}.cli has no Typer `app`")
    group = typer.main.get_command(app)
    prog = f"python -m {module}"
    try:
        if not hasattr(group, "commands"):  # a one-command Typer app takes no command name
            group.make_context(prog, list(args))
            return EntrypointCheck("ok")
        if command not in group.commands:
            if pending:
                return EntrypointCheck("pending", f"`{prog} {command}` not written yet")
            return EntrypointCheck(
                "error", f"{entrypoint!r}: no command {command!r} in {sorted(group.commands)}"
            )
        ctx = group.make_context(prog, list(args))
        rest = [
            *(getattr(ctx, "protected_args", None) or getattr(ctx, "_protected_args", None) or []),
            *ctx.args,
        ]
        name, sub, sub_args = group.resolve_command(ctx, rest)
        sub.make_context(name, sub_args, parent=ctx)
    except Exception as err:  # click's UsageError family (vendored by Typer): bad or missing options
        return EntrypointCheck("error", f"{entrypoint!r}: {type(err).__name__}: {err}")
    return EntrypointCheck("ok")


def check_rayjob(manifest: Manifest, ray_version: str) -> list[str]:
    doc, where = manifest.doc, manifest.where
    spec = doc.get("spec") or {}
    problems = _unknown(spec, RAYJOB_SPEC_KEYS, f"{where}.spec")
    if not str(spec.get("entrypoint", "")).startswith("python -m "):
        problems.append(f"{where}.spec.entrypoint: expected `python -m ...`, got {spec.get('entrypoint')!r}")
    if spec.get("submissionMode") != "K8sJobMode":
        problems.append(f"{where}.spec.submissionMode: want K8sJobMode")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append(f"{where}.spec.shutdownAfterJobFinishes: must be true (else the cluster stays up)")
    ttl = spec.get("ttlSecondsAfterFinished")
    if not isinstance(ttl, int) or ttl <= 0:
        problems.append(f"{where}.spec.ttlSecondsAfterFinished: want a positive integer, got {ttl!r}")
    problems += check_cluster_spec(spec.get("rayClusterSpec"), f"{where}.spec.rayClusterSpec", ray_version)
    submitter = spec.get("submitterPodTemplate")
    if submitter is not None:
        swhere = f"{where}.spec.submitterPodTemplate"
        pod = _get(submitter, "spec") or {}
        problems += _unknown(pod, POD_SPEC_KEYS, f"{swhere}.spec")
        if pod.get("restartPolicy") not in ("Never", "OnFailure"):
            problems.append(f"{swhere}.spec.restartPolicy: a Job's pod needs Never (or OnFailure)")
        containers = pod.get("containers") or []
        if not containers:
            problems.append(f"{swhere}.spec.containers: missing")
        for i, container in enumerate(containers):
            problems += _unknown(container, CONTAINER_KEYS, f"{swhere}.containers[{i}]")
            if not _get(container, "resources", "limits"):
                problems.append(f"{swhere}.containers[{i}]: resources.limits missing")
        if _get(submitter, "metadata", "labels", SUBMITTER_LABEL) != _get(doc, "metadata", "name"):
            problems.append(
                f"{swhere}.metadata.labels: {SUBMITTER_LABEL}: {_get(doc, 'metadata', 'name')} missing "
                "(the NetworkPolicy admits the submitter to the dashboard port by it)"
            )
    return problems


# ---------------------------------------------------------------- Grafana dashboard


def dashboard_queries(path: Path = DASHBOARD_JSON) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows' nested panels included."""
    doc = json.loads(Path(path).read_text())
    out = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            out.extend(
                (panel.get("title", "?"), t["expr"]) for t in panel.get("targets") or [] if t.get("expr")
            )
            walk(panel.get("panels") or [])

    walk(doc.get("panels") or [])
    return out


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label matchers,
    ranges and grouping lists are removed, that are neither a function call nor a keyword."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group(0).lower() in PROMQL_KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def known_metric_names() -> set[str]:
    """The application's exported names (serve/metrics.py's registry) and Ray's listed ones."""
    from serve import metrics

    return metrics.exported_names() | set(RAY_DASHBOARD_METRICS)


def check_dashboard(path: Path = DASHBOARD_JSON, known: set[str] | None = None) -> list[str]:
    """Valid JSON; every query reads only metrics the app or Ray exports; quantiles over `_bucket`
    series; every panel on the `datasource` variable; the must-show metrics all used."""
    where = f"{Path(path).name}"
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        return [f"{where}: {err}"]
    known = known_metric_names() if known is None else known
    problems = [f"{where}: missing {k}" for k in ("uid", "title", "panels") if not doc.get(k)]
    used: set[str] = set()
    queries = dashboard_queries(path)
    if not queries:
        problems.append(f"{where}: no PromQL target")
    for title, expr in queries:
        names = promql_metric_names(expr)
        used |= names
        if not names:
            problems.append(f"{where} panel {title!r}: no metric in {expr!r}")
        for name in sorted(names - known):
            problems.append(f"{where} panel {title!r}: {name} is exported by neither the app nor Ray")
        if "histogram_quantile" in expr:
            for name in sorted(n for n in names if not n.endswith("_bucket")):
                problems.append(f"{where} panel {title!r}: histogram_quantile over {name}, not a _bucket")
    for variable in (doc.get("templating") or {}).get("list") or []:
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        inner = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query)
        if variable.get("type") == "query":
            names = promql_metric_names(inner.group(1)) if inner else set()
            if not names or names - known:
                problems.append(f"{where} variable {variable.get('name')}: {query!r} reads no known metric")

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            if panel.get("type") != "row" and (panel.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"{where} panel {panel.get('title')!r}: datasource is not ${{datasource}}")
            walk(panel.get("panels") or [])

    walk(doc.get("panels") or [])
    problems += [f"{where}: shows nothing from {name}" for name in DASHBOARD_MUST_USE if name not in used]
    return problems


def check_dashboard_configmap(manifest: Manifest, dashboard: Path = DASHBOARD_JSON) -> list[str]:
    """The Grafana sidecar's label, and the dashboard JSON embedded byte for byte."""
    doc, where = manifest.doc, manifest.where
    problems = []
    if _get(doc, "metadata", "labels", render.DASHBOARD_LABEL) != "1":
        problems.append(f'{where}.metadata.labels: {render.DASHBOARD_LABEL}: "1" (a string) is required')
    data = doc.get("data") or {}
    if set(data) != {dashboard.name}:
        problems.append(f"{where}.data: keys {sorted(data)}, want [{dashboard.name!r}]")
    elif data[dashboard.name] != Path(dashboard).read_text():
        problems.append(f"{where}.data: differs from {dashboard.name}: run `python kuberay/render.py`")
    return problems


# ---------------------------------------------------------------- ConfigMap, Secret, PodMonitor


def check_configmap(manifest: Manifest) -> list[str]:
    data = manifest.doc.get("data") or {}
    problems = [f"{manifest.where}: missing key {k}" for k in sorted(CONFIGMAP_KEYS - set(data))]
    if data.get("MEDISCALE_ENV", "production") != "production":
        problems.append(f"{manifest.where}: MEDISCALE_ENV must be production (secrets required at start)")
    if data.get("MEDISCALE_DATA_DIR") not in (None, SHARED_MOUNT):
        problems.append(f"{manifest.where}: MEDISCALE_DATA_DIR must be the shared mount {SHARED_MOUNT}")
    for key in data:
        if re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|USERNAME", key):
            problems.append(f"{manifest.where}: {key} is a credential: it belongs in Secret {SECRET_NAME}")
    for key, value in data.items():
        if isinstance(value, str) and not plain_http_allowed(key, value):
            problems.append(
                f"{manifest.where}: {key}={value!r} is plain http: use https (TLS in front of the service)"
            )
    return problems


def plain_http_allowed(key: str, value: str) -> bool:
    """False for an http:// URL to anything but the pod itself or an allowed in-namespace Service."""
    if not value.strip().lower().startswith("http://"):
        return True
    host = (urlsplit(value.strip()).hostname or "").lower()
    services = PLAIN_HTTP_SERVICES.get(key, ())
    return host in LOCAL_HOSTS or any(
        host in (s, f"{s}.{APP_NAMESPACE}") or host.startswith(f"{s}.{APP_NAMESPACE}.svc") for s in services
    )


def check_secret_template(manifest: Manifest) -> list[str]:
    """A template only: the expected keys, each a `<placeholder>`; never a real (or base64) value."""
    doc, where = manifest.doc, manifest.where
    problems = []
    if doc.get("data"):
        problems.append(f"{where}.data: base64 values in a template; use stringData placeholders")
    values = doc.get("stringData") or {}
    name = _get(doc, "metadata", "name")
    if name not in SECRET_TEMPLATES:
        problems.append(f"{where}: unexpected Secret {name!r} (known: {sorted(SECRET_TEMPLATES)})")
    elif set(values) != SECRET_TEMPLATES[name]:
        problems.append(f"{where}.stringData: keys {sorted(values)}, want {sorted(SECRET_TEMPLATES[name])}")
    for key, value in values.items():
        if not (isinstance(value, str) and PLACEHOLDER.match(value)):
            problems.append(f"{where}.stringData.{key}: not a <placeholder>: templates never hold values")
    return problems


def check_pvc(manifest: Manifest) -> list[str]:
    modes = _get(manifest.doc, "spec", "accessModes") or []
    if "ReadWriteMany" not in modes:
        return [f"{manifest.where}.spec.accessModes: {modes}; pods on several nodes need ReadWriteMany"]
    return []


def _container_ports(spec: dict, node_type: str) -> list[set[str]]:
    heads = [spec.get("headGroupSpec") or {}]
    groups = heads if node_type == "head" else spec.get("workerGroupSpecs") or []
    return [{p.get("name") for p in ray_container(g).get("ports") or []} for g in groups]


def check_podmonitors(manifests: list[Manifest]) -> list[str]:
    """Each scraped port name is declared on the Ray container of every pod the monitor selects."""
    problems = []
    clusters = [(m.where, cluster_spec(m)) for m in manifests if cluster_spec(m) is not None]
    for m in manifests:
        if m.doc.get("kind") != "PodMonitor":
            continue
        spec = m.doc.get("spec") or {}
        node_type = _get(spec, "selector", "matchLabels", "ray.io/node-type")
        if node_type not in ("head", "worker"):
            problems.append(f"{m.where}.spec.selector: must select on ray.io/node-type (head or worker)")
            continue
        endpoints = spec.get("podMetricsEndpoints") or []
        if not endpoints:
            problems.append(f"{m.where}.spec.podMetricsEndpoints: empty")
        for endpoint in endpoints:
            port = endpoint.get("port")
            for where, cluster in clusters:
                for i, declared in enumerate(_container_ports(cluster, node_type)):
                    if port not in declared:
                        problems.append(f"{m.where}: port {port!r} not declared on {where} {node_type}[{i}]")
    return problems


# ---------------------------------------------------------------- NetworkPolicies


def _check_selector(selector: Any, where: str) -> list[str]:
    """A metav1.LabelSelector: string label values (YAML `true` is a bool: quote it), valid operators."""
    if not isinstance(selector, dict):
        return [f"{where}: expected a mapping, got {type(selector).__name__}"]
    problems = _unknown(selector, LABEL_SELECTOR_KEYS, where)
    for key, value in (selector.get("matchLabels") or {}).items():
        if not isinstance(value, str):
            problems.append(f"{where}.matchLabels.{key}: {value!r} must be a string (quote it)")
    for i, expr in enumerate(selector.get("matchExpressions") or []):
        at = f"{where}.matchExpressions[{i}]"
        operator, values = expr.get("operator"), expr.get("values")
        if not expr.get("key") or operator not in SELECTOR_OPERATORS:
            problems.append(f"{at}: needs a key and an operator in {sorted(SELECTOR_OPERATORS)}")
        elif operator in ("In", "NotIn") and not values:
            problems.append(f"{at}: {operator} needs values")
        elif operator in ("Exists", "DoesNotExist") and values:
            problems.append(f"{at}: {operator} takes no values")
    return problems


def check_networkpolicy(manifest: Manifest) -> list[str]:
    """networking.k8s.io/v1 fields, and no rule that admits everyone: a rule without `from`, an
    empty peer, `namespaceSelector: {}` or an ipBlock of the whole internet."""
    doc, where = manifest.doc, manifest.where
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [f"{where}.spec: missing"]
    problems = _unknown(spec, NETWORKPOLICY_SPEC_KEYS, f"{where}.spec")
    if "podSelector" not in spec:
        problems.append(f"{where}.spec.podSelector: required ({{}} selects every pod of the namespace)")
    else:
        problems += _check_selector(spec["podSelector"], f"{where}.spec.podSelector")
    types_ = spec.get("policyTypes")
    if not isinstance(types_, list) or not types_ or not set(types_) <= {"Ingress", "Egress"}:
        problems.append(f"{where}.spec.policyTypes: {types_!r}; list Ingress and/or Egress explicitly")
    for i, rule in enumerate(spec.get("ingress") or []):
        at = f"{where}.spec.ingress[{i}]"
        problems += _unknown(rule, NETWORKPOLICY_RULE_KEYS, at)
        if not isinstance(rule, dict):
            continue
        if not rule.get("from"):
            problems.append(f"{at}: no `from`: admits every source, in and outside the cluster")
        for j, peer in enumerate(rule.get("from") or []):
            pat = f"{at}.from[{j}]"
            problems += _unknown(peer, NETWORKPOLICY_PEER_KEYS, pat)
            if not isinstance(peer, dict):
                continue
            if not peer:
                problems.append(f"{pat}: empty peer")
            if peer.get("namespaceSelector") == {}:
                problems.append(f"{pat}.namespaceSelector: {{}} admits every namespace")
            if _get(peer, "ipBlock", "cidr") in ("0.0.0.0/0", "::/0"):
                problems.append(f"{pat}.ipBlock: {peer['ipBlock']['cidr']} admits every address")
            for key in ("podSelector", "namespaceSelector"):
                if peer.get(key):
                    problems += _check_selector(peer[key], f"{pat}.{key}")
        for j, port in enumerate(rule.get("ports") or []):
            pat = f"{at}.ports[{j}]"
            problems += _unknown(port, NETWORKPOLICY_PORT_KEYS, pat)
            if isinstance(port, dict) and port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
                problems.append(f"{pat}.protocol: {port.get('protocol')!r}")
    return problems


def selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics ({} matches everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, operator, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and present and labels[key] in values)
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True


@dataclass(frozen=True)
class Source:
    """Where a connection comes from: a pod's labels and its namespace's labels."""

    what: str
    namespace: tuple[tuple[str, str], ...]
    pod: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, what: str, namespace: str | dict[str, str], pod: dict[str, str] | None = None) -> Source:
        ns = {NS_NAME_LABEL: namespace} if isinstance(namespace, str) else namespace
        return cls(what, tuple(sorted(ns.items())), tuple(sorted((pod or {}).items())))


def _peer_admits(peer: dict, source: Source) -> bool:
    if "ipBlock" in peer:
        return True  # an address range may hold anything: counted as open
    namespace, pod = dict(source.namespace), dict(source.pod)
    if "namespaceSelector" not in peer and namespace.get(NS_NAME_LABEL) != APP_NAMESPACE:
        return False  # a bare podSelector selects pods of the policy's own namespace
    if "namespaceSelector" in peer and not selector_matches(peer["namespaceSelector"], namespace):
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], pod)


def _port_covers(entry: dict, port: int, named: dict[str, int]) -> bool:
    if entry.get("protocol", "TCP") != "TCP":
        return False
    value = entry.get("port")
    if value is None:
        return True
    number = named.get(value) if isinstance(value, str) else value
    return number is not None and number <= port <= entry.get("endPort", number)


def ingress_admits(
    policies: list[dict],
    pod: dict[str, str],
    port: int,
    source: Source,
    named: dict[str, int] | None = None,
) -> bool:
    """Whether the NetworkPolicies (of the app namespace) let `source` reach `port` of a pod with
    these labels: open unless an Ingress policy selects the pod, then the union of their rules."""
    selecting = [
        p
        for p in policies
        if "Ingress" in (_get(p, "spec", "policyTypes") or ["Ingress"])
        and selector_matches(_get(p, "spec", "podSelector"), pod)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in _get(policy, "spec", "ingress") or []:
            ports = rule.get("ports") or [{}]
            if not any(_port_covers(entry, port, named or {}) for entry in ports):
                continue
            if not rule.get("from") or any(_peer_admits(peer, source) for peer in rule["from"]):
                return True
    return False


@dataclass(frozen=True)
class RayPods:
    """The pods of one group of a Ray cluster manifest, as KubeRay labels them."""

    where: str
    cluster: str  # the RayService/RayCluster/RayJob name
    head: bool
    labels: dict[str, str]
    ports: dict[str, int]


def ray_pods(manifests: list[Manifest]) -> list[RayPods]:
    out = []
    for m in manifests:
        spec = cluster_spec(m)
        if not isinstance(spec, dict):
            continue
        name = _get(m.doc, "metadata", "name")
        groups = [("head", spec.get("headGroupSpec") or {})]
        groups += [(str(g.get("groupName")), g) for g in spec.get("workerGroupSpecs") or []]
        for group_name, group in groups:
            labels = dict(_get(group, "template", "metadata", "labels") or {})
            labels["ray.io/node-type"] = "head" if group_name == "head" else "worker"
            labels["ray.io/group"] = "headgroup" if group_name == "head" else group_name
            ports = {p.get("name"): p.get("containerPort") for p in ray_container(group).get("ports") or []}
            out.append(RayPods(f"{m.where} {group_name}", name, group_name == "head", labels, ports))
    return out


def _submitter(manifest: Manifest) -> Source | None:
    spec = manifest.doc.get("spec") or {}
    if manifest.doc.get("kind") != "RayJob" or spec.get("submissionMode") != "K8sJobMode":
        return None
    labels = _get(spec, "submitterPodTemplate", "metadata", "labels") or {}
    return Source.of(f"the submitter pod of {manifest.where}", APP_NAMESPACE, labels)


def check_network_policies(manifests: list[Manifest]) -> list[str]:
    """Ingress is denied by default; each Ray cluster's GCS, dashboard/Jobs API, client and internal
    ports admit only its own pods (its RayJob submitter and the operator: the dashboard port); Serve
    admits the ingress namespace and the monitor jobs; Prometheus reaches the scraped ports."""
    policies = [m.doc for m in manifests if m.doc.get("kind") == "NetworkPolicy"]
    if not policies:
        return ["kuberay/: no NetworkPolicy: every Ray port is open to the whole cluster"]
    problems = []
    if not any(
        _get(p, "spec", "podSelector") in ({}, {"matchLabels": {}})
        and "Ingress" in (_get(p, "spec", "policyTypes") or [])
        and not _get(p, "spec", "ingress")
        for p in policies
    ):
        problems.append(
            "kuberay/: no default-deny ingress NetworkPolicy (podSelector {}, policyTypes [Ingress], no rule)"
        )
    pods = ray_pods(manifests)
    others = [p for p in policies if _get(p, "spec", "ingress")]  # all but the default deny
    operator = Source.of("the KubeRay operator", OPERATOR_NAMESPACE, OPERATOR_POD_LABELS)
    strangers = [
        Source.of("pods of other namespaces", "default", {}),
        Source.of("the ingress namespace", {NS_NAME_LABEL: "ingress", INGRESS_NAMESPACE_LABEL[0]: "true"}),
        Source.of("unlabelled pods of the namespace", APP_NAMESPACE, {}),
    ]
    monitoring = {
        _get(m.doc, "metadata", "namespace") for m in manifests if m.doc.get("kind") == "PodMonitor"
    }
    strangers += [Source.of(f"Prometheus ({ns})", ns) for ns in sorted(n for n in monitoring if n)]
    submitters = {_get(m.doc, "metadata", "name"): _submitter(m) for m in manifests if _submitter(m)}
    for pod in pods:
        if pod.labels.get(CLUSTER_LABEL) != pod.cluster:
            problems.append(
                f"{pod.where}: pod template label {CLUSTER_LABEL}: {pod.cluster} missing (the "
                "NetworkPolicies select Ray pods by it)"
            )
            continue
        if not any(selector_matches(_get(p, "spec", "podSelector"), pod.labels) for p in others):
            problems.append(f"{pod.where}: no NetworkPolicy (but the default deny) selects these Ray pods")
        peers = [p for p in pods if p.cluster == pod.cluster]
        outsiders = [*strangers]
        outsiders += [
            Source.of(f"pods of {p.where}", APP_NAMESPACE, p.labels) for p in pods if p.cluster != pod.cluster
        ]
        outsiders += [s for name, s in submitters.items() if name != pod.cluster]
        ports = {"internal": RAY_INTERNAL_PORT, **(RAY_CONTROL_PORTS if pod.head else {})}
        for port_name, port in ports.items():
            for peer in peers:
                own = Source.of(peer.where, APP_NAMESPACE, peer.labels)
                if not ingress_admits(policies, pod.labels, port, own, pod.ports):
                    problems.append(f"{pod.where}: {peer.where} cannot reach port {port} ({port_name})")
                    break
            opened = [s.what for s in outsiders if ingress_admits(policies, pod.labels, port, s, pod.ports)]
            if opened:
                more = f" (+{len(opened) - 2} more)" if len(opened) > 2 else ""
                problems.append(
                    f"{pod.where}: port {port} ({port_name}) is open to {', '.join(opened[:2])}{more}; only "
                    "the pods of the same Ray cluster (on the dashboard port also its submitter and the "
                    "operator) may reach it"
                )
            for source in (operator, submitters.get(pod.cluster)):  # the dashboard port, only it
                if source is None or not pod.head:
                    continue
                opened = ingress_admits(policies, pod.labels, port, source, pod.ports)
                if port == DASHBOARD_PORT and not opened:
                    problems.append(f"{pod.where}: {source.what} cannot reach the dashboard port {port}")
                elif port != DASHBOARD_PORT and opened:
                    problems.append(f"{pod.where}: port {port} ({port_name}) is open to {source.what}")
    problems += _check_serve_reachability(manifests, policies, pods)
    problems += _check_scrape_reachability(manifests, policies, pods)
    return problems


def _check_serve_reachability(
    manifests: list[Manifest], policies: list[dict], pods: list[RayPods]
) -> list[str]:
    """Serve's port on the RayService's workers: open to the ingress namespace and the monitor
    RayJobs (MEDISCALE_SERVICE_URL), closed to other namespaces."""
    services = {_get(m.doc, "metadata", "name") for m in manifests if m.doc.get("kind") == "RayService"}
    ingress = Source.of(
        "the clinician ingress namespace", {NS_NAME_LABEL: "ingress", INGRESS_NAMESPACE_LABEL[0]: "true"}
    )
    monitor_jobs = {
        _get(m.doc, "metadata", "name")
        for m in manifests
        if m.doc.get("kind") == "RayJob"
        and str(_get(m.doc, "spec", "entrypoint")).startswith("python -m monitor ")
    }
    clients = [
        Source.of(f"the monitor job {p.where}", APP_NAMESPACE, p.labels)
        for p in pods
        if p.cluster in monitor_jobs and p.head  # the entrypoint (the client) runs on the head
    ]
    strangers = [
        Source.of("pods of other namespaces", "default"),
        Source.of("Prometheus", "prometheus-system"),
    ]
    problems = []
    for pod in pods:
        if pod.cluster not in services or pod.head:
            continue
        for source in [ingress, *clients]:
            if not ingress_admits(policies, pod.labels, SERVE_PORT, source, pod.ports):
                problems.append(f"{pod.where}: {source.what} cannot reach Serve ({SERVE_PORT})")
        for source in strangers:
            if ingress_admits(policies, pod.labels, SERVE_PORT, source, pod.ports):
                problems.append(f"{pod.where}: Serve ({SERVE_PORT}) is open to {source.what}")
    return problems


def _check_scrape_reachability(
    manifests: list[Manifest], policies: list[dict], pods: list[RayPods]
) -> list[str]:
    """Every port a PodMonitor scrapes is open to Prometheus's namespace (the PodMonitor's)."""
    problems = []
    for m in manifests:
        if m.doc.get("kind") != "PodMonitor":
            continue
        namespace = _get(m.doc, "metadata", "namespace") or APP_NAMESPACE
        prometheus = Source.of(f"Prometheus ({namespace})", namespace)
        selector = _get(m.doc, "spec", "selector") or {}
        for pod in pods:
            if not selector_matches(selector, pod.labels):
                continue
            for endpoint in _get(m.doc, "spec", "podMetricsEndpoints") or []:
                port = pod.ports.get(endpoint.get("port"))
                if port is not None and not ingress_admits(policies, pod.labels, port, prometheus, pod.ports):
                    problems.append(
                        f"{pod.where}: {prometheus.what} cannot scrape {endpoint.get('port')} ({port})"
                    )
    return problems


# ---------------------------------------------------------------- all manifests


def check_manifest(
    manifest: Manifest, ray_version: str, serve_config: Path = render.SERVE_CONFIG
) -> list[str]:
    doc, where = manifest.doc, manifest.where
    if not isinstance(doc, dict):
        return [f"{where}: not a mapping"]
    problems = []
    kind = doc.get("kind")
    for key in ("apiVersion", "kind"):
        if not doc.get(key):
            problems.append(f"{where}: missing {key}")
    if not _get(doc, "metadata", "name"):
        problems.append(f"{where}: missing metadata.name")
    if kind not in KIND_API_VERSIONS:
        return [*problems, f"{where}: unexpected kind {kind!r} (known: {sorted(KIND_API_VERSIONS)})"]
    if doc.get("apiVersion") != KIND_API_VERSIONS[kind]:
        problems.append(f"{where}: apiVersion {doc.get('apiVersion')!r}, want {KIND_API_VERSIONS[kind]!r}")
    problems += check_all_images(doc, ray_version, where)
    problems += check_no_installs(manifest)
    if kind == "RayService":
        problems += check_rayservice(manifest, ray_version, serve_config)
    elif kind == "RayJob":
        problems += check_rayjob(manifest, ray_version)
    elif kind == "RayCluster":
        problems += check_cluster_spec(doc.get("spec"), f"{where}.spec", ray_version)
    elif kind == "CronJob":
        problems += check_cronjob(manifest, ray_version)
    elif kind == "ConfigMap" and _get(doc, "metadata", "name") == render.WATCH_CONFIGMAP_NAME:
        problems += check_watch_configmap(manifest, ray_version)
    elif kind == "ConfigMap" and _get(doc, "metadata", "labels", render.DASHBOARD_LABEL) is not None:
        problems += check_dashboard_configmap(manifest)
    elif kind == "ConfigMap":
        problems += check_configmap(manifest)
    elif kind == "Secret":
        problems += check_secret_template(manifest)
    elif kind == "PersistentVolumeClaim":
        problems += check_pvc(manifest)
    elif kind == "NetworkPolicy":
        problems += check_networkpolicy(manifest)
    return problems


# ---------------------------------------------------------------- the nightly watch CronJob


def check_cronjob(manifest: Manifest, ray_version: str) -> list[str]:
    """A schedule, one pass at a time, a ServiceAccount, the project image, limits, non-root, and a
    command the project's CLI parses."""
    doc, where = manifest.doc, manifest.where
    spec = doc.get("spec") or {}
    problems = []
    if not isinstance(spec.get("schedule"), str) or len(spec["schedule"].split()) != 5:
        problems.append(f"{where}.spec.schedule: a five-field cron schedule is required")
    if spec.get("concurrencyPolicy") != "Forbid":
        problems.append(f"{where}.spec.concurrencyPolicy: Forbid (a pass must not overlap the previous one)")
    pod = _get(spec, "jobTemplate", "spec", "template", "spec") or {}
    if not pod.get("serviceAccountName"):
        problems.append(f"{where}: the pod needs a serviceAccountName (RBAC to create RayJobs)")
    for i, container in enumerate(pod.get("containers") or []):
        at = f"{where}.containers[{i}]"
        problems += check_image(container.get("image"), ray_version, f"{at}.image", gpu=False)
        if not _get(container, "resources", "limits"):
            problems.append(f"{at}: resources.limits missing")
        if _get(container, "securityContext", "allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: securityContext.allowPrivilegeEscalation must be false")
        command = container.get("command") or []
        checked = check_entrypoint(shlex.join(command)) if command else EntrypointCheck("error", "no command")
        if checked.status != "ok":
            problems.append(f"{at}.command: {checked.message}")
    if _get(pod, "securityContext", "runAsNonRoot") is not True:
        problems.append(f"{where}: the pod must run as non-root")
    return problems


def check_watch_configmap(manifest: Manifest, ray_version: str) -> list[str]:
    """The RayJob the CronJob submits: kuberay/rayjob-watch.yaml byte for byte, itself a valid RayJob."""
    doc, where = manifest.doc, manifest.where
    data = doc.get("data") or {}
    if set(data) != {render.WATCH_KEY}:
        return [f"{where}.data: keys {sorted(data)}, want [{render.WATCH_KEY!r}]"]
    if data[render.WATCH_KEY] != render.WATCH_RAYJOB.read_text():
        return [f"{where}.data: differs from {render.WATCH_RAYJOB.name}: run `python kuberay/render.py`"]
    embedded = Manifest(manifest.path, manifest.index, yaml.safe_load(data[render.WATCH_KEY]))
    return check_rayjob(embedded, ray_version)


def check_watch_wiring(manifests: list[Manifest]) -> list[str]:
    """The CronJob's ServiceAccount may create RayJobs, and the ConfigMap it mounts exists."""
    by_kind: dict[str, dict[str, Any]] = {}
    for m in manifests:
        if isinstance(m.doc, dict):
            by_kind.setdefault(m.doc.get("kind"), {})[_get(m.doc, "metadata", "name")] = m.doc
    problems = []
    for name, cron in (by_kind.get("CronJob") or {}).items():
        pod = _get(cron, "spec", "jobTemplate", "spec", "template", "spec") or {}
        account = pod.get("serviceAccountName")
        if account not in (by_kind.get("ServiceAccount") or {}):
            problems.append(f"CronJob/{name}: ServiceAccount {account!r} is not defined")
        bound = [
            b
            for b in (by_kind.get("RoleBinding") or {}).values()
            if {"kind": "ServiceAccount", "name": account}
            in [{"kind": s.get("kind"), "name": s.get("name")} for s in b.get("subjects") or []]
        ]
        roles = [(by_kind.get("Role") or {}).get(_get(b, "roleRef", "name")) or {} for b in bound]
        if not any(
            "ray.io" in (rule.get("apiGroups") or [])
            and "rayjobs" in (rule.get("resources") or [])
            and "create" in (rule.get("verbs") or [])
            for role in roles
            for rule in role.get("rules") or []
        ):
            problems.append(
                f"CronJob/{name}: ServiceAccount {account!r} is not bound to a Role that creates rayjobs"
            )
        for volume in pod.get("volumes") or []:
            ref = _get(volume, "configMap", "name")
            if ref and ref not in (by_kind.get("ConfigMap") or {}):
                problems.append(f"CronJob/{name}: mounts ConfigMap {ref!r}, which no manifest defines")
    return problems


def check_manifests(manifests: list[Manifest], ray_version: str) -> list[str]:
    problems = [p for m in manifests for p in check_manifest(m, ray_version)]
    problems += check_podmonitors(manifests)
    problems += check_watch_wiring(manifests)
    problems += check_network_policies(manifests)
    problems += check_secret_refs(manifests)
    kinds = {m.doc.get("kind") for m in manifests if isinstance(m.doc, dict)}
    problems += [f"kuberay/: no {k} manifest" for k in sorted(set(KIND_API_VERSIONS) - kinds)]
    names = {
        (m.doc.get("kind"), _get(m.doc, "metadata", "name")) for m in manifests if isinstance(m.doc, dict)
    }
    for ref in (("ConfigMap", CONFIGMAP_NAME), ("PersistentVolumeClaim", PVC_NAME)):
        if ref not in names:
            problems.append(f"kuberay/: the pods refer to {ref[0]} {ref[1]}, which no manifest defines")
    return problems


def secret_refs(obj: Any) -> Iterator[tuple[str, str | None]]:
    """(Secret name, key or None for all keys) of every reference in a document: envFrom secretRef,
    env secretKeyRef, secret volumes (their items) and KubeRay's authOptions.secretName."""
    if isinstance(obj, dict):
        if isinstance(obj.get("secretRef"), dict):
            yield obj["secretRef"].get("name"), None
        if isinstance(obj.get("secretKeyRef"), dict):
            yield obj["secretKeyRef"].get("name"), obj["secretKeyRef"].get("key")
        if isinstance(obj.get("secret"), dict) and obj["secret"].get("secretName"):
            items = obj["secret"].get("items") or [{}]
            yield from ((obj["secret"]["secretName"], item.get("key")) for item in items)
        if isinstance(obj.get("authOptions"), dict) and obj["authOptions"].get("secretName"):
            yield obj["authOptions"]["secretName"], RAY_AUTH_SECRET_KEY
        for value in obj.values():
            yield from secret_refs(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from secret_refs(value)


def check_secret_refs(manifests: list[Manifest]) -> list[str]:
    """Every Secret (and key) the pods and clusters name is in the templates of secret.example.yaml."""
    templates = {
        _get(m.doc, "metadata", "name"): set(m.doc.get("stringData") or {})
        for m in manifests
        if m.doc.get("kind") == "Secret"
    }
    problems = []
    for m in manifests:
        for name, key in sorted(set(secret_refs(m.doc)), key=str):
            if name not in templates:
                problems.append(f"{m.where}: refers to Secret {name!r}, which no manifest (template) defines")
            elif key is not None and key not in templates[name]:
                problems.append(
                    f"{m.where}: refers to key {key!r} of Secret {name!r}, which it does not hold"
                )
    return problems


# ---------------------------------------------------------------- cluster launcher (ray up)


def check_launcher(config: Any, ray_version: str) -> list[str]:
    """Ray's own launcher validation (defaults filled offline), then the project's conventions."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    if not isinstance(config, dict):
        return ["raycluster.yaml: not a mapping"]
    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except jsonschema.ValidationError as err:
        path = ".".join(map(str, err.absolute_path)) or "<top>"
        return [f"raycluster.yaml {path}: {err.message}"]
    except (ValueError, KeyError, TypeError, AssertionError, RuntimeError, NotImplementedError) as err:
        return [f"raycluster.yaml: {type(err).__name__}: {err}"]
    problems = []
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    if head.get("resources", {}).get("CPU") != 0:
        problems.append('raycluster.yaml: the head node type needs resources {"CPU": 0} (it runs no tasks)')
    docker = config.get("docker") or {}
    problems += check_image(docker.get("image"), ray_version, "raycluster.yaml docker.image", gpu=False)
    for name, node_type in node_types.items():
        gpu = node_type.get("resources", {}).get("GPU", 0) > 0
        image = _get(node_type, "docker", "worker_image") or docker.get("worker_image") or docker.get("image")
        if name != config["head_node_type"]:
            problems += check_image(image, ray_version, f"raycluster.yaml node type {name}", gpu=gpu)
    for where, image in iter_images(config):
        problems += check_image(image, ray_version, f"raycluster.yaml {where}")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = [c for c in config.get(key) or [] if "ray start" in str(c)]
        if not commands or any("RAY_AUTH_MODE=token" not in str(c) for c in commands):
            problems.append(
                f"raycluster.yaml {key}: `ray start` must run with RAY_AUTH_MODE=token (token auth)"
            )
    mounted = [remote for remote, local in (config.get("file_mounts") or {}).items() if local in (".", "./")]
    if not mounted:
        problems.append("raycluster.yaml file_mounts: the working tree ('.') is not synced to the nodes")
    elif not any(mounted[0] in cmd and "pip install" in cmd for cmd in config.get("setup_commands") or []):
        problems.append(f"raycluster.yaml setup_commands: nothing installs the project from {mounted[0]}")
    return problems


# ---------------------------------------------------------------- Dockerfile


def check_dockerfile(text: str, ray_version: str) -> list[str]:
    problems = []
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    from_index = next((i for i, line in enumerate(lines) if line.upper().startswith("FROM ")), None)
    if from_index is None:
        return ["Dockerfile: no FROM"]
    args = {}
    for line in lines[:from_index]:
        match = re.match(r"ARG\s+(\w+)(?:=(.*))?$", line, re.IGNORECASE)
        if match:
            args[match[1]] = (match[2] or "").strip().strip('"')
    if args.get("RAY_VERSION") != ray_version:
        problems.append(
            f"Dockerfile: ARG RAY_VERSION={args.get('RAY_VERSION')!r} before FROM, want {ray_version!r}"
        )
    base = lines[from_index].split()[1]
    if not base.startswith("rayproject/ray:${RAY_VERSION}") and image_tag(base) != ray_version:
        problems.append(f"Dockerfile: FROM {base}: the base tag must be ${{RAY_VERSION}}")
    allowed = {"pyproject.toml", "README.md", "data", "ml", "tune", "serve", "monitor"}
    for line in lines:
        if line.upper().startswith(("COPY ", "ADD ")):
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            for source in parts[:-1]:
                if source.rstrip("/") not in allowed:
                    problems.append(f"Dockerfile: copies {source!r} (only the project's packages belong)")
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("Dockerfile: must end as the non-root user `ray` (USER 1000:100)")
    if "download.pytorch.org/whl/cpu" not in text or "--extra-index-url" not in text:
        problems.append("Dockerfile: the CPU image must take torch from the PyTorch CPU index")
    return problems


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def dockerignored(path: str, dockerignore: str) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching rule wins, and a
    rule matching a parent folder applies to what is inside)."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in dockerignore.splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        regex = _ignore_regex(rule.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


def check_dockerignore(text: str) -> list[str]:
    must_ignore = [
        ".venv/bin/python",
        "artifacts/mlflow.db",
        "tests/test_x.py",
        ".git/config",
        "ml/__pycache__/x.pyc",
    ]
    must_keep = [
        "pyproject.toml",
        "README.md",
        "data/schema.py",
        "ml/cli.py",
        "tune/__init__.py",
        "serve/app.py",
    ]
    problems = [
        f".dockerignore: {p} would be sent to the build" for p in must_ignore if not dockerignored(p, text)
    ]
    problems += [
        f".dockerignore: {p} is needed by the build but ignored" for p in must_keep if dockerignored(p, text)
    ]
    return problems


# ---------------------------------------------------------------- everything


def run_all(root: Path = REPO_ROOT) -> tuple[list[str], list[str]]:
    """(problems, notes): every check over the repository's files; notes are pending checks."""
    version = installed_ray_version()
    manifests = load_manifests(manifest_paths(root / "kuberay"))
    problems = check_manifests(manifests, version)
    diff = render.drift(root / "kuberay" / "rayservice.yaml", root / "serve" / "config.yaml")
    if diff:
        problems.append("kuberay/rayservice.yaml: serveConfigV2 drifted: run `python kuberay/render.py`")
    dashboard = root / "kuberay" / "grafana" / render.DASHBOARD_JSON.name
    if render.dashboard_drift(root / "kuberay" / render.DASHBOARD_CONFIGMAP.name, dashboard):
        problems.append(
            "kuberay/grafana-dashboard.yaml: drifted from the dashboard JSON: run `python kuberay/render.py`"
        )
    problems += check_dashboard(dashboard)
    problems += check_launcher(yaml.safe_load((root / "raycluster.yaml").read_text()), version)
    problems += check_dockerfile((root / "Dockerfile").read_text(), version)
    problems += check_dockerignore((root / ".dockerignore").read_text())
    notes = []
    for m in manifests:
        if m.doc.get("kind") == "RayJob":
            result = check_entrypoint(m.doc["spec"]["entrypoint"])
            if result.status == "error":
                problems.append(f"{m.where}: {result.message}")
            elif result.status == "pending":
                notes.append(f"{m.where}: entrypoint check pending: {result.message}")
    if serve_app_file(root).exists():
        problems += check_app_deployments(render.load_serve_config(root / "serve" / "config.yaml"))
    else:
        notes.append("serve/app.py not written yet: deployment names checked against the config only")
    return problems, notes


def main() -> int:
    problems, notes = run_all()
    for note in notes:
        sys.stdout.write(f"note: {note}\n")
    for problem in problems:
        sys.stdout.write(f"problem: {problem}\n")
    sys.stdout.write(f"{len(problems)} problem(s)\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
