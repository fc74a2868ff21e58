"""Resource limits for ingest, in one frozen value so a job can carry (and log) the limits it ran under.

Defaults are sized for one worker handling multi-GB uploads with flat memory: the limits bound what
a single upload can make the worker read, decompress or keep, not how much RAM it may use (the
streaming design keeps that flat regardless).
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    """Caps on an upload. All byte counts are bytes actually read or decompressed."""

    # Tabular files.
    max_bytes: int = 20 * GiB
    max_columns: int = 2000
    max_row_errors_reported: int = 100
    # A single cell. A whole CSV record must also fit in the reader's block, max(1 MiB, 2 x this).
    max_field_bytes: int = 256 * KiB
    # Distinct values counted exactly per column before the report says ">10000".
    max_distinct_tracked: int = 10_000
    # Classes counted for the label (class_balance); more than this is not a classification task.
    max_classes: int = 100
    # Bytes read for encoding/format sniffing.
    sniff_bytes: int = 8 * MiB

    # Zip archives of images (the names are the zip limits; tabular files ignore them).
    max_members: int = 10_000
    max_total_uncompressed: int = 4 * GiB
    max_member_ratio: float = 100.0
    max_member_bytes: int = 64 * MiB
    max_labels_bytes: int = 64 * MiB
    image_extensions: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})
