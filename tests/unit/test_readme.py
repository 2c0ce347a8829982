"""README.md's module map ("How it works"): every module of bridge/ in it, and only real ones.
And every relative link and #anchor in the three READMEs leads somewhere, and every
`pinecall-bridge` command they show is one the CLI takes. And the "Library privates" table
names the locked versions and modules that exist.

How a row reads: its first cell names folders (`bridge/x/`) and modules (`bridge/x.py`); a name
without `bridge/` is relative to the folder of the name before it (`bridge/config.py`,
`metrics.py`). Its second cell names the modules of the row's folder (`window.py`), relative to
it; a folder there (`calllog/`) is only checked to exist, it needs rows of its own. A folder no
row names a module of is listed as a whole: every module under it counts as listed (the simulator
has its own small table below the map, so it is not one). A folder's `__init__.py` is listed
with the folder, and the package's own with the table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import pytest

from bridge.cli import build_parser
from bridge.simulator.command import build_parser as build_simulator_parser
from tests.integration.conftest import REPO

README = REPO / "README.md"
PACKAGE = PurePosixPath("bridge")


def _map_rows() -> list[tuple[str, str]]:
    """The module map's rows, (first cell, second cell), from every table in "How it works"."""
    section = README.read_text().split("\n## How it works\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| (`bridge/[^|]*)\|(.*)\|$", section, re.M)


def _names(cell: str) -> list[str]:
    """The folders (ending `/`) and modules (ending `.py`) a cell names in backquotes."""
    return re.findall(r"`(\w[\w/]*(?:\.py|/))`", cell)


def _resolve(name: str, base: PurePosixPath) -> PurePosixPath:
    return PurePosixPath(name) if name.startswith("bridge/") else base / name


class ModuleMap:
    """What the README's module map lists: folders, modules, and the folders listed whole."""

    def __init__(self, rows: list[tuple[str, str]]) -> None:
        self.folders: set[PurePosixPath] = set()
        self.modules: set[PurePosixPath] = set()
        self.mentioned: set[PurePosixPath] = set()  # folders a second cell names
        described: set[PurePosixPath] = set()  # folders some row names modules of
        for first, second in rows:
            base = PACKAGE
            row_folders = []
            for name in _names(first):
                path = _resolve(name, base)
                if name.endswith("/"):
                    self.folders.add(path)
                    row_folders.append(path)
                    base = path
                else:
                    self.modules.add(path)
                    base = path.parent
            assert len(row_folders) <= 1 or not _names(second), f"which folder? {first}"
            for name in _names(second):
                path = _resolve(name, base)
                if name.endswith("/"):
                    self.mentioned.add(path)
                else:
                    self.modules.add(path)
                    described.add(base)
        self.whole = self.folders - described

    def lists(self, module: PurePosixPath) -> bool:
        """Whether the map lists this module, by name or within a folder listed whole."""
        if module in self.modules:
            return True
        if module.name == "__init__.py":
            return module.parent in self.folders or module.parent == PACKAGE
        return any(folder in module.parents for folder in self.whole)


def _modules() -> list[PurePosixPath]:
    return sorted(
        PurePosixPath(p.relative_to(REPO).as_posix()) for p in (REPO / "bridge").rglob("*.py")
    )


def test_the_module_map_lists_every_module() -> None:
    modules = _modules()
    assert len(modules) > 100
    listed = ModuleMap(_map_rows())
    missing = [str(m) for m in modules if not listed.lists(m)]
    assert not missing, f"README.md's module map (How it works) does not list {missing}"


def test_the_module_map_names_only_modules_and_folders_that_exist() -> None:
    listed = ModuleMap(_map_rows())
    assert len(listed.modules) > 50
    gone = sorted(str(m) for m in listed.modules if not (REPO / m).is_file())
    gone += sorted(f"{f}/" for f in listed.folders | listed.mentioned if not (REPO / f).is_dir())
    assert not gone, f"README.md's module map (How it works) names what does not exist: {gone}"


