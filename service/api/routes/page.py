"""`/`: the web page over the API, shipped as static files inside the package.

`service/static/` holds `index.html`, `app.css` and the ES modules `app.js`, `api.js`, `dom.js`
and `jobs.js`: plain HTML, CSS and modern JavaScript, no build step and nothing fetched from
another origin (the page works offline). The page itself needs no API key — it holds no data;
it asks for the key when the API answers 401 and sends it as `X-API-Key` on every `/v1` request.
A Content-Security-Policy allows only this origin (plus `blob:` images: thumbnails of files the
user picked and of fetched neighbours).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC_PACKAGE = ("service", "static")
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)

router = APIRouter(include_in_schema=False)


def _static_dir() -> str:
    from importlib.resources import files

    return str(files(STATIC_PACKAGE[0]) / STATIC_PACKAGE[1])


@router.get("/", response_class=FileResponse)
async def index() -> FileResponse:
    return FileResponse(
        f"{_static_dir()}/index.html",
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def mount_static(app: FastAPI) -> None:
    """Serve `service/static/` at `/static` (the page's CSS and JavaScript)."""
    app.mount("/static", StaticFiles(packages=[STATIC_PACKAGE]), name="static")
