"""Cached prepared tensors sealed under a key derived from the owner's version key: the salt of
each entry's own key. Entries written before it were sealed under the coordinator's key, which
a crypto-shred of the owner would not make unreadable: they are removed here, rows and objects
(they are a cache: the next task computes them again)."""

import contextlib
from typing import Any

from django.db import migrations, models

TABLE = "federation_preparedcache"


def purge_coordinator_sealed(apps: Any, schema_editor: Any) -> None:
    """Every entry at this point predates the salt. The table forces row-level security even on its
    owner, so the owner lifts that for this one statement pair (in the migration's transaction)."""
    from django.core.files.storage import storages

    with schema_editor.connection.cursor() as cur:
        cur.execute(f'ALTER TABLE "{TABLE}" NO FORCE ROW LEVEL SECURITY')
        cur.execute(f'DELETE FROM "{TABLE}" RETURNING storage_name')
        names = [row[0] for row in cur.fetchall()]
        cur.execute(f'ALTER TABLE "{TABLE}" FORCE ROW LEVEL SECURITY')
    for name in names:
        with contextlib.suppress(Exception):  # an object already gone is fine: its row is gone
            storages["objects"].delete(name)


class Migration(migrations.Migration):
    dependencies = [
        ("federation", "0006_central_set"),
    ]

    operations = [
        migrations.AddField(
            model_name="preparedcache",
            name="salt",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.RunPython(purge_coordinator_sealed, migrations.RunPython.noop),
    ]
