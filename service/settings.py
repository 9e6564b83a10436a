"""Service configuration: every field can be set with a `DECAF_<NAME>` environment variable.

List fields (`DECAF_BACKBONES`, `DECAF_LAYERS`, `DECAF_DATA_ROOTS`) accept JSON
(`'["/data/a", "/data/b"]'`) as well as plain separated strings (`/data/a:/data/b` or
`/data/a,/data/b`), because the latter is what people type in a shell or a compose file.

Backbones: `DECAF_BACKBONES=alexnet,resnet50` serves several, each loaded once; the first listed
is the default (what a request gets when it names none). `DECAF_BACKBONE=alexnet` still works
for a single one.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from featurizer.backbones import backbone_names
from featurizer.images import DEFAULT_MAX_PIXELS
from featurizer.options import CropMode, Precision

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
    for sep in (",", os.pathsep):
        if sep in text:
            return [part.strip() for part in text.split(sep) if part.strip()]
    return [text]


class Settings(BaseSettings):
    """Runtime configuration of the HTTP service (see DESIGN.md, "Service")."""

    model_config = SettingsConfigDict(env_prefix="DECAF_", extra="ignore")

    # Model
    weights: str = Field("imagenet", description="'imagenet', a .pth path, or 'random' (tests)")
    backbone: str = Field("alexnet", description="the backbone to serve (see `backbones`)")
    backbones: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="several backbones to serve, each loaded once; the first is the default. "
        "Empty: just `backbone`",
    )
    precision: Precision = "fp32"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    layers: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="layers the default backbone offers; unset: all its layers (other "
        "backbones always offer all of theirs)",
    )
    crop: CropMode = Field("center", description="default crop mode")

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
    max_queue: int = Field(256, ge=1, description="images waiting per backbone before 503")
    max_upload_bytes: int = Field(20 * MiB, ge=1, description="per uploaded file")
    max_files_per_request: int = Field(64, ge=1)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)
    decode_threads: int = Field(2, ge=1)
    job_workers: int = Field(1, ge=1)
    # Several replicas on one PostgreSQL (see README, "Several replicas"): a running job is
    # leased by its replica, renewed every third of the lease; another replica takes it over
    # once the lease has run out (its replica died), so the lease bounds that delay.
    job_lease_s: float = Field(
        30.0,
        gt=0,
        description="how long a running job stays with its replica without a heartbeat",
    )
    job_poll_s: float = Field(
        1.0, gt=0, description="how often an idle replica looks for queued jobs"
    )

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

    @field_validator("backbones", "data_roots", mode="before")
    @classmethod
    def _accept_separated_strings(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_list_or_all(cls, value: Any) -> Any:
        # `DECAF_LAYERS=` (empty) means "all layers", like leaving it unset.
        return _split_list(value) or None

    @field_validator("api_key", "ray_address", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        # `DECAF_API_KEY=` (empty) in a compose file means "not set", not "the empty string".
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _backbones_are_known_and_agree(self) -> Settings:
        served = self.served_backbones
        known = backbone_names()
        unknown = [name for name in served if name not in known]
        if unknown:
            raise ValueError(
                f"unknown backbone(s) {unknown} in DECAF_BACKBONE(S); known: {list(known)}"
            )
        both_given = {"backbone", "backbones"} <= self.model_fields_set and self.backbones
        if both_given and self.backbone != served[0]:
            raise ValueError(
                f"DECAF_BACKBONE={self.backbone} disagrees with DECAF_BACKBONES="
                f"{','.join(self.backbones)}, whose first entry is the default: set one of them"
            )
        return self

    @property
    def served_backbones(self) -> tuple[str, ...]:
        """The backbones to load, default first, each once."""
        return tuple(dict.fromkeys(self.backbones or [self.backbone]))

    @property
    def default_backbone(self) -> str:
        return self.served_backbones[0]

    @property
    def resolved_database_url(self) -> str:
        """`database_url`, or a SQLite file inside `data_dir` when unset."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir}/decaf.db"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once from the environment (tests build `Settings(...)` directly instead)."""
    return Settings()
