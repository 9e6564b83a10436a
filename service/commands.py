"""`decaf serve`: run the HTTP API on uvicorn.

Settings come from `DECAF_*` environment variables (see service/settings.py); flags given on the
command line override them. The flags are passed on as environment variables because uvicorn
builds the app through a factory in each worker process (`--workers N` loads one model per
worker; with one CPU-bound model per machine, 1 worker + the micro-batcher is usually best).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

# Light on purpose: `decaf serve --help` must not import the web stack or the model.
from featurizer.backbones import DEFAULT_BACKBONE, backbone_names
from featurizer.options import CROP_MODES, PRECISIONS

# flag destination -> DECAF_* variable it overrides
_OVERRIDES = {
    "weights": "DECAF_WEIGHTS",
    "backbone": "DECAF_BACKBONE",
    "backbones": "DECAF_BACKBONES",
    "precision": "DECAF_PRECISION",
    "device": "DECAF_DEVICE",
    "layers": "DECAF_LAYERS",
    "crop": "DECAF_CROP",
    "data_dir": "DECAF_DATA_DIR",
    "data_roots": "DECAF_DATA_ROOTS",
    "database_url": "DECAF_DATABASE_URL",
    "max_batch_size": "DECAF_MAX_BATCH_SIZE",
    "max_wait_ms": "DECAF_MAX_WAIT_MS",
    "max_decode_wait_ms": "DECAF_MAX_DECODE_WAIT_MS",
    "max_queue": "DECAF_MAX_QUEUE",
    "request_timeout_s": "DECAF_REQUEST_TIMEOUT_S",
    "decode_threads": "DECAF_DECODE_THREADS",
    "log_json": "DECAF_LOG_JSON",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the HTTP API (FastAPI on uvicorn)",
        description="Run the decaf HTTP API. Every option can also be set with its DECAF_* "
        "environment variable (e.g. DECAF_WEIGHTS=random for an offline trial, DECAF_API_KEY "
        "to require a key on /v1 routes); flags win over the environment.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes, one model each"
    )
    parser.add_argument(
        "--weights", help="imagenet (default), a .pth file, or random (offline trials only)"
    )
    parser.add_argument(
        "--backbone",
        choices=backbone_names(),
        help=f"the backbone to serve (default {DEFAULT_BACKBONE}; see `decaf backbones`)",
    )
    parser.add_argument(
        "--backbones",
        help="comma list of backbones to serve, each loaded once; the first is the default",
    )
    parser.add_argument("--precision", choices=PRECISIONS)
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument(
        "--layers", help="comma list of layers the default backbone offers (default: all)"
    )
    parser.add_argument("--crop", choices=CROP_MODES, help="default crop mode")
    parser.add_argument("--data-dir", help="where stores, probes and the database live")
    parser.add_argument(
        "--data-roots", help=f"folders extraction jobs may read ({os.pathsep!r}- or ','-separated)"
    )
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in data dir)")
    parser.add_argument("--max-batch-size", type=int, help="images per forward pass (32)")
    parser.add_argument("--max-wait-ms", type=float, help="batching window in ms (5)")
    parser.add_argument(
        "--max-decode-wait-ms", type=float, help="wait for images still decoding, ms (100)"
    )
    parser.add_argument("--max-queue", type=int, help="images waiting before 503 (256)")
    parser.add_argument("--request-timeout-s", type=float, help="per-request timeout (60)")
    parser.add_argument("--decode-threads", type=int, help="parallel image decoders (2)")
    parser.add_argument(
        "--log-json", action="store_const", const="true", help="JSON log lines (for collectors)"
    )
    parser.set_defaults(func=run_serve)


def apply_overrides(args: argparse.Namespace, environ: dict[str, str] | os._Environ) -> None:
    """Copy the flags that were given into the environment as DECAF_* variables."""
    for dest, variable in _OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is not None:
            environ[variable] = str(value)


def resolve_served_weights(settings: Any) -> None:
    """Find (downloading when needed) and verify the weights of every served backbone before
    uvicorn starts, so weights that cannot be had are one clear sentence (WeightsError: which
    file, where to put it, DECAF_WEIGHTS) and a non-zero exit, not a traceback from inside the
    server's lifespan. The state_dicts are dropped again: the server reads each file once more
    (hash and torch.load, about a second for AlexNet's 233 MB), a price paid once per start.
    """
    from featurizer.weights import RANDOM_WEIGHTS, resolve_weights

    if settings.weights == RANDOM_WEIGHTS:
        return  # made in memory: nothing to find
    for backbone in settings.served_backbones:
        resolve_weights(settings.weights, backbone, download=True)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from featurizer.errors import DecafError
    from service.logs import setup_logging
    from service.settings import Settings, get_settings

    apply_overrides(args, os.environ)
    get_settings.cache_clear()
    try:
        settings = Settings()  # validate now: a bad value fails here, before uvicorn starts
    except ValidationError as exc:
        raise DecafError(f"invalid DECAF_* setting: {exc}") from exc
    setup_logging(json_logs=settings.log_json, level=settings.log_level)
    resolve_served_weights(settings)
    uvicorn.run(
        "service.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,  # RequestMetricsMiddleware logs every request (structured)
        log_config=None,  # keep our logging configuration
        timeout_graceful_shutdown=30,
    )
    return 0
