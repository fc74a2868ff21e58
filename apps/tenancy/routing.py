"""Database router: inside ``platform_scope`` the ORM uses the platform role's connection."""

from __future__ import annotations

from typing import Any

from apps.tenancy.scope import db_alias


class ScopeRouter:
    """Reads and writes go to ``db_alias()``: ``platform`` in platform scope, else ``default``.

    Migrations are never routed (they run with ``--database owner``)."""

    def db_for_read(self, model: type, **hints: Any) -> str:
        return db_alias()

    def db_for_write(self, model: type, **hints: Any) -> str:
        return db_alias()

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True  # one database, several roles

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return None
