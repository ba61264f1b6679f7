"""GET /: the playground page, and GET /static/{name}: its script and stylesheet.

The page is plain HTML, CSS and JavaScript under services/api/static/ (package data, no build
step, nothing fetched from other hosts). It needs no API key itself; its calls to the API send
the key the user enters on the page.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_MEDIA_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}

router = APIRouter(include_in_schema=False)


def _static_file(name: str) -> FileResponse:
    # Only names listed in the folder are served, so `..` or absolute paths never reach the disk.
    available = {entry.name: entry for entry in STATIC_DIR.iterdir() if entry.is_file()}
    if name not in available:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no static file {name!r}")
    path = available[name]
    media_type = _MEDIA_TYPES.get(path.suffix, "application/octet-stream")
    return FileResponse(
        path, media_type=f"{media_type}; charset=utf-8", headers={"Cache-Control": "no-cache"}
    )


@router.get("/")
def playground() -> FileResponse:
    return _static_file("index.html")


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    return _static_file(name)
