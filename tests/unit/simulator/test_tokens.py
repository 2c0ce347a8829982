from bridge.simulator.tokens import TokenStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_valid_until_it_expires() -> None:
    clock = Clock()
    store = TokenStore(60, clock)
    token = store.issue()
    assert store.status(token) == "valid"
    assert store.remaining(token) == 60
    clock.now += 59.9
    assert store.status(token) == "valid"
    clock.now += 0.1
    assert store.status(token) == "expired"
    assert store.remaining(token) == 0


def test_unknown_tokens_and_counting() -> None:
    store = TokenStore(60, Clock())
    assert store.status("nope") == "unknown"
    assert store.status(None) == "unknown"
    assert store.issue() != store.issue()
    assert store.issued == 2


def test_expire_all() -> None:
    store = TokenStore(60, Clock())
    tokens = [store.issue(), store.issue()]
    store.expire_all()
    assert [store.status(t) for t in tokens] == ["expired", "expired"]
    assert store.status(store.issue()) == "valid"


def test_long_dead_tokens_are_forgotten() -> None:
    clock = Clock()
    store = TokenStore(10, clock)
    old = store.issue()
    clock.now += 25
    store.issue()
    assert store.status(old) == "unknown"
