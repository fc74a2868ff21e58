"""The optional central evaluation set: a site role ``central`` (the coordinator's own held-out
dataset) and each round's metrics on it, kept apart from the sites'."""

from django.db import migrations, models

ROLES = [
    ("train", "Trains and evaluates"),
    ("evaluate", "Evaluates only"),
    ("central", "Central evaluation set (the coordinator's)"),
]


class Migration(migrations.Migration):
    dependencies = [
        ("federation", "0005_prepared_cache"),
    ]

    operations = [
        migrations.AddField(
            model_name="round",
            name="central_metrics",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AlterField(
            model_name="federationsite",
            name="role",
            field=models.CharField(choices=ROLES, default="train", max_length=16),
        ),
    ]
