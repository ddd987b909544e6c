"""What `pip install` gives a newcomer: a name of its own on the package index, the run
configurations inside the package (found by name from any folder), the MIT license, one
version, a `dev` extra built on the others, and a `hin --version` / `hin --help` to start from."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import hin
from helpers.paths import REPO
from hin.cli import build_parser
from hin.config import ConfigError, RunConfig, find_config, packaged_config_names
from hin.devices import cpu_model
from hin.errors import DISTRIBUTION, pip_install

SHIPPED = ["coco_scst", "coco_scst_large", "coco_xe", "coco_xe_grouped", "small_scst", "small_xe",
           "synth_scst", "synth_xe"]


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert packaged_config_names() == SHIPPED
    for name in SHIPPED:
        assert find_config(name) == find_config(f"{name}.yaml")
        assert find_config(name).parent == Path(hin.__file__).parent / "configs"
    assert RunConfig.load("synth_scst").train.stage == "scst"
    (tmp_path / "synth_xe.yaml").write_text("train:\n  epochs: 3\n")   # a path wins over a name
    assert RunConfig.load("synth_xe.yaml").train.epochs == 3
    with pytest.raises(ConfigError, match="mine.yaml does not exist.*shipped config: coco_scst, coco_scst_large, "
                                          "coco_xe, coco_xe_grouped, small_scst, small_xe, synth_scst, synth_xe"):
        find_config("mine.yaml")
    with pytest.raises(ConfigError, match="elsewhere/synth_xe.yaml does not exist"):
        find_config("elsewhere/synth_xe.yaml")                      # a path is never renamed
    with pytest.raises(ConfigError, match="is a directory"):
        find_config(tmp_path)


@pytest.mark.slow
def test_the_wheel_ships_configs_license_and_one_version(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(REPO)], check=True)
    [wheel] = tmp_path.glob("hin_caption-*.whl")
    dist_info = f"hin_caption-{hin.__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert sorted(n for n in names if n.startswith("hin/configs/")) == [
        f"hin/configs/{name}.yaml" for name in SHIPPED]
    assert f"{dist_info}/licenses/LICENSE" in names
    assert "Name: hin-caption\n" in metadata and "hin = hin.cli:main" in entry_points
    assert f"Version: {hin.__version__}\n" in metadata
    assert "License-Expression: MIT\n" in metadata
    assert 'Requires-Dist: hin-caption[extract,plot,serve]; extra == "dev"' in metadata
    assert sorted(n for n in names if n.startswith("hin/serve/static/")) == [
        f"hin/serve/static/{name}" for name in ("app.js", "docs.html", "docs.js", "favicon.svg", "index.html",
                                                "style.css", "view.js")]
    assert "hin/explain/index.html" in names     # the page template of `hin explain`

    installed = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(installed), str(wheel)], check=True)
    found = subprocess.run([sys.executable, "-c", "from hin.config import find_config; "
                            "print(find_config('synth_xe'))"], cwd=tmp_path, check=True,
                           capture_output=True, text=True, env={"PYTHONPATH": str(installed)})
    assert found.stdout.strip() == str(installed / "hin" / "configs" / "synth_xe.yaml")


def test_every_pip_line_names_the_distribution_not_the_unrelated_hin_on_the_index():
    """`hin` on the package index is a dotfile manager: an install line naming it fetches that.
    Every install line (pyproject, messages, docs, tests, Makefile) names hin-caption."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^name = "([^"]+)"', pyproject, flags=re.MULTILINE)[1] == DISTRIBUTION == "hin-caption"
    assert '\n[project.scripts]\nhin = "hin.cli:main"\n' in pyproject
    assert pip_install("plot") == "pip install 'hin-caption[plot]'"
    files = [REPO / "pyproject.toml", REPO / "Makefile", *REPO.glob("*.md"), *(REPO / "docs").rglob("*.md"),
             *(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py")]
    wrong = re.compile(r"(pip install[^\n]*\bhin\[|\"hin\[)")
    offenders = [f"{path.relative_to(REPO)}:{number}" for path in files
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                 if wrong.search(line)]
    assert offenders == []


def test_version_names_hin_torch_and_the_hardware():
    shown = subprocess.run([sys.executable, "-m", "hin", "--version"], check=True, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}).stdout
    lines = shown.splitlines()
    assert lines[0] == f"hin {hin.__version__} (pip package hin-caption)"
    assert lines[1] == f"torch {torch.__version__}"
    assert lines[2].startswith(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores")
    if torch.cuda.is_available():
        assert lines[3].startswith(f"GPU cuda:0: {torch.cuda.get_device_name(0)}")
    else:
        assert lines[3].startswith("GPU: none (") and lines[3].endswith("--device auto uses the CPU")


def test_cpu_model_is_read_from_the_kernel(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t: fpu\n")
    assert cpu_model(str(cpuinfo)) == "Intel(R) Xeon(R) Platinum 8480+"


def test_help_lists_commands_in_the_order_a_user_meets_them(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    shown = capsys.readouterr().out
    listed = re.findall(r"^    ([a-z-]+)", shown, flags=re.MULTILINE)
    assert listed == ["demo", "data", "train", "evaluate", "caption", "explain", "serve", "extract",
                      "import-checkpoint", "score", "plot"]
