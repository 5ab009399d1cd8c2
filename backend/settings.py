"""Service settings: one pydantic-settings class, read from the environment (the only place that reads it)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.session import default_database_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEFTS_", env_ignore_empty=True, extra="ignore")

    data_dir: Path = Field(default=Path("./data"), description="SQLite file and job logs live here")
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "MEFTS_DATABASE_URL"),
        description="default: sqlite:///<data_dir>/mefts.db",
    )
    cpu_slots: int = Field(default=1, ge=1, description="concurrent CPU jobs per worker")
    cpu_count: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, description="cores shared by the slots")
    gpus: int | None = Field(default=None, ge=0, description="GPUs to use (default: all that torch sees)")
    executor: str = Field(default="local", validation_alias=AliasChoices("EXECUTOR", "MEFTS_EXECUTOR"))
    max_attempts: int = Field(default=3, ge=1, description="attempts per run before it fails")
    lease_seconds: float = Field(default=30.0, gt=0, description="a running run whose lease expires is re-queued")
    heartbeat_seconds: float = Field(default=3.0, gt=0, description="lease renewal and worker heartbeat interval")
    poll_seconds: float = Field(default=0.5, gt=0, description="dispatcher polling interval when busy")
    max_idle_poll_seconds: float = Field(default=2.0, gt=0, description="idle polling backs off up to this")
    kill_grace_seconds: float = Field(default=5.0, ge=0, description="SIGTERM to SIGKILL delay on cancel")
    progress_interval_seconds: float = Field(default=1.0, ge=0, description="job progress writes are throttled")
    max_grid: int = Field(default=1000, ge=1, description="largest sweep grid accepted")
    events_poll_seconds: float = Field(default=1.0, gt=0, description="SSE polls the runs table this often")
    job_memory_limit_bytes: int | None = Field(
        default=None, ge=1, description="CPU jobs only: address space a job may add after start-up (RLIMIT_AS); "
        "a job that needs more ends as does_not_fit instead of pushing the machine into swap or the OOM killer",
    )
    worker_id: str | None = Field(default=None, description="default: <host>:<pid>")
    # Scale-out (README "Running on a cluster").
    host: str | None = Field(default=None, description="this worker's machine name in the queue (default: the "
                             "host name); workers with the same name share the machine's slots")
    ray_address: str | None = Field(default=None, validation_alias=AliasChoices("RAY_ADDRESS", "MEFTS_RAY_ADDRESS"),
                                    description="EXECUTOR=ray: the cluster to join (default: start a local Ray)")
    ray_cpus_per_job: float = Field(default=1, gt=0, description="EXECUTOR=ray: num_cpus a CPU run asks for")
    ray_gpus_per_job: float = Field(default=1, gt=0, description="EXECUTOR=ray: num_gpus a GPU run asks for")
    # Security (backend/security.py; README "Security").
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token every POST/PUT/PATCH/DELETE under /api must send; required when "
        "`mefts serve` listens on anything but loopback",
    )
    cors_origins: str = Field(default="", description="comma-separated origins a browser may call the API from "
                              "(default: none, CORS closed)")
    allowed_roots: str | None = Field(
        default=None, description=f"folders ({os.pathsep!r}-separated) that local model and data paths in run "
        "requests must lie in; default: the data directory",
    )
    allowed_hosts: str = Field(
        default="", description="comma-separated Host names (optionally host:port) the server answers besides "
        "127.0.0.1, localhost and [::1] (any port), e.g. the name a reverse proxy forwards; '*' accepts any Host "
        "(unsafe: it reopens DNS rebinding); other Hosts get 400",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="larger request bodies get 413")
    run_timeout_seconds: float | None = Field(
        default=None, gt=0, description="wall-clock limit of a run's job (a run may set its own timeout_s); past "
        "it the job is killed and the run fails with 'timed out after N s'",
    )
    job_start_seconds: float = Field(
        default=600.0, gt=0, description="how long a job may take to report its start (its imports) before a run "
        "with a timeout starts its clock anyway: a job that hangs before it starts times out too",
    )

    @property
    def db_url(self) -> str:
        return self.database_url or default_database_url(self.data_dir)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def allowed_host_list(self) -> list[str]:
        """MEFTS_ALLOWED_HOSTS as lower-case entries (the loopback names are always allowed on top)."""
        return [h.strip().lower().rstrip(".") for h in self.allowed_hosts.split(",") if h.strip()]

    @property
    def allowed_root_paths(self) -> list[Path]:
        """Where local model and data paths may point (real paths): MEFTS_ALLOWED_ROOTS, else the data directory."""
        raw = [r for r in (self.allowed_roots or "").split(os.pathsep) if r.strip()] or [str(self.data_dir)]
        return [Path(os.path.realpath(Path(r.strip()).expanduser())) for r in raw]

    @property
    def log_dir(self) -> Path:
        path = Path(self.data_dir).expanduser().resolve() / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path


@lru_cache
def get_settings() -> Settings:
    return Settings()
