"""Print (or write) the permission matrix as the Markdown table used in docs/permissions.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.tenancy.policy import markdown_table

BEGIN, END = "<!-- permissions:begin -->", "<!-- permissions:end -->"


def render_into(doc: str) -> str:
    """Replace the generated block of ``doc`` with the current table."""
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{markdown_table()}\n{END}{tail}"


class Command(BaseCommand):
    help = "Print the permission matrix, or --write it into docs/permissions.md."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--write", metavar="FILE", help="update the generated block of FILE in place")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["write"]:
            path = Path(options["write"])
            path.write_text(render_into(path.read_text()))
            self.stdout.write(f"updated {path}")
        else:
            self.stdout.write(markdown_table())
