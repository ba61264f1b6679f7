"""Placeholder router; its routes are added with the inference API."""

from fastapi import APIRouter

router = APIRouter()
