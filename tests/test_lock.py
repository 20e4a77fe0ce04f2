"""Builds do not drift: every dependency of pyproject.toml is pinned in the lock files `make setup`, CI and
the Dockerfile install from, at a version pyproject allows, and both lock files agree."""

from __future__ import annotations

import re
import tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)\s*(?:;\s*(.+))?$")


def pins(name: str) -> dict[str, str]:
    """Package → version for this interpreter (the universal lock may pin per Python version)."""
    environment = default_environment()
    found: dict[str, str] = {}
    for line in (REPO / name).read_text().splitlines():
        match = PIN.match(line.strip())
        if not match:
            continue
        package, _, version, marker = match.groups()
        if marker and not Requirement(f"x; {marker}").marker.evaluate(environment):  # type: ignore[union-attr]
            continue
        found[canonicalize_name(package)] = version
    return found


def declared(extras: tuple[str, ...] = ()) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def test_every_runtime_dependency_is_pinned_where_pyproject_allows() -> None:
    runtime = pins("requirements.lock")
    assert len(runtime) > 50
    for requirement in declared():
        version = runtime.get(canonicalize_name(requirement.name))
        assert version, f"{requirement.name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(version, prereleases=True), \
            f"requirements.lock pins {requirement.name}=={version}, pyproject asks {requirement.specifier}"


def test_the_dev_lock_adds_dev_and_bench_at_the_runtime_versions() -> None:
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    for requirement in declared(("dev", "bench")):
        version = dev.get(canonicalize_name(requirement.name))
        assert version and requirement.specifier.contains(version, prereleases=True), requirement.name
    assert {name: dev.get(name) for name in runtime} == runtime


def test_setup_ci_and_the_image_install_from_the_locks() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -q -r requirements-dev.lock" in makefile and "--no-deps -e ." in makefile
    dockerfile = (REPO / "deploy/Dockerfile").read_text()
    assert "pip install -r /tmp/requirements.lock" in dockerfile
