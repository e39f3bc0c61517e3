"""API documentation pages that work offline: Swagger UI at ``/docs`` and ReDoc at ``/redoc``.

FastAPI's own pages load their JavaScript and CSS from a CDN, so they are blank on a machine
without internet access (and they tell a third party who reads the docs). Here the assets come
from the ``fastapi-offline`` package (in the ``serve`` extra), which bundles Swagger UI and ReDoc,
and are served under ``/docs-assets``; the pages are FastAPI's documented self-hosting recipe.
Without the package, ``/docs`` is a plain local page that points to ``/openapi.json``.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
FAVICON_URL = "/favicon.ico"


def bundled_assets() -> Path | None:
    """The folder with swagger-ui-bundle.js, swagger-ui.css and redoc.standalone.js, if installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).resolve().parent / "static"
    needed = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
    return folder if all((folder / name).is_file() for name in needed) else None


def add_offline_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> bool:
    """Add ``/docs`` and ``/redoc`` (the app must be made with ``docs_url=None, redoc_url=None``).
    Returns whether the interactive pages are available (False: the plain fallback page)."""
    assets = bundled_assets()
    title = html.escape(app.title)
    if assets is None:

        @app.get("/docs", include_in_schema=False)
        def docs_fallback() -> HTMLResponse:
            return HTMLResponse(
                f"<!doctype html><html><head><meta charset='utf-8'><title>{title} API</title></head><body>"
                f"<h1>{title} API</h1><p>The interactive documentation needs the <code>fastapi-offline</code> "
                "package (<code>pip install 'specdiff[serve]'</code>). The OpenAPI schema is at "
                f"<a href='{openapi_url}'>{openapi_url}</a>.</p></body></html>"
            )

        return False

    app.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} API", swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css", swagger_favicon_url=FAVICON_URL,
        )  # fmt: skip

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url, title=f"{app.title} API", redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=FAVICON_URL, with_google_fonts=False,
        )  # fmt: skip

    return True
