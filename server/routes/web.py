"""The built-in roleplay page at `/`: static files shipped inside the package (server/web), no build step and
nothing fetched from elsewhere, so it works offline. `--no-web` turns it off."""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_FILES = Path(__file__).resolve().parents[1] / "web"
# The page and its files hold no data: they are served without the API key, which the page then asks for.
WEB_PREFIX = "/web/"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(WEB_FILES / "index.html")


def install_web(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(WEB_PREFIX.rstrip("/"), StaticFiles(directory=WEB_FILES), name="web")
