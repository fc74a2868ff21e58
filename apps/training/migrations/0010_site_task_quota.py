from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("training", "0009_dp_jobs")]

    operations = [
        migrations.AddField(
            model_name="trainingquota",
            name="max_site_tasks",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
    ]