def test_a_module_map_row_reads_as_the_docstring_says() -> None:
    rows = [
        ("`bridge/sources/`", " `webhook.py` (HTTP), `calllog/` (below) "),
        ("`bridge/sources/calllog/`", " `follow.py` "),
        ("`bridge/config.py`, `metrics.py`", " the edges, `x/` "),
        ("`bridge/simulator/`", " `simulate`: whole; `0`, `/metrics`, `/_sim/` no names "),
    ]
    listed = ModuleMap(rows)
    assert listed.modules == {
        PurePosixPath(p)
        for p in (
            "bridge/sources/webhook.py",
            "bridge/sources/calllog/follow.py",
            "bridge/config.py",
            "bridge/metrics.py",
        )
    }
    assert listed.mentioned == {PurePosixPath("bridge/sources/calllog"), PurePosixPath("bridge/x")}
    assert listed.whole == {PurePosixPath("bridge/simulator")}
    assert listed.lists(PurePosixPath("bridge/simulator/feed.py"))
    assert listed.lists(PurePosixPath("bridge/sources/calllog/__init__.py"))
    assert not listed.lists(PurePosixPath("bridge/sources/lease.py"))
    assert not listed.lists(PurePosixPath("bridge/sources/calllog/source.py"))


READMES = ("README.md", "deploy/README.md", "helm/pinecall-bridge/README.md")


def _prose(text: str) -> str:
    """The text without its fenced code blocks, whose `](` and `#` are not links or headings."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _anchors(text: str) -> set[str]:
    """A Markdown file's #anchors: its `<a id>`s, GitHub's for its headings (a repeat: -1, -2)."""
    anchors = set(re.findall(r'<a (?:id|name)="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6} +(.+?) *$", _prose(text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def _broken_links(readme: Path) -> list[str]:
    """The relative links of a Markdown file whose file, or #anchor in a .md, does not exist."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)(?: \"[^\"]*\")?\)", _prose(readme.read_text())):
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto: and the like: not ours
            continue
        path, _, anchor = target.partition("#")
        linked = (readme.parent / unquote(path)).resolve() if path else readme
        if not linked.exists() or (
            anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text())
        ):
            broken.append(target)
    return broken


@pytest.mark.parametrize("name", READMES)
def test_every_relative_link_and_anchor_of_a_readme_exists(name: str) -> None:
    broken = _broken_links(REPO / name)
    assert not broken, f"{name} links to what does not exist: {broken}"


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Its Title: `x_y`\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Top\n## Top\n```sh\n# not a heading](gone.md)\n```\n"
        "[a](#top) [b](#top-1) [c](other.md#its-title-x_y) [d](https://example.org/x#y)\n"
        '<a id="here"></a>[i](#here)\n'
        "[e](#nowhere) [f](gone.md) [g](other.md#top) [h](#not-a-heading)\n"
    )
    assert _broken_links(readme) == ["#nowhere", "gone.md", "other.md#top", "#not-a-heading"]


def _code(text: str) -> list[tuple[bool, str]]:
    """Each line of the fenced code blocks (True), then each inline code span (False), its line
    breaks read as spaces as Markdown reads them."""
    lines = [
        (True, line)
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)
        for line in block.splitlines()
    ]
    return lines + [(False, " ".join(s.split())) for s in re.findall(r"`([^`]+)`", _prose(text))]


def _command(words: list[str]) -> tuple[argparse.ArgumentParser, list[str]] | None:
    """The (sub)command's parser the words name, and the words after it; None for no command.
    `simulate` hands its words to the simulator's own parser."""
    parser, at = build_parser(), 0
    while at < len(words):
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or words[at] not in subparsers[0].choices:
            break
        parser, at = subparsers[0].choices[words[at]], at + 1
    if at == 0:
        return None
    return (build_simulator_parser() if words[0] == "simulate" else parser), words[at:]


