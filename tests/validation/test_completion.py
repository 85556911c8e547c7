"""Tab completion after the documented positional form ``pandemonium attack ...`` offers candidates."""

from __future__ import annotations

from pandemonium.cli.main import completion_line, main


def test_positional_mode_becomes_a_mode_override_for_completion():
    assert completion_line("pandemonium attack attack.st", ["attack"]) == "pandemonium mode=attack attack.st"
    assert completion_line("pandemonium att", ["attack"]) == "pandemonium att"  # still being typed
    assert completion_line("pandemonium seed=1 attack ", ["attack"]) == "pandemonium seed=1 mode=attack "


def test_completion_after_positional_mode_lists_candidates(monkeypatch, capsys):
    monkeypatch.setenv("COMP_LINE", "pandemonium attack attack.st")
    assert main(["-sc", "query=bash"]) == 0
    assert "attack.steps=" in capsys.readouterr().out.split()
