"""Cached prepared tensors sealed under a key derived from the owner's version key: the salt of
each entry's own key. Entries written before it were sealed under the coordinator's key, which
a crypto-shred of the owner would not make unreadable: they are removed here, rows and objects
(they are a cache: the next task computes them again)."""

import contextlib
from typing import Any

from django.db import migrations, models


def purge_coordinator_sealed(apps: Any, schema_editor: Any) -> None:
    from django.core.files.storage import storages

    rows = apps.get_model("federation", "PreparedCache")._base_manager.using(schema_editor.connection.alias)
    for name in list(rows.values_list("storage_name", flat=True)):
        with contextlib.suppress(Exception):  # an object already gone is fine: the row goes either way
            storages["objects"].delete(name)
    rows.all().delete()


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
