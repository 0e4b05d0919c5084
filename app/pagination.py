"""Cursor pagination (``?limit=&after=`` -> ``{"data": [...], "has_more": bool}``)."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=1000, description="Most items to return (1-1000).")]


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    object: str = Field("list", description="Always 'list'.")
    data: list[T] = Field(..., description="The items, in list order.")
    has_more: bool = Field(..., description="True when more items follow; pass the last item's id as 'after'.")
