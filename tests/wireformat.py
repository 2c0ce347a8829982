"""The one message of every test pinning a format another release reads from Kafka."""

from __future__ import annotations

BREAKS_ROLLING_UPGRADES = (
    "this breaks rolling upgrades (old and new pods read each other's records, and a rollback"
    " reads the new one's): bump the version and keep reading the old one (README 'Upgrading')"
)
