import pytest

from bridge.dedup import DedupWindow, MemoryDedupStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_remembers_until_ttl() -> None:
    clock = Clock()
    window = DedupWindow(ttl=10, max_entries=100, clock=clock)
    window.add("a")
    clock.now += 9.9
    assert "a" in window
    clock.now += 0.2
    assert "a" not in window
    assert len(window) == 0


def test_size_is_bounded_oldest_first() -> None:
    window = DedupWindow(ttl=1000, max_entries=3, clock=Clock())
    for key in "abcd":
        window.add(key)
    assert len(window) == 3
    assert "a" not in window
    assert all(key in window for key in "bcd")


def test_readd_refreshes_and_moves_to_back() -> None:
    clock = Clock()
    window = DedupWindow(ttl=10, max_entries=2, clock=clock)
    window.add("a")
    window.add("b")
    clock.now += 5
    window.add("a")
    window.add("c")  # evicts b, the oldest, not the refreshed a
    assert "a" in window
    assert "c" in window
    assert "b" not in window
    clock.now += 7
    assert "a" in window


def test_expire_forgets_old_ids() -> None:
    clock = Clock()
    window = DedupWindow(ttl=10, max_entries=100, clock=clock)
    window.add("a")
    clock.now += 5
    window.add("b")
    clock.now += 6
    assert window.expire() == 1
    assert len(window) == 1


@pytest.mark.parametrize(("ttl", "size"), [(0, 1), (1, 0)])
def test_refuses_nonsense(ttl: float, size: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        DedupWindow(ttl=ttl, max_entries=size)


async def test_memory_store() -> None:
    store = MemoryDedupStore(DedupWindow(ttl=10, max_entries=10))
    assert not await store.seen("x")
    await store.remember("x")
    assert await store.seen("x")
    assert store.size() == 1