def _command_problems(text: str) -> tuple[list[str], int]:
    """The problems of every `pinecall-bridge <command>` a Markdown text shows (an option the
    command lacks; an example the CLI refuses), and how many examples were parsed whole."""
    problems, parsed = [], 0
    for block, line in _code(text):
        for match in re.finditer(r"(?:^|[\s/])pinecall-bridge ([a-z].*)", line):
            shown = match.group(1)
            found = _command(shown.split())
            if found is None:
                continue
            parser, rest = found
            options = {o for action in parser._actions for o in action.option_strings}
            # A shell comment ends the command; a Markdown table writes a pipe as `\|`.
            words = re.split(r"\s#\s", " ".join(rest))[0].replace("\\|", "|").split()
            named = re.findall(r"(?<![\w-])--[a-z][a-z-]*", " ".join(words))
            unknown = [option for option in named if option not in options]
            if unknown:
                problems.append(f"{shown!r}: no option {unknown}")
                continue
            # Only an example is parsed whole: a code block's line, or a span giving a value. A
            # synopsis (`[...]`, `<placeholder>`, `a | b`) or a span naming a command or option
            # (`backfill --call`) leaves out what a run needs.
            synopsis = re.search(r"[\[\]<>|…]|\.\.\.", " ".join(words))
            value = any(not w.startswith("-") for w in words)
            if synopsis or "--help" in words or not (block or value):
                continue
            parsed += 1
            refused = io.StringIO()
            try:
                with contextlib.redirect_stderr(refused):
                    build_parser().parse_args(shlex.split(shown, comments=True))
            except SystemExit:
                problems.append(f"{shown!r}: {refused.getvalue().strip().splitlines()[-1]}")
    return problems, parsed


def test_every_pinecall_bridge_command_of_the_readmes_is_one_the_cli_takes() -> None:
    problems, parsed = [], 0
    for name in READMES:
        found, count = _command_problems((REPO / name).read_text())
        problems += [f"{name}: {problem}" for problem in found]
        parsed += count
    assert not problems, "\n".join(problems)
    assert parsed >= 10, f"only {parsed} examples parsed: is the README's code still found?"


def test_a_wrong_pinecall_bridge_command_is_found() -> None:
    problems, parsed = _command_problems(
        "```sh\n"
        ".venv/bin/pinecall-bridge send --secret-file ./s --curl   # a comment --nope\n"
        "BRIDGE_X=1 pinecall-bridge tail --since 2h --limit 0\n"
        "pinecall-bridge webhooks register --url https://b.example/h [--secret S] [--replace]\n"
        "pinecall-bridge simulate --help\n"
        "helm install pinecall-bridge helm/pinecall-bridge \\\n"
        "```\n"
        "`pinecall-bridge backfill --call` and `pinecall-bridge redrive --since <time> --dry-run`,"
        " `pinecall-bridge tail [--topic T ... \\| --everywhere]`, `pinecall-bridge check \\| jq`;"
        " `pinecall-bridge webhooks register\n--secret NEW`, `pinecall-bridge tail --follow`,"
        " `pinecall-bridge simulate --ws-legacy 0.1 --rate-limit 5`\n"
    )
    assert problems == [
        "'tail --since 2h --limit 0': pinecall-bridge tail: error: argument --limit:"
        " 0 is not 1 or more",
        "'webhooks register --secret NEW': pinecall-bridge webhooks register: error:"
        " the following arguments are required: --url",
        "'tail --follow': no option ['--follow']",
        "'simulate --ws-legacy 0.1 --rate-limit 5': no option ['--rate-limit']",
    ]
    assert parsed == 3  # send, tail and register --secret NEW: the rest show no example


def _privates_rows() -> list[tuple[str, str, str]]:
    """The "Library privates" table's rows: (library, its version, the bridge modules' cell); a
    row with an empty first cell is the library of the row above."""
    section = README.read_text().split("\n### Library privates", 1)[1].split("\n#", 1)[0]
    rows, library, pinned = [], "", ""
    for first, modules in re.findall(r"^\| ([^|]*)\|[^|]*\|([^|]*)\|$", section, re.M):
        if first.strip():
            library, _, pinned = first.strip().partition(" ")
        rows.append((library, pinned, modules))
    return rows[2:]  # the header and its rule


def test_the_library_privates_table_names_the_locked_versions_and_real_modules() -> None:
    # The table says which versions its privates were checked against: after `make lock`
    # moved a library, a row naming the old version tells the reader they were.
    rows = _privates_rows()
    assert len(rows) >= 8
    lock = dict(
        re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements.lock").read_text(), re.M)
    )
    locked = {name.lower().replace("_", "-"): pin for name, pin in lock.items()}
    stale = sorted({f"{lib} {pin}" for lib, pin, _ in rows if locked.get(lib) != pin})
    assert not stale, f"README's Library privates names versions the lock does not: {stale}"
    gone = sorted(
        module
        for _, _, cell in rows
        for module in re.findall(r"`(\w[\w/]*\.py)`", cell)
        if not (REPO / PACKAGE / module).is_file()
    )
    assert not gone, f"README's Library privates names modules that do not exist: {gone}"
