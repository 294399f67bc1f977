"""The cluster recipes in deploy/, checked without a cluster: every Kubernetes manifest against the
Kubernetes schemas (kubernetes-validate, from PyPI), the probes against the image's own health check,
ports and variables against Settings, and the compose file's pods against each other. Validated, not
run: no cluster and no GPU host here."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.common.settings import Settings, env_name, load_settings
from tests.helpers.procs import REPO, VENV_PYTHON

DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
SETTINGS = {env_name(name) for name in Settings.model_fields}
DEFAULTS = Settings()


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def containers(doc: dict) -> list[dict]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []) if doc else []


def healthcheck_command() -> list[str]:
    text = (REPO / "docker" / "Dockerfile").read_text()
    return json.loads(re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", text).group(1))


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_every_manifest_is_valid_kubernetes(path):
    for doc in documents(path):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_pods_probes_ports_and_variables_match_the_image():
    docs = [d for p in MANIFESTS for d in documents(p)]
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "comfyui")
    (pod,) = containers(deployment)
    assert pod["livenessProbe"]["exec"]["command"] == healthcheck_command()
    assert pod["startupProbe"]["exec"]["command"] == healthcheck_command()
    assert pod["readinessProbe"]["exec"]["command"] == [*healthcheck_command()[:-1], "--ready"]
    shown = subprocess.run(
        [str(VENV_PYTHON), "-m", "services.health", "check", "--help"], capture_output=True, text=True
    )
    assert "--ready" in shown.stdout  # the flag the readiness probe uses exists
    ports = {p["name"]: p["containerPort"] for p in pod["ports"]}
    assert ports == {"comfyui": DEFAULTS.comfyui_port, "dashboard": DEFAULTS.dashboard_port}
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "comfyui")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    names = [e["name"] for e in pod["env"]]
    referenced = {m for e in pod["env"] for m in re.findall(r"\$\((\w+)\)", e.get("value", ""))}
    assert set(names) - referenced <= SETTINGS, set(names) - referenced - SETTINGS
    assert pod["resources"]["limits"]["nvidia.com/gpu"] == 1
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pod["volumeMounts"] == [{"name": "workspace", "mountPath": str(DEFAULTS.workspace)}]
    redis_url = next(e["value"] for e in pod["env"] if e["name"] == "REDIS_URL").replace("$(REDIS_PASSWORD)", "x")
    assert load_settings({"REDIS_URL": redis_url}).redis_url == redis_url
    redis_service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "comfyui-redis")
    assert "@comfyui-redis:6379/" in redis_url and redis_service["spec"]["ports"][0]["port"] == 6379


def test_the_compose_file_gives_each_gpu_its_own_pod_on_one_volume_and_one_redis():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    pods = {name: s for name, s in compose["services"].items() if name.startswith("comfyui-")}
    assert len(pods) >= 2
    ids = [s["environment"]["POD_ID"] for s in pods.values()]
    devices = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0] for s in pods.values()]
    host_ports = [p.split(":")[0] for s in pods.values() for p in s["ports"]]
    assert len(set(ids)) == len(ids) and len(set(devices)) == len(devices) and len(set(host_ports)) == len(host_ports)
    for service in pods.values():
        assert service["volumes"] == ["workspace:/workspace"]
        assert set(service["environment"]) <= SETTINGS, set(service["environment"]) - SETTINGS
        assert {p.split(":")[1] for p in service["ports"]} == {str(DEFAULTS.comfyui_port), str(DEFAULTS.dashboard_port)}
        assert service["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")
    assert "--requirepass" in compose["services"]["redis"]["command"]
    assert "password" not in (DEPLOY / "compose.yaml").read_text().lower().replace("_password", "")
