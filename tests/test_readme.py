"""The README is kept true: every setting is in its table, and the quickstart commands exist."""

from __future__ import annotations

from refold_dispatch.config import Settings
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [f"REFOLD_{name.upper()}" for name in Settings.model_fields if f"`REFOLD_{name.upper()}`" not in README]
    assert missing == []


def test_the_check_command_the_readme_gives_is_what_ci_runs() -> None:
    assert "bash scripts/check" in README
    assert "bash scripts/check" in (ROOT / ".ci" / "run").read_text().replace("exec bash", "bash")
