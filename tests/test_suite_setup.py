"""The suite's own set-up (tests/conftest.py) does what it says."""

import os
import pathlib

from tests.conftest import LONGEST_FILES, TEST_XLA_FLAGS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_longest_files_exist_and_are_listed_once():
    """A renamed file would silently lose its place at the front of the queue."""
    missing = [path for path in LONGEST_FILES if not (ROOT / path).is_file()]
    assert not missing, f"tests/conftest.py LONGEST_FILES names missing files: {missing}"
    assert len(set(LONGEST_FILES)) == len(LONGEST_FILES)


def test_the_suite_runs_with_its_xla_flags():
    flags = os.environ["XLA_FLAGS"].split()
    for flag in TEST_XLA_FLAGS:
        assert any(word.startswith(f"{flag}=") for word in flags), (flag, flags)
