"""The web page (``/``) and its icon; ``specdiff/web/`` holds them and the static files."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

#: The page, its script and styles (mounted at ``/static`` by the app).
WEB_DIR = Path(__file__).resolve().parents[2] / "web"

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
def index() -> FileResponse:
    """The single page: upload, progress, player, spectrogram and piano roll."""
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


@router.api_route("/favicon.ico", methods=["GET", "HEAD"])
def favicon() -> FileResponse:
    """The icon. Browsers ask for /favicon.ico whatever the page says; an SVG answers them all."""
    return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")
