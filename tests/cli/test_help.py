"""Every `hin` command explains itself: each option has help text, every help shows the
defaults, and a mistake after a subcommand is answered with that subcommand's usage."""

from __future__ import annotations

import argparse

import pytest

from hin.cli import build_parser, main


def parsers(parser=None, name="hin"):
    """(command name, parser) for `hin` and every subcommand, nested ones included."""
    parser = parser or build_parser()
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, child in action.choices.items():
                yield from parsers(child, f"{name} {word}")


ALL = list(parsers())


def test_every_option_of_every_command_has_help_text():
    missing = [f"{name} {action.option_strings or action.dest}" for name, parser in ALL
               for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
               and not (action.help or "").strip()]
    assert len(ALL) > 15 and missing == []


@pytest.mark.parametrize("command, shown", [
    (["data", "vocab"], "--min-freq MIN_FREQ keep words seen at least this often in the train + val "
                        "captions (default: 5)"),
    (["data", "synth"], "(default: 0)"),
    (["serve"], "(default: info)"),
    (["evaluate"], "images decoded at once (default: 50)"),
    (["explain"], "--width-in WIDTH_IN"),
])
def test_help_shows_the_defaults(command, shown, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert " ".join(shown.split()) in " ".join(capsys.readouterr().out.split())


def test_every_help_uses_the_one_formatter():
    from hin.cli.options import HelpFormatter

    names = [name for name, parser in ALL
             if not isinstance(parser._get_formatter(), HelpFormatter)]
    assert names == []


def test_an_unknown_option_after_a_subcommand_prints_that_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["data", "check", "--bogus"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: hin data check") and "unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", "a.pt", "--split", "val", "--nope"])
    assert capsys.readouterr().err.startswith("usage: hin evaluate")


def test_demo_has_a_description_and_regions_help_no_grid_wording(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "synthetic world of coloured shapes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["extract", "regions", "--help"])
    assert "grid" not in capsys.readouterr().out.lower()
