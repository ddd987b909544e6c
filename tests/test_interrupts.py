"""A stopped command loses nothing and leaves nothing behind: no DataLoader worker outlives
`hin extract` (SIGKILL, SIGTERM, Ctrl-C), SIGTERM and Ctrl-C end in one line that says how far
it got and that a re-run resumes, a merge stopped midway removes its partial copy, and no Java
process outlives `hin score`; with the extraction refusals that go with them (merge targets,
full disks, missing weights, pictures that cannot be read)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.waiting import DEADLINE_S, wait_until
from hin.cli import main
from hin.errors import Interrupted
from hin.extract import FeatureWriter, Shard, merge_shards
from hin.extract import writer as writer_module
from hin.files import OutOfSpaceError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

PICTURES = 16
HELD_AFTER = 2
HELD_EXTRACTION = textwrap.dedent("""
    import itertools, os, pathlib, signal, sys
    import numpy as np
    from hin.cli import main
    from hin.extract import register_extractor

    def prepare(picture):
        return np.zeros(300_000, np.float32)   # 1.2 MB: more than a pipe holds

    HELD = os.environ.get("HELD")      # a file to make once held
    HELD_AFTER = int(os.environ.get("HELD_AFTER", 0))
    batches = itertools.count()

    @register_extractor("held-test")
    class Held:
        kind, feature_dim, preprocess = "grid", 2, staticmethod(prepare)
        def __init__(self, **options):
            pass
        def attributes(self):
            return {"extractor": "held-test", "feature_dim": 2}
        def __call__(self, prepared):
            if HELD and next(batches) == HELD_AFTER:   # the workers fill the pipe meanwhile
                pathlib.Path(HELD).touch()
                while True:
                    signal.pause()             # until a signal stops the run
            return [{"features": np.ones((1, 2), np.float16)} for _ in prepared]

    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture
def held_run(tmp_path):
    """A function starting `hin extract grid` with two workers on 16 pictures, one a batch,
    that writes HELD_AFTER of them and then, if `held`, makes the file `held` beside the
    output and waits for a signal to stop it; returns (that function, output path)."""
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for image_id in range(1, PICTURES + 1):
        Image.new("RGB", (8, 8), (image_id, 0, 0)).save(pictures / f"{image_id}.png")
    script = tmp_path / "held_extract.py"
    script.write_text(HELD_EXTRACTION)
    out = tmp_path / "grid.h5"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}

    def start(held: bool = True):
        return subprocess.Popen(
            [sys.executable, str(script), "extract", "grid", "--extractor", "held-test",
             "--images", str(pictures), "--out", str(out), "--workers", "2", "--batch-size", "1",
             "--chunk-size", "1", "--device", "cpu"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**env, "HELD": str(held_sign(out)), "HELD_AFTER": str(HELD_AFTER)} if held
            else env,
            preexec_fn=ctrl_c_reaches_it)
    return start, out


