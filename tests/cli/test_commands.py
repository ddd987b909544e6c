"""Command-line behaviour shared by commands: a reader of stdout that goes away, a repeated
--checkpoint, outputs checked before the work, and no temporary file name in any message."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import hin.metrics
from helpers.paths import SRC
from hin.cli import main
from hin.files import atomic_write

PRINTS = """
import sys
import hin.cli.caption as command

def caption(args):
    if sys.argv[1] == "short":
        sys.stdin.readline()            # written once the reader is gone
        print("one caption")
    else:
        for line in range(200_000):
            print(f"caption {line}")
    return 0

command._caption = caption
from hin.cli import main
sys.exit(main(["caption", "x.jpg", "--checkpoint", "a.pt"]))
"""


@pytest.mark.parametrize("output", ["long", "short"])
def test_a_reader_that_goes_away_ends_hin_quietly(output):
    """`hin caption ... | head -1`: no "[Errno 32] Broken pipe", no traceback, and the exit
    status of a tool ended by SIGPIPE (141), whether the pipe breaks while writing or when
    the output is flushed at the end."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", PRINTS, output], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    if output == "long":
        assert child.stdout.readline() == b"caption 0\n"
    child.stdout.close()
    child.stdin.write(b"go\n")
    child.stdin.close()
    assert child.wait(timeout=120) == 141
    assert child.stderr.read() == b""


@pytest.mark.parametrize(("command", "instead"), [
    (["caption", "x.jpg"], "give one (an ensemble is scored by `hin evaluate"),
    (["explain", "x.jpg", "--out", "figures"], "give the others with --compare"),
    (["serve"], "serve one per server")])
def test_a_repeated_checkpoint_is_refused_in_every_command_that_decodes_with_one(
        command, instead, capsys):
    assert main([*command, "--checkpoint", "a.pt", "--checkpoint", "b.pt"]) == 2
    err = capsys.readouterr().err
    assert err == (f"hin {command[0]}: error: --checkpoint is given 2 times (a.pt, b.pt); hin "
                   f"{command[0]} uses one checkpoint: {err.split(': ', 4)[-1]}")
    assert instead in err and len(err.strip().splitlines()) == 1


def test_outputs_are_checked_before_the_work(tmp_path, monkeypatch, capsys):
    def no_work(*args, **kwargs):
        raise AssertionError("the output should have been refused before any work")

    monkeypatch.setattr(hin.metrics, "score_captions", no_work)
    monkeypatch.setattr(hin.metrics, "read_coco_results", no_work)
    assert main(["score", "--results", "r.json", "--annotations", "a.json", "--out",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hin score: error: --out {tmp_path} is a directory; give a file name")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "vocab.json"
    assert main(["data", "vocab", "--annotations", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"hin data: error: --out {out} cannot be written: {blocker} is a file, not a "
                   "folder; give another path\n")


def test_a_failed_write_never_names_the_temporary_file(tmp_path):
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(IsADirectoryError) as failure, atomic_write(tmp_path / "metrics.json") as file:
        file.write("{}")
    assert ".tmp" not in str(failure.value) and str(tmp_path / "metrics.json") in str(failure.value)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]       # no temporary left
