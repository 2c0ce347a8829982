"""Session-wide test set-up: the Hypothesis profiles (see tests/fuzz.py)."""

from tests.fuzz import register_profiles

register_profiles()
