"""The repository's folders, named once so that moving a test file cannot break its paths."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
FIXTURES = REPO / "tests" / "fixtures"
