"""buf checks the gRPC contract: `buf lint` with zero findings, `buf breaking` against the released one.

buf comes from its npm package at an exact version (BUF_VERSION), installed once per version into
the venv (<venv>/buf/<version>; outside a venv, the temp dir). Without node/npm the tests skip,
except in CI (CI=true), where they fail: there a missing buf must not pass as green.

The previous release is protos/released/docent-v1.json, a buf image (JSON, without source info,
pretty-printed so that a refresh reviews as a diff) of the contract as released in the version that
protos/released/VERSION names. There are no tags in a CI clone to compare against, hence the
snapshot; `make release-contract` (this file run as a script: `python tests/test_buf.py release`)
refreshes it at release time. buf.yaml says which breaking rules apply (FILE) and why.

So that the breaking check cannot pass vacuously (an empty or stale baseline, a rule set that sees
nothing), copies of the current protos with an RPC renamed, a field removed and a field renamed are
checked too, and buf must report each with the rule that names it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

BUF_VERSION = "1.75.0"
BUF_PACKAGE = f"@bufbuild/buf@{BUF_VERSION}"

ROOT = Path(__file__).resolve().parent.parent
RELEASED_DIR = ROOT / "protos" / "released"
RELEASED_IMAGE = RELEASED_DIR / "docent-v1.json"
RELEASED_VERSION = RELEASED_DIR / "VERSION"
IN_CI = os.environ.get("CI", "").lower() == "true"


class BufUnavailable(Exception):
    """node/npm are not on this machine (a skip outside CI, a failure in it)."""


def _cache_dir() -> Path:
    in_venv = sys.prefix != sys.base_prefix
    base = Path(sys.prefix) / "buf" if in_venv else Path(tempfile.gettempdir()) / "docent-buf"
    return base / BUF_VERSION


def _version_of(buf: Path) -> str | None:
    try:
        result = subprocess.run([str(buf), "--version"], capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def install_buf() -> Path:
    """The buf binary of BUF_VERSION, installed from npm on first use (under a lock: pytest-xdist safe)."""
    cache = _cache_dir()
    buf = cache / "node_modules" / ".bin" / "buf"
    if _version_of(buf) == BUF_VERSION:
        return buf
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        raise BufUnavailable(f"{' and '.join(missing)} not found: buf comes from the npm package {BUF_PACKAGE}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f"{BUF_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _version_of(buf) == BUF_VERSION:
            return buf  # another process installed it meanwhile
        staging = Path(tempfile.mkdtemp(prefix=f"{BUF_VERSION}.", dir=cache.parent))
        staging.chmod(0o755)
        try:
            # --ignore-scripts: the package's bin is a node launcher of the platform package's binary
            # (an optional dependency npm picks by os/cpu); its postinstall only swaps that launcher
            # for the binary, so the install is the same whether npm runs scripts or not.
            result = subprocess.run(
                ["npm", "install", "--prefix", str(staging), "--no-save", "--no-package-lock", "--no-audit",
                 "--no-fund", "--ignore-scripts", "--loglevel=error", BUF_PACKAGE],
                capture_output=True, text=True, timeout=600, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"npm install {BUF_PACKAGE} failed:\n{result.stdout}{result.stderr}")
            installed = _version_of(staging / "node_modules" / ".bin" / "buf")
            if installed != BUF_VERSION:
                raise RuntimeError(f"npm installed buf {installed!r}, not {BUF_VERSION}")
            shutil.rmtree(cache, ignore_errors=True)
            staging.rename(cache)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    assert _version_of(buf) == BUF_VERSION, f"buf not runnable at {buf}"
    return buf


def run_buf(buf: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def findings(result: subprocess.CompletedProcess[str]) -> list[dict]:
    """buf's --error-format=json output: one JSON object per finding and line."""
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def release(buf: Path) -> None:
    """Snapshot the committed contract as the released one (make release-contract, at release time).

    From HEAD (git archive), not the work tree: the release is what is committed, whatever else is
    being edited in protos/ meanwhile.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "buf.yaml", "protos/docent"],
                                 cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        lint = run_buf(buf, "lint", cwd=tree)
        if lint.returncode != 0:
            sys.exit(f"buf lint has findings; fix them before releasing the contract:\n{lint.stdout}{lint.stderr}")
        image = Path(tmp) / "image.json"
        built = run_buf(buf, "build", "--exclude-source-info", "-o", str(image), cwd=tree)
        if built.returncode != 0:
            sys.exit(f"buf build failed:\n{built.stdout}{built.stderr}")
        data = json.loads(image.read_text())
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "buf.yaml", "protos/docent"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout
    if dirty:
        print(f"note: uncommitted changes in protos/ are not part of the snapshot (it is HEAD's):\n{dirty}")
    RELEASED_DIR.mkdir(parents=True, exist_ok=True)
    RELEASED_IMAGE.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    RELEASED_VERSION.write_text(version + "\n")
    print(f"{RELEASED_IMAGE.relative_to(ROOT)}: the contract of release {version} (buf {BUF_VERSION}); commit it")


# ---------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def buf() -> Path:
    try:
        return install_buf()
    except BufUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true and buf cannot be obtained: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def released() -> dict:
    assert RELEASED_IMAGE.is_file(), f"{RELEASED_IMAGE.relative_to(ROOT)} missing: run `make release-contract`"
    return json.loads(RELEASED_IMAGE.read_text())


def released_version() -> str:
    return RELEASED_VERSION.read_text().strip()


def test_buf_version(buf: Path) -> None:
    assert _version_of(buf) == BUF_VERSION


def test_lint_has_no_findings(buf: Path) -> None:
    result = run_buf(buf, "lint")
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"buf lint (buf.yaml: STANDARD with the AIP exceptions) has findings:\n{result.stdout}{result.stderr}")


def test_released_image_holds_the_contract(released: dict) -> None:
    """The baseline is a real contract: docent.v1 files with services (else breaking passes on nothing)."""
    ours = [file for file in released["file"] if file["name"].startswith("docent/v1/")]
    assert ours and all(file["package"] == "docent.v1" for file in ours)
    assert sum(len(file.get("service", [])) for file in ours) >= 1
    assert all("sourceCodeInfo" not in file for file in released["file"]), "snapshot with source info: refresh it"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", released_version())


def test_no_breaking_change_since_the_released_contract(buf: Path) -> None:
    result = run_buf(buf, "breaking", "--against", str(RELEASED_IMAGE.relative_to(ROOT)))
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"breaking changes against the contract of release {released_version()} "
        f"({RELEASED_IMAGE.relative_to(ROOT)}); keep the old RPCs and fields (mark them "
        f"`deprecated = true`); a deliberate break goes to a new package version (docent.v2):\n"
        f"{result.stdout}{result.stderr}")


# Deliberate breaks, picked from the released image so that they exist in the baseline and stay valid
# as the contract grows. Each returns the edited file (relative to protos/), its new text and the
# rule buf must report. They edit only the copy in a temp dir.

Mutation = tuple[str, str, set[str]]


def _proto_text(name: str) -> str:
    return (ROOT / "protos" / name).read_text()


def _simple_fields(released: dict) -> list[tuple[str, str, dict, re.Match[str]]]:
    """(file, message, field, match of its one-line declaration) for fields declared `... name = N;`."""
    fields = []
    for file in released["file"]:
        if not file["name"].startswith("docent/v1/") or not (ROOT / "protos" / file["name"]).is_file():
            continue
        text = _proto_text(file["name"])
        for message in file.get("messageType", []):
            for field in message.get("field", []):
                pattern = re.compile(rf"^[ \t]*[^\n=/]*\b{field['name']}\s*=\s*{field['number']}\s*;[^\n]*\n", re.M)
                matches = list(pattern.finditer(text))
                if len(matches) == 1:
                    fields.append((file["name"], message["name"], field, matches[0]))
    return fields


def rename_rpc(released: dict) -> Mutation:
    for file in released["file"]:
        for service in file.get("service", []):
            for method in service.get("method", []):
                path = ROOT / "protos" / file["name"]
                if not path.is_file():
                    continue
                text, count = re.subn(rf"\brpc\s+{method['name']}\s*\(", f"rpc {method['name']}Renamed(",
                                      path.read_text())
                if count == 1:
                    return file["name"], text, {"RPC_NO_DELETE"}
    raise AssertionError("no RPC of the released contract found in protos/ to rename")


def remove_field(released: dict) -> Mutation:
    fields = _simple_fields(released)
    assert fields, "no one-line field of the released contract found in protos/ to remove"
    name, _, _, match = fields[0]
    text = _proto_text(name)
    return name, text[:match.start()] + text[match.end():], {"FIELD_NO_DELETE"}


def rename_field(released: dict) -> Mutation:
    """Same number and type, new name: wire-compatible, but JSON (grpcurl, the gateway) and the generated code break."""
    fields = _simple_fields(released)
    assert fields, "no one-line field of the released contract found in protos/ to rename"
    name, _, field, match = fields[0]
    text = _proto_text(name)
    line = re.sub(rf"\b{field['name']}(\s*=)", rf"renamed_{field['name']}\1", match.group(0), count=1)
    return name, text[:match.start()] + line + text[match.end():], {"FIELD_SAME_NAME", "FIELD_SAME_JSON_NAME"}


@pytest.mark.parametrize("mutate", [rename_rpc, remove_field, rename_field], ids=lambda f: f.__name__)
def test_breaking_change_is_detected(buf: Path, released: dict, tmp_path: Path,
                                     mutate: Callable[[dict], Mutation]) -> None:
    shutil.copy2(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos", ignore=shutil.ignore_patterns("released"))
    name, text, rules = mutate(released)
    target = tmp_path / "protos" / name
    assert text != target.read_text()
    target.write_text(text)
    # the mutated copy still compiles: a failure must come from the rules, not from a syntax error
    built = run_buf(buf, "build", str(tmp_path), "-o", str(tmp_path / "mutated.binpb"))
    assert built.returncode == 0, f"mutated copy does not build:\n{built.stderr}"
    result = run_buf(buf, "breaking", str(tmp_path), "--against", str(RELEASED_IMAGE), "--error-format=json")
    reported = {finding.get("type") for finding in findings(result)}
    assert result.returncode != 0 and rules <= reported, (
        f"{mutate.__name__} in {name} not reported as {sorted(rules)}; buf said:\n{result.stdout}{result.stderr}")


if __name__ == "__main__":
    if sys.argv[1:] != ["release"]:
        sys.exit(f"usage: {sys.argv[0]} release   (snapshot protos/ as the released contract)")
    with contextlib.suppress(KeyboardInterrupt):
        try:
            release(install_buf())
        except BufUnavailable as exc:
            sys.exit(str(exc))
