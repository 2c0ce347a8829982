"""A local process cut off the network as a vanished host is: its packets dropped, no RST.

iptables drops every packet to or from the process's listening ports, every packet of the TCP
connections it has open, and (by its cgroup v2, which it is moved into) every packet of the
sockets it opens later: connects to it and from it hang, its open connections go silent. Needs
root, iptables and a cgroup v2 hierarchy; `unavailable()` says which is missing.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

CGROUP2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
LISTEN = "0A"  # /proc/net/tcp's state of a listening socket


@dataclass(frozen=True)
class Connection:
    """One TCP socket of /proc/net/tcp{,6}: its inode, local and remote ports."""

    inode: int
    local_port: int
    remote_port: int
    listening: bool


def parse_proc_net_tcp(text: str) -> list[Connection]:
    """The sockets of a /proc/net/tcp or tcp6 table (its header line skipped)."""
    connections = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        connections.append(
            Connection(
                inode=int(inode),
                local_port=int(local.rpartition(":")[2], 16),
                remote_port=int(remote.rpartition(":")[2], 16),
                listening=state == LISTEN,
            )
        )
    return connections


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets among a process's open files."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def open_connections(pid: int) -> list[Connection]:
    """The process's TCP connections (listening sockets left out), IPv4 and IPv6 alike."""
    inodes = socket_inodes(pid)
    table = [
        c
        for name in ("tcp", "tcp6")
        for c in parse_proc_net_tcp(Path(f"/proc/{pid}/net/{name}").read_text())
    ]
    return [c for c in table if c.inode in inodes and not c.listening]


def cgroup2_root() -> Path | None:
    for root in CGROUP2_ROOTS:
        if (root / "cgroup.procs").exists() and (root / "cgroup.controllers").exists():
            return root
    return None


def iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=30)


@functools.cache  # one probe rule added and removed per session, at most
def unavailable() -> str | None:
    """Why a process cannot be cut off here, or None when it can."""
    if os.geteuid() != 0:
        return "cutting a node off needs root (iptables)"
    if shutil.which("iptables") is None:
        return "iptables is not installed (apt-get install iptables)"
    root = cgroup2_root()
    if root is None:
        return f"no cgroup v2 hierarchy at {' or '.join(map(str, CGROUP2_ROOTS))}"
    probe = root / f"netcut-probe-{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
        rule = ["OUTPUT", "-m", "cgroup", "--path", probe.name, "-j", "DROP"]
        added = iptables("-A", *rule)
        if added.returncode != 0:
            return f"iptables refused a cgroup rule: {added.stderr.strip()}"
        iptables("-D", *rule)
    except OSError as error:
        return f"cannot make a cgroup under {root}: {error}"
    finally:
        with suppress(OSError):
            probe.rmdir()
    return None


def drop_rules(ports: Sequence[int], connections: Sequence[Connection]) -> list[list[str]]:
    """INPUT rule specs (all traffic here is local, so every packet passes INPUT): the listening
    ports' packets either way, and each open connection's both ways."""
    rules = []
    for port in ports:
        rules.append(["-p", "tcp", "--dport", str(port), "-j", "DROP"])
        rules.append(["-p", "tcp", "--sport", str(port), "-j", "DROP"])
    for c in connections:
        if c.local_port in ports:
            continue  # accepted on a listening port: dropped by its rules
        # Both ports: an ephemeral port may be another process's too, towards another peer.
        local, remote = str(c.local_port), str(c.remote_port)
        rules.append(["-p", "tcp", "--sport", local, "--dport", remote, "-j", "DROP"])
        rules.append(["-p", "tcp", "--sport", remote, "--dport", local, "-j", "DROP"])
    return rules


def _checked(*args: str) -> None:
    done = iptables(*args)
    if done.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {done.stderr.strip()}")


@contextmanager
def cut_off(pid: int, ports: Sequence[int], name: str) -> Iterator[None]:
    """Process `pid`, listening on `ports`, cut off within the block; reconnected on leaving
    (a failed test too). `name` names its iptables chain and cgroup (28 characters at most)."""
    root = cgroup2_root()
    if root is None:
        raise RuntimeError("no cgroup v2 hierarchy")
    group = root / name
    home = root / Path(f"/proc/{pid}/cgroup").read_text().split("::", 1)[1].strip().lstrip("/")
    cgroup_rule = ["OUTPUT", "-m", "cgroup", "--path", name, "-j", "DROP"]
    group.mkdir()
    chained = False
    try:
        # Sockets opened from now on are the group's; those opened before are listed after.
        (group / "cgroup.procs").write_text(str(pid))
        _checked("-N", name)
        for rule in drop_rules(ports, open_connections(pid)):
            _checked("-A", name, *rule)
        _checked("-I", "INPUT", "-j", name)
        chained = True
        _checked("-I", *cgroup_rule)
        yield
    finally:
        iptables("-D", *cgroup_rule)
        if chained:
            iptables("-D", "INPUT", "-j", name)
        iptables("-F", name)
        iptables("-X", name)
        with suppress(OSError):  # gone if the process exited
            (home / "cgroup.procs").write_text(str(pid))
        group.rmdir()
