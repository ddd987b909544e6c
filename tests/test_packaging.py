"""What `pip install` gives a newcomer: the run configurations inside the package (found by
name from any folder), the MIT license, one version, and a `dev` extra built on the others."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hin
from hin.config import ConfigError, RunConfig, find_config, packaged_config_names

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ["coco_scst", "coco_xe", "small_scst", "small_xe", "synth_scst", "synth_xe"]


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert packaged_config_names() == SHIPPED
    for name in SHIPPED:
        assert find_config(name) == find_config(f"{name}.yaml")
        assert find_config(name).parent == Path(hin.__file__).parent / "configs"
    assert RunConfig.load("synth_scst").train.stage == "scst"
    (tmp_path / "synth_xe.yaml").write_text("train:\n  epochs: 3\n")   # a path wins over a name
    assert RunConfig.load("synth_xe.yaml").train.epochs == 3
    with pytest.raises(ConfigError, match="mine.yaml does not exist.*shipped config: coco_scst, "
                                          "coco_xe, small_scst, small_xe, synth_scst, synth_xe"):
        find_config("mine.yaml")
    with pytest.raises(ConfigError, match="elsewhere/synth_xe.yaml does not exist"):
        find_config("elsewhere/synth_xe.yaml")                      # a path is never renamed
    with pytest.raises(ConfigError, match="is a directory"):
        find_config(tmp_path)


@pytest.mark.slow
def test_the_wheel_ships_configs_license_and_one_version(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(REPO)], check=True)
    [wheel] = tmp_path.glob("hin-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"hin-{hin.__version__}.dist-info/METADATA").decode()
    assert sorted(n for n in names if n.startswith("hin/configs/")) == [
        f"hin/configs/{name}.yaml" for name in SHIPPED]
    assert f"hin-{hin.__version__}.dist-info/licenses/LICENSE" in names
    assert f"Version: {hin.__version__}\n" in metadata
    assert "License-Expression: MIT\n" in metadata
    assert 'Requires-Dist: hin[extract,plot,serve]; extra == "dev"' in metadata
    assert sorted(n for n in names if n.startswith("hin/serve/static/")) == [
        f"hin/serve/static/{name}" for name in ("app.js", "docs.html", "docs.js", "favicon.svg", "index.html",
                                                "style.css")]

    installed = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(installed), str(wheel)], check=True)
    found = subprocess.run([sys.executable, "-c", "from hin.config import find_config; "
                            "print(find_config('synth_xe'))"], cwd=tmp_path, check=True,
                           capture_output=True, text=True, env={"PYTHONPATH": str(installed)})
    assert found.stdout.strip() == str(installed / "hin" / "configs" / "synth_xe.yaml")
