"""The README keeps in step with the code: every setting documented, the two commands first."""

from __future__ import annotations

import re

from services.common.settings import Settings, env_name
from tests.helpers.procs import REPO

README = (REPO / "README.md").read_text()


def test_settings_table_matches_settings():
    documented = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| [^|]+ \| (.+) \|$", README, flags=re.M))
    fields = {env_name(name): field for name, field in Settings.model_fields.items()}
    assert set(documented) == set(fields)
    for name, field in fields.items():
        assert documented[name] == field.description, name


def test_the_two_commands_come_first():
    first = README.index("## Two commands")
    assert README.index("make run") > first and README.index("make test") > first
    assert README.index("make run") < README.index("## Ports")


def test_benchmark_figures_are_filled_in():
    assert "STARTUP_STEPS_TABLE" not in README and "READY_TABLE" not in README and "NETVOLUME_TABLE" not in README
