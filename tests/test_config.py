"""Config: DOCENT_* env vars, validated at start, one clear line on error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.runtime.config import Settings
from tests.conftest import REPO


def run_docent(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("DOCENT_")}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env={**clean, **env},
                          capture_output=True, text=True, cwd=REPO, timeout=60)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DOCENT_GATEWAY_PORT", "eighty", "DOCENT_GATEWAY_PORT"),
        ("DOCENT_INGEST_PORT", "70000", "DOCENT_INGEST_PORT"),
        ("DOCENT_DATABASE_URL", "mysql://x", "must start with postgresql://"),
        ("DOCENT_WEIGHT_DOCUMENTS", "1.5", "DOCENT_WEIGHT_DOCUMENTS"),
        ("DOCENT_LOG_LEVEL", "loud", "DOCENT_LOG_LEVEL"),
    ],
)
def test_bad_setting_fails_fast_with_one_line(tmp_path, name, value, expected) -> None:
    result = run_docent("token", "--user", "u1", env={name: value, "DOCENT_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("docent: invalid setting")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_both_weights_zero_is_rejected(tmp_path) -> None:
    result = run_docent("token", "--user", "u1", env={
        "DOCENT_WEIGHT_DOCUMENTS": "0", "DOCENT_WEIGHT_CHAT_HISTORY": "0", "DOCENT_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "cannot both be 0" in result.stderr


def test_env_prefix_and_comma_lists(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DOCENT_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("DOCENT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DOCENT_CHAT_PORT", "6000")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.cors_origins == ["http://a.example", "http://b.example"]
    assert settings.data_dir == (tmp_path / "data").resolve()
    assert settings.target("chat") == "127.0.0.1:6000"


def test_dotenv_file_is_read(tmp_path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DOCENT_SEARCH_TOP_K=7\n")
    assert Settings(_env_file=str(env_file)).search_top_k == 7  # type: ignore[call-arg]


def test_token_command_mints_a_verifiable_token(tmp_path) -> None:
    from services.runtime.auth import jwt_secret, verify_token

    result = run_docent("token", "--user", "alice", env={"DOCENT_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    secret = jwt_secret(Settings(_env_file=None, data_dir=tmp_path))  # type: ignore[call-arg]
    assert verify_token(secret, result.stdout.strip()).user_id == "alice"
    assert (tmp_path / "secrets" / "jwt_secret").stat().st_mode & 0o777 == 0o600


def _published_jwt_secrets() -> set[str]:
    """Every DOCENT_JWT_SECRET value written down in the repository's config files and docs."""
    import re

    pattern = re.compile(r"DOCENT_JWT_SECRET\s*[:=]\s*[\"']?([^\s\"'$]+)")
    files = [REPO / ".env.example", REPO / "docker-compose.yml", REPO / "README.md",
             *(REPO / "deploy").rglob("*.yaml"), *(REPO / "deploy").rglob("*.md"), *(REPO / "docs").rglob("*.md")]
    found = set()
    for path in files:
        if path.exists():
            found.update(match.group(1) for match in pattern.finditer(path.read_text()))
    return {value for value in found if value[0] not in "<?"}  # not a placeholder or compose's ${VAR:?message}


def test_a_jwt_secret_published_in_the_repository_is_refused(tmp_path) -> None:
    from services.runtime.auth import jwt_secret

    # .env.example's at least, and the placeholder of the removed deploy/k8s/secret.yaml (old copies exist)
    published = _published_jwt_secrets() | {"CHANGE-ME-generate-with-openssl-rand-hex-32"}
    assert len(published) >= 2
    for value in published:
        with pytest.raises(SystemExit, match="published in the Docent repository"):
            jwt_secret(Settings(_env_file=None, data_dir=tmp_path, jwt_secret=value))  # type: ignore[call-arg]
    example = "change-me-to-a-random-secret-of-at-least-32-characters"
    result = run_docent("token", "--user", "a", env={"DOCENT_DATA_DIR": str(tmp_path), "DOCENT_JWT_SECRET": example})
    assert result.returncode != 0
    assert "DOCENT_JWT_SECRET" in result.stderr and "openssl rand -hex 32" in result.stderr
    # unset still works with no configuration: generated once, kept in the data dir
    assert run_docent("token", "--user", "alice", env={"DOCENT_DATA_DIR": str(tmp_path)}).returncode == 0


def test_an_empty_secret_means_unset(tmp_path, monkeypatch) -> None:
    """`DOCENT_WEBHOOK_SECRET=` as shipped: derive one (never sign with an empty key)."""
    monkeypatch.setenv("DOCENT_WEBHOOK_SECRET", "")
    monkeypatch.setenv("DOCENT_LLM_API_KEY", " ")
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.webhook_secret is None and settings.llm_api_key is None
