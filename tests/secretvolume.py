"""A Kubernetes Secret volume as the kubelet writes and rotates it, for BRIDGE_SECRETS_DIR."""

from __future__ import annotations

import tempfile
from pathlib import Path


def kubelet_write(directory: Path, files: dict[str, str]) -> None:
    """Write `files` as the kubelet does: a new timestamped directory, `..data` swapped to it
    by a rename (atomic), each visible file a link through `..data`; the old version removed."""
    directory.mkdir(exist_ok=True)
    data = directory / "..data"
    old = data.resolve() if data.is_symlink() else None
    fresh = Path(tempfile.mkdtemp(prefix="..2026_12_04_", dir=directory))
    for name, text in files.items():
        (fresh / name).write_text(text)
    (directory / "..data_tmp").symlink_to(fresh.name)
    (directory / "..data_tmp").rename(data)
    for name in files:
        visible = directory / name
        if not visible.is_symlink():
            visible.symlink_to(f"..data/{name}")
    if old is not None:
        for entry in old.iterdir():
            entry.unlink()
        old.rmdir()
