"""deploy/: what can be checked without a cluster. The manifests parse, name the image
`make image` builds, probe paths the app really routes, use the port `serve` really
listens on, set only settings the server reads, and ask for at least the memory the
running container was measured to use."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import yaml
from helpers import make_tiny_bundle

from imageclf.web import DEFAULTS, create_app
from imageclf.web.server import GRACEFUL_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
MEASURED = ROOT / "benchmarks" / "results" / "container_memory.json"
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1000, "M": 10**6, "G": 10**9}


def documents() -> dict[str, dict]:
    found = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[doc["kind"]] = doc
    return found


@pytest.fixture(scope="module")
def kube() -> dict[str, dict]:
    return documents()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def routes(tmp_path_factory) -> set[str]:
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("deploy") / "tiny.safetensors")
    app = create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="manual")
    return {rule.rule for rule in app.url_map.iter_rules()}


def container(kube: dict[str, dict]) -> dict:
    return kube["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def serve_default_port() -> int:
    from imageclf.cli.serve import serve_command

    return next(p.default for p in serve_command.params if p.name == "port")


def containerfile() -> str:
    return (ROOT / "Containerfile").read_text()


def default_image() -> str:
    return re.search(r"^IMAGE \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def bytes_of(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()
    return int(number) * UNITS.get(unit, 1)


def known_settings() -> set[str]:
    """Every environment variable the server reads: serve's options, the log format, the
    app's IMAGECLF_* limits, the recycling count."""
    from imageclf.cli.entry import cli
    from imageclf.cli.serve import serve_command

    options = [*serve_command.params, *cli.params]
    names = {p.envvar for p in options if isinstance(getattr(p, "envvar", None), str)}
    return names | {k for k in DEFAULTS if k.startswith("IMAGECLF_")} | {"IMAGECLF_MAX_REQUESTS"}


def test_every_document_is_a_kubernetes_object(kube):
    assert set(kube) >= {"Deployment", "Service", "HorizontalPodAutoscaler", "Kustomization"}
    for kind, doc in kube.items():
        assert doc["apiVersion"] and (kind == "Kustomization" or doc["metadata"]["name"])


def test_image_is_the_one_make_image_builds(kube, compose):
    image = default_image()
    assert container(kube)["image"] == image
    assert compose["services"]["imageclf"]["image"] == image
    assert kube["Kustomization"]["images"][0]["name"] == image.split(":")[0]


def test_probes_use_routes_the_app_serves(kube, routes):
    spec = container(kube)
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    probes = [spec[p]["httpGet"] for p in ("readinessProbe", "livenessProbe", "startupProbe")]
    assert {probe["path"] for probe in probes} <= routes
    # Port names resolve to the one port the server listens on in the image.
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert all(ports[probe["port"]] == 8000 for probe in probes)


def test_ports_are_the_ones_serve_listens_on(kube, compose):
    port = serve_default_port()
    image = containerfile()
    assert f"EXPOSE {port}" in image and f"IMAGECLF_PORT={port}" in image
    assert container(kube)["ports"][0]["containerPort"] == port
    service = kube["Service"]["spec"]
    assert service["ports"][0]["targetPort"] == container(kube)["ports"][0]["name"]
    assert service["selector"] == kube["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert compose["services"]["imageclf"]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert "/readyz" in " ".join(compose["services"]["imageclf"]["healthcheck"]["test"])


def test_settings_are_ones_the_server_reads(kube, compose):
    known = known_settings()
    assert {"IMAGECLF_WORKERS", "IMAGECLF_THREADS", "IMAGECLF_LOG_FORMAT"} <= known
    names = {e["name"] for e in container(kube)["env"]}
    names |= set(compose["services"]["imageclf"]["environment"])
    names |= set(re.findall(r"\b(IMAGECLF_[A-Z_]+)=", containerfile()))
    assert names - {"IMAGECLF_HOME"} <= known, names - known


def test_memory_request_covers_the_measured_container(kube):
    measured = json.loads(MEASURED.read_text())
    workers = int(
        next(e["value"] for e in container(kube)["env"] if e["name"] == "IMAGECLF_WORKERS")
    )
    run = next(r for r in measured["runs"] if r["workers"] == workers)
    resources = container(kube)["resources"]
    assert bytes_of(resources["requests"]["memory"]) >= run["after_requests"]["pss_kb"] * 1024
    assert bytes_of(resources["limits"]["memory"]) > bytes_of(resources["requests"]["memory"])


def test_stopping_waits_longer_than_graceful_shutdown(kube, compose):
    pod = kube["Deployment"]["spec"]["template"]["spec"]
    pre_stop = int(container(kube)["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + GRACEFUL_TIMEOUT_S
    grace = compose["services"]["imageclf"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > GRACEFUL_TIMEOUT_S
    assert pod["securityContext"]["runAsUser"] == 10001 and "USER 10001:10001" in containerfile()


def test_autoscaler_scales_the_deployment_on_cpu(kube):
    hpa = kube["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == kube["Deployment"]["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert "cpu" in container(kube)["resources"]["requests"]  # utilisation needs a request
    assert hpa["minReplicas"] <= hpa["maxReplicas"]


def test_serve_reads_its_settings_from_the_environment(monkeypatch, capsys, tmp_path):
    """What the image and the manifests configure by environment reaches serve()."""
    from helpers import run_cli

    from imageclf.web import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda model, **kw: seen.update(kw, model=model))
    env = {"IMAGECLF_WORKERS": "3", "IMAGECLF_THREADS": "2", "IMAGECLF_HOST": "0.0.0.0",
           "IMAGECLF_PORT": "8123", "IMAGECLF_REUSE_PORT": "1", "IMAGECLF_ACCESS_LOG": "1",
           "IMAGECLF_MODEL": str(tmp_path / "m.safetensors")}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, _, err = run_cli(["serve"], capsys)
    assert code == 0, err
    assert seen["workers"] == 3 and seen["threads"] == 2 and seen["port"] == 8123
    assert seen["host"] == "0.0.0.0" and seen["reuse_port"] and seen["access_log"]
    assert seen["model"] == env["IMAGECLF_MODEL"]

    # --reuse-port: one socket for the server's life, SO_REUSEPORT set, handed to gunicorn
    fd = server.reuse_port_socket("127.0.0.1", 0)
    with socket.socket(fileno=fd) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert server.gunicorn_options("127.0.0.1", 0, 1, listen_fd=fd)["bind"] == f"fd://{fd}"

    # several models in one variable: ':' separates them, a space belongs to a path
    first, second = tmp_path / "my models" / "a.safetensors", tmp_path / "b.onnx"
    monkeypatch.setenv("IMAGECLF_MODEL", f"a={first}:b={second}")
    code, _, err = run_cli(["serve"], capsys)
    assert code == 0, err
    assert seen["model"] == [f"a={first}", f"b={second}"]

    monkeypatch.setenv("IMAGECLF_WORKERS", "many")
    code, _, err = run_cli(["serve"], capsys)
    assert code == 2 and "IMAGECLF_WORKERS" in err
