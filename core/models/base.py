"""The declarative base every table shares: constraint names, JSON columns, timestamps."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Double, MetaData
from sqlalchemy.orm import DeclarativeBase

from core.clock import utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    # float is Double, as SQLAlchemy 2.1 maps it and migration 0001 creates it
    # (2.0 would say Float): the model means the same with either release.
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, float: Double}


def _now() -> datetime:
    return utcnow()


Timestamp = DateTime(timezone=True)
