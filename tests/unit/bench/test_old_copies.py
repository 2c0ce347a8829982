"""The A/B harnesses' old-side copies keep the call signature of what they replace."""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench import dedupstep, feedpath, handlerpath

# Each harness, the name its VARIANTS lambdas call `patched` by, and what a variant is given.
HARNESSES = [
    pytest.param(handlerpath, "_patched", (), id="handlerpath"),
    pytest.param(dedupstep, "_patched", (), id="dedupstep"),
    pytest.param(feedpath, "patched", (None,), id="feedpath"),
]


def _patches(
    monkeypatch: pytest.MonkeyPatch, harness: ModuleType, patcher: str, given: tuple[Any, ...]
) -> list[tuple[Any, str, Any]]:
    """Every (owner, name, value) the VARIANTS table patches in, read off the table itself."""
    found: list[tuple[Any, str, Any]] = []

    def recording(*patches: tuple[Any, str, Any]) -> contextlib.nullcontext[None]:
        found.extend(patches)
        return contextlib.nullcontext()

    # The variants' lambdas look the patcher up when called; what they answer is never entered.
    monkeypatch.setattr(harness, patcher, recording)
    for variant in harness.VARIANTS.values():
        variant(*given)
    return found


def _copies(
    monkeypatch: pytest.MonkeyPatch, harness: ModuleType, patcher: str, given: tuple[Any, ...]
) -> dict[str, tuple[Any, str, Any]]:
    """The patches whose value is a function copied into the harness, by its name.

    handlerpath's `stop-middleware` swaps `_path.call` for a chain of today's middlewares, no
    copy: left out.
    """
    return {
        value.__name__: (owner, name, value)
        for owner, name, value in _patches(monkeypatch, harness, patcher, given)
        if inspect.isfunction(value) and value.__module__ == harness.__name__
    }


def _call_shape(function: Any) -> tuple[bool, inspect.Signature]:
    """What a call depends on: async or not, each parameter's name, kind, order and default.

    Annotations are left out: strings here (postponed), and no caller's concern.
    """
    signature = inspect.signature(function)
    bare = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return inspect.iscoroutinefunction(function), signature.replace(
        parameters=bare, return_annotation=signature.empty
    )


def _shown(shape: tuple[bool, inspect.Signature]) -> str:
    return ("async " if shape[0] else "") + str(shape[1])


@pytest.mark.parametrize(("harness", "patcher", "given"), HARNESSES)
def test_every_old_copy_takes_the_signature_of_the_attribute_it_replaces(
    monkeypatch: pytest.MonkeyPatch, harness: ModuleType, patcher: str, given: tuple[Any, ...]
) -> None:
    copies = _copies(monkeypatch, harness, patcher, given)
    assert copies, "the VARIANTS table patches in no copy: the reading of it broke"
    drifted = []
    for copy, (owner, name, value) in sorted(copies.items()):
        old, live = _call_shape(value), _call_shape(getattr(owner, name))
        if old != live:
            drifted.append(f"{copy}: {_shown(old)}, but {name}: {_shown(live)}")
    assert drifted == []


@pytest.mark.parametrize(("harness", "patcher", "given"), HARNESSES)
def test_every_old_copy_is_patched_in_by_some_variant(
    monkeypatch: pytest.MonkeyPatch, harness: ModuleType, patcher: str, given: tuple[Any, ...]
) -> None:
    # A copy no variant patches in would go unchecked above (and unmeasured).
    defined = {name for name in vars(harness) if name.startswith("_old_")}
    assert set(_copies(monkeypatch, harness, patcher, given)) == defined


def test_every_harness_with_old_copies_is_checked() -> None:
    # A new harness keeping copies must join HARNESSES, or its copies drift unseen.
    import bench

    checked = {p.id for p in HARNESSES}
    keeping = set()
    for path in sorted(Path(bench.__file__).parent.glob("*.py")):
        if "def _old_" in path.read_text():
            keeping.add(path.stem)
    assert keeping == checked
