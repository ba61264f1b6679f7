"""Request dependencies shared by the routers: settings, Redis and the optional API key."""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis

from shared.settings import Settings

_bearer = HTTPBearer(auto_error=False)


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> Redis:
    return request.app.state.redis


def require_api_key(
    settings: Settings = Depends(get_app_settings),
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """Reject the request with 401 unless API_KEY is unset or the bearer token matches it."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value()
    if credentials is None or not secrets.compare_digest(credentials.credentials, expected):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid API key; send `Authorization: Bearer <API_KEY>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
