"""A grant carries the (ε, δ) allotment the owner gives the grantee. New nullable columns only:
the table's RLS policies and audit capture (0002) cover them unchanged."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("datasets", "0002_rls")]

    operations = [
        migrations.AddField(
            model_name="datasetgrant",
            name="epsilon_allotment",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddField(
            model_name="datasetgrant",
            name="delta_allotment",
            field=models.DecimalField(blank=True, decimal_places=12, max_digits=14, null=True),
        ),
    ]
