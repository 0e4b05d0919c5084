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


def newest_first(session, query, model, *, limit: int, anchor=None) -> tuple[list, bool]:
    """Run ``query`` (a ``select(model)``) newest first by (created_at, id), the rows after ``anchor``
    (a row of ``model`` or None), at most ``limit``; returns (rows, has_more)."""
    query = query.order_by(model.created_at.desc(), model.id.desc())
    if anchor is not None:
        query = query.where((model.created_at < anchor.created_at)
                            | ((model.created_at == anchor.created_at) & (model.id < anchor.id)))
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def oldest_first(session, query, model, *, limit: int, after: int | None) -> tuple[list, bool]:
    """Run ``query`` in increasing integer ``id`` order, ids above ``after``, at most ``limit``; returns (rows, has_more)."""
    query = query.order_by(model.id)
    if after is not None:
        query = query.where(model.id > after)
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit
