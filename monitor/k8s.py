"""Create a RayJob from inside a Kubernetes pod: what kuberay/cronjob-watch.yaml runs each night.

The CronJob's pod uses the project's image, so no third-party kubectl image is trusted with the
namespace. This POSTs the manifest to the API server with the pod's ServiceAccount token (RBAC:
create rayjobs only), with `generateName` so each pass is a new RayJob. Standard library only.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class SubmitError(ValueError):
    """The manifest is not a RayJob, or the API server refused it."""


def rayjob_body(manifest: str) -> dict[str, Any]:
    """The RayJob to create: the manifest with `metadata.name` turned into `generateName`."""
    doc = yaml.safe_load(manifest)
    if not isinstance(doc, dict) or doc.get("kind") != "RayJob" or doc.get("apiVersion") != "ray.io/v1":
        raise SubmitError("the manifest is not a ray.io/v1 RayJob")
    meta = dict(doc.get("metadata") or {})
    name = meta.pop("name", None) or meta.get("generateName")
    if not name:
        raise SubmitError("the RayJob has neither metadata.name nor metadata.generateName")
    meta["generateName"] = name.rstrip("-") + "-"
    return {**doc, "metadata": meta}


def submit(manifest_path: Path, namespace: str | None = None, api: str | None = None) -> str:
    """Create the RayJob in the pod's namespace; returns the generated name."""
    body = rayjob_body(Path(manifest_path).read_text())
    namespace = (
        namespace or os.environ.get("POD_NAMESPACE") or (SERVICE_ACCOUNT / "namespace").read_text().strip()
    )
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if api is None and not host:
        raise SubmitError("not inside a Kubernetes pod (KUBERNETES_SERVICE_HOST is not set)")
    base = api or f"https://{host}:{port}"
    token = (SERVICE_ACCOUNT / "token").read_text().strip()
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    request = urllib.request.Request(
        f"{base}/apis/ray.io/v1/namespaces/{namespace}/rayjobs",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            created = json.loads(response.read())
    except urllib.error.HTTPError as err:  # the API server's Status message, never the token
        detail = json.loads(err.read() or b"{}").get("message", "")
        raise SubmitError(f"the API server refused the RayJob: HTTP {err.code} {detail[:300]}") from None
    return str(created["metadata"]["name"])
