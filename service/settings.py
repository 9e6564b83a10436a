"""Service configuration: every field can be set with a `DECAF_<NAME>` environment variable.

List fields (`DECAF_LAYERS`, `DECAF_DATA_ROOTS`) accept JSON (`'["/data/a", "/data/b"]'`) as
well as plain separated strings (`/data/a:/data/b` or `/data/a,/data/b`), because the latter is
what people type in a shell or a compose file.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

try:  # the featurizer is written in parallel; fall back to the contract's values until it lands
    from featurizer.backbone import LAYER_NAMES
except ImportError:  # pragma: no cover - only while featurizer/backbone.py does not exist yet
    LAYER_NAMES = ("decaf5", "decaf6_pre", "decaf6", "decaf7_pre", "decaf7", "logits")
try:
    from featurizer.images import DEFAULT_MAX_PIXELS
except ImportError:  # pragma: no cover
    DEFAULT_MAX_PIXELS = 80_000_000

MiB = 1024 * 1024


def _split_list(value: Any) -> Any:
    """Turn `"a,b"` / `"a:b"` / JSON list strings into a list; leave real lists alone."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if text.startswith("["):
        import json

        return json.loads(text)
    separators = [",", os.pathsep]
    for sep in separators:
        if sep in text:
            return [part.strip() for part in text.split(sep) if part.strip()]
    return [text]


class Settings(BaseSettings):
    """Runtime configuration of the HTTP service (see DESIGN.md, "Service")."""

    model_config = SettingsConfigDict(env_prefix="DECAF_", extra="ignore")

    # Model
    weights: str = Field("imagenet", description="'imagenet', a .pth path, or 'random' (tests)")
    backbone: str = "alexnet"
    precision: Literal["fp32", "bf16", "fp16", "int8"] = "fp32"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    layers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(LAYER_NAMES), description="layers the server offers"
    )
    crop: Literal["center", "tencrop"] = Field("center", description="default crop mode")

    # Storage
    data_dir: Path = Path("decaf-data")
    database_url: str | None = None
    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    # Security and limits
    api_key: SecretStr | None = None
    max_batch_size: int = Field(32, ge=1)
    max_wait_ms: float = Field(5.0, ge=0, description="batching window after the first image")
    max_decode_wait_ms: float = Field(
        100.0, ge=0, description="how long a batch may wait for images still being decoded"
    )
    max_queue: int = Field(256, ge=1)
    max_upload_bytes: int = Field(20 * MiB, ge=1, description="per uploaded file")
    max_files_per_request: int = Field(64, ge=1)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)
    decode_threads: int = Field(2, ge=1)
    job_workers: int = Field(1, ge=1)

    # Distributed extraction (engine "ray"). A server setting only: a request must never be
    # able to point this server at an arbitrary cluster.
    ray_address: str | None = Field(
        None,
        description="Ray cluster for extraction jobs with engine 'ray' (e.g. 'ray://head:10001' "
        "or 'head:6379'); unset: a local Ray started on this machine for the job",
    )

    # Operations
    log_json: bool = False
    log_level: str = "INFO"

    @field_validator("layers", "data_roots", mode="before")
    @classmethod
    def _accept_separated_strings(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("api_key", "ray_address", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        # `DECAF_API_KEY=` (empty) in a compose file means "not set", not "the empty string".
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def resolved_database_url(self) -> str:
        """`database_url`, or a SQLite file inside `data_dir` when unset."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir}/decaf.db"

    @property
    def resolved_data_roots(self) -> list[Path]:
        """Allowed extraction roots, absolute and with symlinks resolved."""
        return [Path(root).expanduser().resolve() for root in self.data_roots]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once from the environment (tests build `Settings(...)` directly instead)."""
    return Settings()
