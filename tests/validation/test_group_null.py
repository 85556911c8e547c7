"""``group=null`` is refused by pandemonium with the valid options, not by Hydra with a ValueError."""

from __future__ import annotations

from pandemonium.cli.main import main


def test_null_group_option_is_a_clear_error(pandemonium_roots, capsys):
    assert main(["attack", "trainer=null"]) == 2
    err = capsys.readouterr().err
    assert "trainer=null" in err and "valid: default, fast" in err and "Traceback" not in err
    assert list(pandemonium_roots.out_dir.iterdir()) == []
