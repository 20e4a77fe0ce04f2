"""Generates the protobuf code before setuptools looks for packages, so that `pip install .` (or building
a wheel) from a clean checkout carries the `docent.v1` package. The generated code is never committed
(gen/ is in .gitignore); `make proto` writes the same files for a development checkout."""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
PROTOS = sorted((ROOT / "protos" / "docent" / "v1").glob("*.proto"))
GENERATED = ROOT / "gen" / "docent" / "v1"


def generate() -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    GENERATED.mkdir(parents=True, exist_ok=True)
    arguments = ["grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"-I{include}", f"--python_out={ROOT / 'gen'}",
                 f"--grpc_python_out={ROOT / 'gen'}", f"--pyi_out={ROOT / 'gen'}", *map(str, PROTOS)]
    if protoc.main(arguments) != 0:
        raise SystemExit("docent: generating the protobuf code failed")
    for package in (ROOT / "gen" / "docent", GENERATED):
        (package / "__init__.py").touch()


if PROTOS and any(not (GENERATED / f"{proto.stem}_pb2.py").exists()
                  or (GENERATED / f"{proto.stem}_pb2.py").stat().st_mtime < proto.stat().st_mtime for proto in PROTOS):
    generate()

setup()
