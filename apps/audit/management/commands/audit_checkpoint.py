"""``manage.py audit_checkpoint [--out FILE]``: sign the head of every audit chain and export it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from apps.audit.services import audit_record
from apps.audit.verification import CheckpointError, checkpoint_create
from apps.common.context import Actor


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees a half-written checkpoint."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Command(BaseCommand):
    help = (
        "Create an Ed25519-signed checkpoint of every audit chain's head, store it, and write the JSON "
        "document to FILE (or stdout). Keep the file outside the database: `audit_verify --checkpoint "
        "FILE` then detects truncation or a rewrite of the log up to that point."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", metavar="FILE", default=None, help="Write the document here (default: stdout).")

    def handle(self, *args: Any, out: str | None, **options: Any) -> None:
        target = Path(out) if out else None
        if target is not None and not target.parent.is_dir():
            raise CommandError(f"directory {target.parent} does not exist", returncode=2)
        try:
            with transaction.atomic():  # the stored checkpoint and its audit event commit together
                doc = checkpoint_create()
                audit_record(
                    action="audit.checkpoint_created",
                    actor=Actor.system("manage.py audit_checkpoint"),
                    details={"key_id": doc["key_id"], "num_chains": len(json.loads(doc["payload"])["chains"])},
                )
        except CheckpointError as exc:  # a misconfigured signing key
            raise CommandError(str(exc), returncode=2)
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        if target is None:
            self.stdout.write(text, ending="")
            return
        try:
            write_atomically(target, text)
        except OSError as exc:
            raise CommandError(f"cannot write {target}: {exc.strerror or exc}", returncode=2)
        self.stderr.write(f"Checkpoint signed by key {doc['key_id']} written to {target}.")
