#!/usr/bin/env python3
"""Download the Kafka broker's jars pinned in jars.lock from Maven Central and verify each one.

    tools/kafka/fetch_jars.py tools/kafka/jars.lock DEST_DIR

Every jar's sha512 is in the lock file (written by lock.py); a download whose sum differs is
refused and nothing is kept. Sums published beside the jars are never consulted here: whoever
can change a jar can change them too. Stdlib only, so it needs neither Maven nor the venv.
Env: MAVEN_REPO_URL (https://repo1.maven.org/maven2/), e.g. a mirror; the pinned sums still apply.
Exit status 1 with one line on stderr on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CENTRAL = "https://repo1.maven.org/maven2/"
TIMEOUT = 60.0
PARALLEL = 4


class FetchError(Exception):
    pass


@dataclass(frozen=True)
class Jar:
    group: str
    artifact: str
    version: str
    classifier: str
    sha512: str

    @property
    def coords(self) -> str:
        tail = f":{self.classifier}" if self.classifier else ""
        return f"{self.group}:{self.artifact}:{self.version}{tail}"

    @property
    def filename(self) -> str:
        tail = f"-{self.classifier}" if self.classifier else ""
        return f"{self.artifact}-{self.version}{tail}.jar"

    def url(self, repo: str) -> str:
        path = "/".join([*self.group.split("."), self.artifact, self.version, self.filename])
        return repo.rstrip("/") + "/" + path


def parse_lock(text: str) -> list[Jar]:
    """`group:artifact:version[:classifier] sha512:<hex>` lines; `#` starts a comment."""
    jars = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            coords, digest = line.split()
            algo, hexsum = digest.split(":", 1)
            parts = coords.split(":")
            if algo != "sha512" or len(hexsum) != 128 or len(parts) not in (3, 4):
                raise ValueError
            int(hexsum, 16)
        except ValueError:
            raise FetchError(
                f"lock file line {number} is not 'g:a:v sha512:<hex>': {raw!r}"
            ) from None
        jars.append(Jar(*parts[:3], parts[3] if len(parts) == 4 else "", hexsum.lower()))
    return jars


def download(url: str, dest: Path) -> tuple[str, str]:
    """Stream `url` into `dest`; its (sha512, sha1)."""
    sha512, sha1 = hashlib.sha512(), hashlib.sha1()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp, dest.open("wb") as out:
            while chunk := resp.read(1 << 16):
                sha512.update(chunk)
                sha1.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        dest.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"cannot download {url}: {reason}") from None
    return sha512.hexdigest(), sha1.hexdigest()


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(jar: Jar, dest_dir: Path, repo: str) -> int:
    """Put `jar` in `dest_dir`, verified; its size. A verified copy already there is kept."""
    dest = dest_dir / jar.filename
    if dest.is_file() and sha512_of(dest) == jar.sha512:
        return dest.stat().st_size
    part = dest.with_name(dest.name + ".part")
    url = jar.url(repo)
    got, _ = download(url, part)
    if got != jar.sha512:
        part.unlink()
        raise FetchError(
            f"refusing {jar.coords}: the sha512 of {url} is {got[:16]}…, "
            f"jars.lock pins {jar.sha512[:16]}… (a tampered or different file)"
        )
    part.rename(dest)
    return dest.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lock", type=Path)
    ap.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    repo = os.environ.get("MAVEN_REPO_URL") or CENTRAL
    start = time.monotonic()
    try:
        jars = parse_lock(args.lock.read_text())
        args.dest.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(PARALLEL) as pool:
            sizes = list(pool.map(lambda jar: fetch(jar, args.dest, repo), jars))
    except (FetchError, OSError) as exc:
        print(f"fetch_jars: {exc}", file=sys.stderr)
        return 1
    print(
        f"fetch_jars: {len(jars)} jars ({sum(sizes) / 1e6:.0f} MB) in place, each sha512 "
        f"as pinned ({time.monotonic() - start:.1f} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