def ctrl_c_reaches_it() -> None:
    """preexec_fn: SIGINT at its default in the child. A test run started as a background job
    ignores SIGINT, children inherit that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def held_sign(out: Path) -> Path:
    return out.with_name("held")


def held_workers(process, out: Path) -> list[int]:
    """The worker pids, once the run is held after writing its parts."""
    def held() -> bool:
        assert process.poll() is None, process.communicate()
        return held_sign(out).exists()
    wait_until(held, f"the run to be held ({held_sign(out)})")
    workers = children(process.pid)
    assert len(workers) == 2, workers
    return workers


def gone(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


def test_kill_9_during_extract_leaves_no_worker_running(held_run):
    start, out = held_run
    process = start()
    workers = held_workers(process, out)
    process.kill()
    process.wait()
    try:
        wait_until(lambda: gone(workers), f"workers {workers} to end with their parent")
    finally:
        for pid in filter(alive, workers):     # a failing run must not leave them behind
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_during_extract_says_where_and_a_rerun_resumes(held_run, stop):
    start, out = held_run
    process = start()
    workers = held_workers(process, out)
    process.send_signal(stop)
    _, err = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("hin extract: interrupted after ")
    assert "run the same command again to resume" in line
    wait_until(lambda: gone(workers), f"workers {workers} to end")
    done = int(line.split("; ")[1].split(" images are kept")[0])
    assert done == HELD_AFTER
    resumed = start(held=False)
    output, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"skipped {done} already present; the file holds {PICTURES} images" in output


ATTRIBUTES = {"extractor": "test", "feature_dim": 2}


def two_shards(out: Path) -> list[Path]:
    for index in (1, 2):
        writer = FeatureWriter(out, ATTRIBUTES, Shard(index, 2), "2 ids")
        writer.write_chunk({index: {"features": np.full((1, 2), index, np.float16)}})
        writer.finish()
    return [Shard(1, 2).path(out), Shard(2, 2).path(out)]


def test_merge_into_one_of_its_shards_is_refused_and_deletes_nothing(tmp_path, capsys):
    out = tmp_path / "grid.h5"
    shards = two_shards(out)
    before = {path: path.read_bytes() for path in shards}
    code = main(["extract", "merge", str(shards[0]), *map(str, shards)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "is a shard file, but the first argument of `hin extract merge` is OUT" in err
    assert f"hin extract merge {out} {shards[0]}" in err
    assert {path: path.read_bytes() for path in shards} == before


def test_merge_with_out_repeated_among_the_inputs_is_refused(tmp_path, capsys):
    out = tmp_path / "grid.h5"
    shards = two_shards(out)
    assert main(["extract", "merge", str(out), *map(str, shards)]) == 0
    merged = out.read_bytes()
    link = tmp_path / "link.h5"
    link.symlink_to(out)
    for repeated in (out, link):
        code = main(["extract", "merge", str(out), str(repeated)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert f"{out} is also shard file {repeated}" in err and "nothing was merged" in err
        assert out.read_bytes() == merged


def test_merge_stopped_midway_removes_its_partial_copy(tmp_path, monkeypatch):
    out = tmp_path / "grid.h5"
    two_shards(out)

    def stopped(*args):
        (tmp_path / ".grid.h5.merging.tmp").write_bytes(b"half a copy")
        raise KeyboardInterrupt
    monkeypatch.setattr(writer_module, "_copy_entries", stopped)
    with pytest.raises(Interrupted, match=r"interrupted while merging into .*grid.h5; the "
                                          r"partial copy was removed and no grid.h5 was written"):
        merge_shards(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.shard-1-of-2.h5",
                                                          "grid.shard-2-of-2.h5"]


def test_merge_without_room_for_its_copy_is_refused_before_writing(tmp_path, monkeypatch):
    out = tmp_path / "grid.h5"
    two_shards(out)
    monkeypatch.setattr(writer_module.shutil, "disk_usage",
                        lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(OutOfSpaceError, match=r"writes a new copy of about .* MB beside it "
                                              r"before replacing it, and only 0.0 MB are free"):
        merge_shards(out)
    assert not out.exists() and len(list(tmp_path.iterdir())) == 2


def test_extract_without_the_weights_says_where_it_looked_and_how_to_go_on(tmp_path, capsys):
    pytest.importorskip("transformers")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (8, 8)).save(pictures / "1.png")
    code = main(["extract", "grid", "--images", str(pictures), "--out", str(tmp_path / "g.h5"),
                 "--model", "hin-tests/no-such-clip", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert ("could not load CLIPVisionModelWithProjection weights 'hin-tests/no-such-clip': there "
            "is no folder 'hin-tests/no-such-clip' here and they are not in the Hugging Face "
            "cache ") in err
    assert "`hf download hin-tests/no-such-clip`" in err
    assert "`--extractor synth-grid` and `--extractor synth-regions`" in err


def small_pictures(folder: Path, count: int = 3) -> Path:
    folder.mkdir()
    for image_id in range(1, count + 1):
        Image.new("RGB", (24, 24), (40 * image_id, 0, 0)).save(folder / f"{image_id}.png")
    return folder


def synth_grid(pictures: Path, out: Path, *more: str) -> int:
    return main(["extract", "grid", "--extractor", "synth-grid", "--images", str(pictures),
                 "--out", str(out), "--workers", "0", "--device", "cpu", *more])


def test_links_to_nowhere_and_folders_named_like_pictures_are_listed_as_failed(tmp_path, capsys):
    pictures = small_pictures(tmp_path / "pictures")
    (pictures / "4.png").symlink_to(tmp_path / "gone.png")           # dangling
    (pictures / "5.png").symlink_to(pictures / "6.png")               # a loop
    (pictures / "6.png").symlink_to(pictures / "5.png")
    (pictures / "7.png").mkdir()
    out = tmp_path / "grid.h5"
    assert synth_grid(pictures, out) == 1
    assert "4 pictures could not be read" in capsys.readouterr().out
    report = (tmp_path / "grid.h5.failed.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in report[1:]] == [
        str(pictures / f"{image_id}.png") for image_id in (4, 5, 6, 7)]
    assert report[4].endswith("7.png: cannot be read (Is a directory)")
    assert "cannot be read (Too many levels of symbolic links)" in report[2]


@pytest.mark.parametrize("value", ["abc", "²", "-5"])
def test_a_bad_pixel_limit_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys, value):
    pictures = small_pictures(tmp_path / "pictures")
    monkeypatch.setenv("HIN_MAX_PIXELS", value)
    monkeypatch.setattr("hin.extract.build_extractor",
                        lambda *a, **k: pytest.fail("the extractor was built first"))
    code = synth_grid(pictures, tmp_path / "grid.h5")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"HIN_MAX_PIXELS={value!r} is not a positive whole number of pixels" in err


def test_a_full_disk_during_extraction_stops_in_one_line_and_a_rerun_resumes(tmp_path,
                                                                             monkeypatch, capsys):
    pictures = small_pictures(tmp_path / "pictures", count=4)
    out = tmp_path / "grid.h5"
    real = writer_module.atomic_write
    calls = []

    @contextlib.contextmanager
    def filling(path, mode="w"):
        calls.append(path)
        with real(path, mode) as file:
            if len(calls) == 3:        # the third part finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device")
            yield file
    monkeypatch.setattr(writer_module, "atomic_write", filling)
    code = synth_grid(pictures, out, "--chunk-size", "1", "--batch-size", "1")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("hin extract: error: no space left on the "
                                                   "device writing")
    assert "part-000002.h5" in err
    assert "the 2 images already in grid.h5 or its finished parts are kept" in err
    assert "run the same command again to resume" in err
    parts = out.with_name("grid.h5.parts")
    assert sorted(p.name for p in parts.iterdir()) == ["part-000000.h5", "part-000001.h5"]
    monkeypatch.setattr(writer_module, "atomic_write", real)
    assert synth_grid(pictures, out) == 0
    assert "skipped 2 already present; the file holds 4 images" in capsys.readouterr().out


def test_caption_takes_a_folder_of_pictures_like_extract(tmp_path, capsys):
    from hin.caption import picture_paths

    pictures = small_pictures(tmp_path / "pictures")
    (pictures / "notes.txt").write_text("not a picture")
    assert picture_paths([pictures, pictures / "2.png"]) == [
        pictures / "1.png", pictures / "2.png", pictures / "3.png", pictures / "2.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["caption", "--checkpoint", str(tmp_path / "none.pt"), str(empty)])
    err = capsys.readouterr().err
    assert code == 2 and f"{empty} holds no pictures" in err


HELD_SCORE = textwrap.dedent("""
    import signal, sys
    from hin.cli import main
    from hin.metrics import coco

    def held_tokenize(*args, **kwargs):     # the METEOR JVM is running meanwhile
        print("tokenizing", flush=True)
        while True:
            signal.pause()                  # until a signal stops the run
    coco.ptb_tokenize = held_tokenize
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_while_scoring_ends_the_java_process_too(tmp_path, stop):
    from hin.metrics.coco import find_java

    try:
        find_java()
    except Exception:
        pytest.skip("no Java")
    annotations = tmp_path / "captions.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "a dog"}]}))
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "caption": "a dog"}]))
    script = tmp_path / "held_score.py"
    script.write_text(HELD_SCORE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, str(script), "score", "--results", str(results),
                                "--annotations", str(annotations), "--no-spice"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=ctrl_c_reaches_it)
    assert process.stdout.readline() == "tokenizing\n"
    java = children(process.pid)
    assert len(java) == 1, java
    process.send_signal(stop)
    _, err = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "hin score: interrupted"
    try:
        wait_until(lambda: gone(java), f"Java {java} to end")
    finally:
        if alive(java[0]):
            os.kill(java[0], signal.SIGKILL)
