"""How many bytes decoded text takes in UTF-8, as the wire counted it. Pure."""

from __future__ import annotations


def utf8_size(text: str) -> int:
    """The UTF-8 size of `text`: its length when ASCII, which almost every event is."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
