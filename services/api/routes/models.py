"""GET /v1/models (OpenAI's model list, plus serving state) and POST /v1/models/load (hot reload).

The list contains the served model first, then a model being loaded, then the other merged models
under the merged volume, which POST /v1/models/load {"name": ...} can switch to.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request, status

from services.api.deps import require_api_key
from services.api.routes.generate import get_engine
from services.api.schemas_generation import ModelCard, ModelList, ModelLoadRequest, ModelLoadResponse
from shared.inference.served import LoadTargetError, describe, resolve_load_target

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(require_api_key)])


def _merged_cards(merged_dir: Path, skip: set[str]) -> list[ModelCard]:
    if not merged_dir.is_dir():
        return []
    cards = []
    for folder in sorted(merged_dir.iterdir()):
        if folder.name.startswith(".") or not (folder / "config.json").is_file():
            continue
        if str(folder.resolve()) in skip:
            continue
        cards.append(
            ModelCard(
                id=folder.name,
                created=int(folder.stat().st_mtime),
                status="available",
                path=str(folder),
                base_model=describe(folder).get("base_model"),
            )
        )
    return cards


@router.get("", response_model=ModelList)
def list_models(request: Request) -> ModelList:
    """List the served model, a model being loaded, and the merged models available to load."""
    engine = get_engine(request)
    engine_status = engine.status()
    cards: list[ModelCard] = []
    shown: set[str] = set()
    if engine_status.model and engine_status.path:
        folder = Path(engine_status.path)
        cards.append(
            ModelCard(
                id=engine_status.model,
                created=int(engine_status.loaded_at or 0),
                status="serving",
                path=engine_status.path,
                base_model=describe(folder).get("base_model") if folder.is_dir() else None,
            )
        )
        shown.add(str(folder.resolve()))
    if engine_status.loading:
        cards.append(
            ModelCard(
                id=Path(engine_status.loading).name, created=0, status="loading", path=engine_status.loading
            )
        )
        shown.add(str(Path(engine_status.loading).resolve()))
    cards.extend(_merged_cards(engine.settings.merged_dir, shown))
    return ModelList(data=cards)


@router.post("/load", status_code=status.HTTP_202_ACCEPTED, response_model=ModelLoadResponse)
def load_model(body: ModelLoadRequest, request: Request) -> ModelLoadResponse:
    """Load a model folder in the background and serve it once loaded; running streams finish first."""
    engine = get_engine(request)
    try:
        folder = resolve_load_target(body.path, body.name, engine.settings)
    except FileNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from error
    except LoadTargetError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from error
    engine.load_in_background(str(folder))
    return ModelLoadResponse(status="loading", path=str(folder))
