"""Every file hin writes is written whole or not at all (hin.files), and logs never keep a
partial line from a full disk."""

from __future__ import annotations

import ast
import errno
import os
import stat

import pytest

from helpers.paths import SRC
from hin.files import OutOfSpaceError, append_line, atomic_write, complete_lines, write_text, write_together

HIN = SRC / "hin"
SAVERS = {"savefig", "save", "savez", "savez_compressed", "tofile"}


def _call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def _raw_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that write a file without hin.files: Path.write_text/write_bytes, open(..., "w"),
    json.dump / yaml dump to a stream, and array, figure, picture or tensor savers outside a
    `with atomic_write(...)` block (saving into an io.BytesIO is fine)."""
    in_memory = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Call) and _call_name(node.value).endswith("BytesIO")
                 for target in node.targets if isinstance(target, ast.Name)}
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, atomic: bool) -> None:
        if isinstance(node, ast.With):
            atomic = atomic or any(isinstance(item.context_expr, ast.Call)
                                   and _call_name(item.context_expr) == "atomic_write"
                                   for item in node.items)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, attr = _call_name(node), node.func.attr
            modes = [a.value for a in node.args[:1] + [k.value for k in node.keywords
                                                        if k.arg == "mode"]
                     if isinstance(a, ast.Constant) and isinstance(a.value, str)]   # Path.open
            receiver = node.func.value
            saver = attr in SAVERS and (
                attr == "savefig" or ast.unparse(receiver) in ("np", "numpy", "torch")
                or isinstance(receiver, ast.Call) and "Image" in _call_name(receiver))   # PIL
            targets = {a.id for a in node.args if isinstance(a, ast.Name)}
            if (attr in ("write_text", "write_bytes") or name in ("json.dump",)
                    or (attr in ("dump", "safe_dump") and name.startswith("yaml")
                        and len(node.args) > 1)
                    or (attr == "open" and any(set(m) & set("wax+") for m in modes))
                    or (saver and not atomic and not targets & in_memory)):
                found.append((node.lineno, ast.unparse(node)[:80]))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            if any(set(str(m)) & set("wax+") for m in modes):
                found.append((node.lineno, ast.unparse(node)[:80]))
        for child in ast.iter_child_nodes(node):
            visit(child, atomic)

    visit(tree, False)
    return found


def test_every_file_hin_writes_goes_through_the_atomic_helpers():
    """HDF5 feature files are the one exception (their writer keeps its own temporary parts)."""
    raw = {f"{path.relative_to(HIN)}:{line}": call
           for path in sorted(HIN.rglob("*.py")) if path.name != "files.py"
           for line, call in _raw_writes(ast.parse(path.read_text(encoding="utf-8")))}
    assert raw == {}


def test_the_source_scan_finds_raw_writes():
    found = _raw_writes(ast.parse(
        "p.write_text('x')\nopen(p, 'w')\np.open('a')\njson.dump(v, f)\nfigure.savefig(p)\n"
        "np.save(p, a)\nImage.fromarray(a).save(p)\nyaml.safe_dump(v, f)\n"
        "with atomic_write(p, 'wb') as f:\n    figure.savefig(f, format='png')\n"
        "buffer = io.BytesIO()\ntorch.save(v, buffer)\nyaml.safe_dump(v)\nopen(p)\n"))
    assert [line for line, _ in found] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_files_written_together_are_all_replaced_or_none(tmp_path, monkeypatch):
    first, second = tmp_path / "captions.json", tmp_path / "metrics.json"
    write_together({first: "old captions", second: "old metrics"})
    real_fsync, synced = os.fsync, []

    def full_at_the_second(descriptor):
        synced.append(descriptor)
        if len(synced) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)
    monkeypatch.setattr(os, "fsync", full_at_the_second)
    with pytest.raises(OutOfSpaceError, match=r"writing .*metrics\.json; none of captions\.json, "
                                              r"metrics\.json was replaced"):
        write_together({first: "new captions", second: "new metrics"})
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "captions.json": "old captions", "metrics.json": "old metrics"}
    write_together({first: "newer captions"}, remove=[second])
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"captions.json": "newer captions"}


def test_a_full_disk_never_leaves_a_partial_log_line(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    append_line(log, '{"event": "step", "step": 1}')
    real_write, calls = os.write, []

    def half_then_full(descriptor, data):
        calls.append(data)
        if len(calls) == 1:
            return real_write(descriptor, data[:5])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OutOfSpaceError, match="the lines before are intact"):
        append_line(log, '{"event": "step", "step": 2}')
    monkeypatch.undo()
    assert log.read_text() == '{"event": "step", "step": 1}\n'
    assert complete_lines('a\nb\npart') == (["a", "b"], "part")
    assert complete_lines('a\n') == (["a"], "")


def test_atomic_writes_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "out.json", "{}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)
        write_text(path, "[]")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_an_error_inside_the_block_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "metrics.json", "old")
    with pytest.raises(RuntimeError), atomic_write(path) as file:
        file.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
