"""Cached prepared tensors sealed under a key derived from the owner's version key: the salt of
each entry's own key (entries without one were sealed under the coordinator's key and are read
as a miss, then removed)."""

from django.db import migrations, models


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
    ]
