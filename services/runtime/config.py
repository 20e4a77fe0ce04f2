"""Settings for every Docent process, read from DOCENT_* env vars and an optional .env file.

One Settings class serves all roles so that `docent up` can hand the same environment to
every child; each role reads only what it needs. Validation happens at start-up and a bad
value stops the process with one line naming the setting (see `load_settings`).
"""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.runtime.embedding_models import ENDPOINT_TUNING, LOCAL_MODELS, TUNING

ENV_PREFIX = "DOCENT_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # where the embedded defaults keep their data (Postgres, Redis, vectors, secrets)
    data_dir: Path = Path(".docent")

    # backing services; unset means "start/use the embedded default"
    database_url: str | None = None
    redis_url: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    # which vector store the retrieval service uses (services/retrieval/stores.py): auto, qdrant, edge
    vector_store: str = "auto"

    # network
    bind_host: str = "127.0.0.1"
    gateway_port: int = Field(8000, ge=1, le=65535)
    ingest_port: int = Field(50051, ge=1, le=65535)
    retrieval_port: int = Field(50052, ge=1, le=65535)
    chat_port: int = Field(50053, ge=1, le=65535)
    # where clients find the services (default: localhost:<port>)
    ingest_target: str | None = None
    retrieval_target: str | None = None
    chat_target: str | None = None
    # Prometheus /metrics of the gRPC services and the worker (the gateway serves its own on its port)
    ingest_metrics_port: int = Field(9051, ge=0, le=65535)
    retrieval_metrics_port: int = Field(9052, ge=0, le=65535)
    chat_metrics_port: int = Field(9053, ge=0, le=65535)
    worker_metrics_port: int = Field(9054, ge=0, le=65535)
    # `docent up` itself (docent_child_restarts_total)
    supervisor_metrics_port: int = Field(9055, ge=0, le=65535)

    # auth: HS256 secret shared by the gateway (which issues tokens) and the gRPC services
    jwt_secret: SecretStr | None = None
    jwt_ttl_minutes: int = Field(60 * 24, ge=1)

    # gRPC behaviour
    grpc_deadline_seconds: float = Field(30.0, gt=0)
    grpc_grace_seconds: float = Field(10.0, ge=0)
    db_pool_max: int = Field(10, ge=1)

    # `docent up`: a child that dies is restarted after 1 s, 2 s, 4 s … up to the max; the backoff starts
    # over once it stayed up `restart_healthy_seconds`; `restart_crash_loop` crashes of one child within
    # `restart_crash_window_seconds` end `docent up` (a child that cannot stay up needs a human)
    restart_backoff_max_seconds: float = Field(30.0, gt=0)
    restart_healthy_seconds: float = Field(60.0, gt=0)
    restart_crash_loop: int = Field(5, ge=1)
    restart_crash_window_seconds: float = Field(120.0, gt=0)

    # logging
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    # uploads
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    # quotas per user (0: no limit); an API key may carry lower per-minute limits of its own.
    # The rates are shared by all replicas through Redis; stored bytes and documents are counted in Postgres.
    quota_chats_per_minute: int = Field(0, ge=0, description="chat requests per minute per user and per key")
    quota_uploads_per_minute: int = Field(0, ge=0, description="uploads per minute per user and per key")
    quota_stored_bytes: int = Field(0, ge=0, description="bytes of uploaded files a user may keep")
    quota_documents: int = Field(0, ge=0, description="documents a user may keep")
    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:5173", "http://localhost:3000"]

    # embeddings: a local model unless an OpenAI-compatible endpoint is set. Local models:
    # all-MiniLM-L6-v2 (English) and multilingual-e5-small (about 100 languages); changing the model
    # needs `docent reindex` (the vector store records which model built it)
    embedding_base_url: str | None = None
    embedding_api_key: SecretStr | None = None
    embedding_model: str = "multilingual-e5-small"  # measured: docs/QUALITY.md
    embedding_dimensions: int | None = Field(None, ge=1)
    embedding_batch_size: int = Field(8, ge=1, le=2048)
    embedding_threads: int = Field(0, ge=0)

    # retrieval defaults (per request overridable)
    weight_documents: float = Field(0.7, ge=0, le=1)
    weight_chat_history: float = Field(0.3, ge=0, le=1)
    search_top_k: int = Field(10, ge=1, le=100)
    # unset (None): the value tuned for the embedding model (services/runtime/embedding_models.py TUNING), filled
    # in at validation, so every reader sees a number
    min_score_documents: float | None = Field(None, ge=-1, le=1)
    min_score_chat_history: float | None = Field(None, ge=-1, le=1)
    search_mode: Literal["dense", "hybrid"] = "hybrid"  # measured: docs/QUALITY.md
    hybrid_dense_weight: float | None = Field(None, ge=0, le=1, description="hybrid search: weight of the dense "
                                              "ranking fused again with the store's dense + BM25 ranking (0: that "
                                              "ranking alone); unset: tuned for the embedding model")
    contextual_chunks: bool = Field(False, description="embed each chunk led by its document's title "
                                                       "(needs `docent reindex` when changed)")

    # second-stage reranking of document hits (services/retrieval/rerank.py); off by default, see
    # bench/results/rerank-probe.md. "endpoint": a /rerank server (llama.cpp, TEI, Infinity, Jina, Cohere)
    rerank: Literal["off", "endpoint"] = "off"
    rerank_candidates: int = Field(30, ge=1, le=200)
    rerank_base_url: str | None = None
    rerank_api_key: SecretStr | None = None
    rerank_model: str = ""
    # request body: "documents" (Jina, Cohere, llama.cpp, Infinity) or "texts" (TEI)
    rerank_request_format: Literal["documents", "texts"] = "documents"
    rerank_timeout_seconds: float = Field(3.0, gt=0)
    rerank_max_retries: int = Field(1, ge=0, le=5)

    # chat answerer (services/chat/answerers.py): auto = the LLM when an OpenAI-compatible endpoint
    # is set, else the offline extractive answerer
    answerer: str = "auto"
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout_seconds: float = Field(60.0, gt=0)
    llm_max_retries: int = Field(2, ge=0)
    # streamed answers ask for their token usage (stream_options.include_usage, services/chat/answer_llm.py);
    # false for an older server that rejects the option
    llm_stream_usage: bool = True
    history_token_budget: int = Field(1500, ge=0)

    # worker
    worker_processes: int = Field(1, ge=1)
    worker_threads: int = Field(2, ge=1)
    worker_queues: Annotated[list[str], NoDecode] = ["ingest", "memory"]
    lease_seconds: int = Field(120, ge=5)
    sweep_interval_seconds: int = Field(30, ge=1)
    # a chat turn's full-text memory embedding runs only while at most this share of the CPUs was busy
    # lately (services/chat/cpu_load.py); until then the turn is searchable by its question's vector.
    # 1 = always at once (a worker on cores of its own)
    memory_refine_max_cpu: float = Field(0.6, gt=0, le=1)
    max_attempts: int = Field(5, ge=1)
    # the sweeper as a Dramatiq fork function beside the workers; `docent up` runs it as its own child
    # instead, so that it is restarted on its own (Dramatiq does not watch its fork functions)
    worker_sweeper: bool = True
    webhook_secret: SecretStr | None = None
    # webhooks to loopback, private, link-local or metadata addresses (server-side request forgery): refused
    # unless the receivers are on a private network on purpose
    webhook_allow_private: bool = False

    # OCR of scanned PDF pages, in the worker (RapidOCR on onnxruntime, models shipped in the wheel;
    # threads follow DOCENT_EMBEDDING_THREADS)
    ocr_enabled: bool = Field(True, description="OCR PDF pages that have no usable text layer")
    ocr_dpi: int = Field(200, ge=100, le=400, description="highest resolution a page is rendered at for OCR")
    ocr_max_pages: int = Field(50, ge=1, description="pages OCR'd per document; later scanned pages are skipped")
    ocr_page_timeout_seconds: float = Field(120.0, gt=0, le=600, description="time cap for OCR of one page")

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("cors_origins", "worker_queues", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # "a,b" in an env var; a JSON list works too
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("min_score_documents", "min_score_chat_history", "hybrid_dense_weight", mode="before")
    @classmethod
    def _empty_is_tuned(cls, value: object) -> object:
        # compose forwards an unset variable as "": the model's tuned value
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("jwt_secret", "webhook_secret", "qdrant_api_key", "embedding_api_key", "llm_api_key",
                     mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        # `DOCENT_WEBHOOK_SECRET=` (as shipped in .env.example and compose) means "derive one", never "sign with
        # an empty key"; the same for every secret
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgres://", "postgresql://")):
            raise ValueError("must start with postgresql:// or postgres://")
        return value or None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value or None

    @field_validator("qdrant_url", "embedding_base_url", "llm_base_url", "rerank_base_url")
    @classmethod
    def _http_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value or None

    @model_validator(mode="after")
    def _weights_not_both_zero(self) -> Settings:
        if self.weight_documents == 0 and self.weight_chat_history == 0:
            raise ValueError("DOCENT_WEIGHT_DOCUMENTS and DOCENT_WEIGHT_CHAT_HISTORY cannot both be 0")
        return self

    @model_validator(mode="after")
    def _local_embedding_model_exists(self) -> Settings:
        if not self.embedding_base_url and self.embedding_model not in LOCAL_MODELS:
            raise ValueError(f"DOCENT_EMBEDDING_MODEL={self.embedding_model!r} is not a local model ("
                             f"{', '.join(LOCAL_MODELS)}); set DOCENT_EMBEDDING_BASE_URL to use it from an endpoint")
        tuning = ENDPOINT_TUNING if self.embedding_base_url else TUNING[self.embedding_model]
        for name in ("min_score_documents", "min_score_chat_history", "hybrid_dense_weight"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(tuning, name))
        return self

    @model_validator(mode="after")
    def _rerank_endpoint_has_url(self) -> Settings:
        if self.rerank == "endpoint" and not self.rerank_base_url:
            raise ValueError("DOCENT_RERANK=endpoint needs DOCENT_RERANK_BASE_URL")
        return self

    # derived addresses -------------------------------------------------------------------------

    def target(self, service: Literal["ingest", "retrieval", "chat"]) -> str:
        explicit = getattr(self, f"{service}_target")
        return explicit or f"127.0.0.1:{getattr(self, f'{service}_port')}"

    @cached_property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"


def describe_validation_error(error: ValidationError) -> str:
    """One line naming the first bad setting by its env var name."""
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "__root__"]
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if location:
        name = ENV_PREFIX + location[0].upper()
        return f"invalid setting {name}={first.get('input')!r}: {message}"
    return f"invalid settings: {message}"


def load_settings(**overrides: object) -> Settings:
    """Settings for this process; exits with one clear line if any value is invalid."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        print(f"docent: {describe_validation_error(error)}", file=sys.stderr)
        raise SystemExit(2) from None
