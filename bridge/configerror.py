"""ConfigError: its own module so that config.py and the modules it reads with can both raise it."""


class ConfigError(Exception):
    """The settings are invalid; `problems` names each bad field, readable and secret-free."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
