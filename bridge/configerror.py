"""ConfigError: its own module so that config.py and the modules it reads with can both raise it."""

from collections.abc import Mapping


class ConfigError(Exception):
    """The settings are invalid; `problems` names each bad field, readable and secret-free.
    `dotenv`: the `.env` variables the failed load read, None when it read none."""

    def __init__(self, problems: list[str], dotenv: Mapping[str, str | None] | None = None) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.dotenv = dotenv
