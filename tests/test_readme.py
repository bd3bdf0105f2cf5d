"""The README stays true: every setting is documented there."""

from __future__ import annotations

from pathlib import Path

from batchops.settings import Settings

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [
        name
        for name, field in Settings.model_fields.items()
        if f"BATCHOPS_{name.upper()}" not in README
        and not (field.validation_alias and any(a in README for a in field.validation_alias.choices))  # type: ignore[union-attr]
    ]
    assert not missing, f"settings missing from README: {missing}"


def test_readme_first_screen_shows_run_and_test() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert "make run" in first_screen and "make test" in first_screen
