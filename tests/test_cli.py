import subprocess
import sys

import pytest

from jaxsae import cli


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: jaxsae" in out


@pytest.mark.parametrize("name", sorted(cli._available()))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert f"jaxsae {name}" in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "jaxsae", "--help"], capture_output=True, text=True, check=True
    )
    assert "COMMAND" in out.stdout
