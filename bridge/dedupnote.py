"""What backfill and redrive say before they publish again what the dedup window has forgotten."""

from __future__ import annotations


def republish_note(ttl: float, published: str, *, dry_run: bool = False) -> str:
    """The note (rich markup) that `published` ("entries", "events") older than the dedup
    window are published again; of a dry run, that they would be."""
    fate = (
        f"without --dry-run, {published} published longer ago than that would be published"
        if dry_run
        else f"{published} published longer ago than that are published"
    )
    return (
        f"[yellow]note[/]: the dedup stage remembers ids for {ttl:g} s"
        f" (BRIDGE_DEDUP__TTL_SECONDS): {fate} again, with the same CloudEvent ids"
    )
