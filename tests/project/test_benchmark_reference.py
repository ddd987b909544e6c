"""`benchmarks/decode.py --reference DIR`: how a checkout of the reference implementation is
imported (its namespace package `common` beside benchmarks/common.py) and the one-line
refusal of a directory that is not a usable checkout. The real reference is not available
here; these checkouts are made-up stand-ins with the reference's package layout."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch import nn

from helpers.paths import REPO
from helpers.tiny import tiny_model

ROOT = REPO
sys.path.insert(0, str(ROOT / "benchmarks"))

import common as benchmark_common  # noqa: E402  (benchmarks/common.py, which the reference's `common` must not meet)
import reference_impl  # noqa: E402


def checkout(tmp_path: Path, models_of: str, containers: str | None = None) -> Path:
    """A directory laid out as the reference's repository: `models_of` a package, `common`
    a namespace package (no __init__.py), `common/models/containers.py` only if given."""
    root = tmp_path / "HIN"
    (root / "models_of").mkdir(parents=True)
    (root / "models_of" / "__init__.py").write_text(models_of)
    (root / "common" / "models").mkdir(parents=True)
    (root / "common" / "models" / "__init__.py").write_text("")
    if containers is not None:
        (root / "common" / "models" / "containers.py").write_text(containers)
    return root


def test_a_checkout_imports_beside_benchmarks_common_and_leaves_it_in_place(tmp_path):
    root = checkout(tmp_path, "from common.models.containers import Module\n",
                    containers="Module = 'the reference'\n")
    models_of = reference_impl.import_models_of(root)
    assert models_of.Module == "the reference"
    assert sys.modules["common"] is benchmark_common
    assert "models_of" not in sys.modules and "common.models" not in sys.modules
    assert str(root) not in sys.path


def test_a_directory_without_models_of_is_not_a_checkout(tmp_path):
    with pytest.raises(reference_impl.ReferenceUnavailable,
                       match=r"no models_of package there; DIR must be a checkout of songchuanle-1/HIN"):
        reference_impl.import_models_of(tmp_path)
    assert sys.modules["common"] is benchmark_common


def test_a_module_the_repository_ships_only_compiled_is_named_with_its_source(tmp_path):
    root = checkout(tmp_path, "from common.models.containers import Module\n")
    with pytest.raises(reference_impl.ReferenceUnavailable) as error:
        reference_impl.import_models_of(root)
    assert "lacks module common.models.containers" in str(error.value)
    assert "aimagelab/meshed-memory-transformer" in str(error.value)


def test_a_package_the_reference_needs_is_named_with_the_install(tmp_path):
    root = checkout(tmp_path, "import einops_not_installed_here\n")
    with pytest.raises(reference_impl.ReferenceUnavailable,
                       match=r"needs the package einops_not_installed_here, which is not installed: "
                             r"pip install einops_not_installed_here"):
        reference_impl.import_models_of(root)


def test_decode_refuses_a_wrong_directory_in_one_line_before_building_anything(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode.py"),
                             "--reference", str(tmp_path / "nowhere")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--reference" in lines[0] and "no such directory" in lines[0]
    assert "Timing the reference in the same run" in lines[0]


def test_a_model_that_does_not_take_hins_weights_is_refused():
    class Other(nn.Module):
        def __init__(self, bos, encoder, decoder):
            super().__init__()
            self.encoder, self.decoder = encoder, decoder

    stand_in = SimpleNamespace(build_encoder=lambda *args, **kwargs: nn.Linear(2, 2),
                               build_decoder=lambda *args, **kwargs: nn.Linear(2, 2),
                               Transformer=Other)
    with pytest.raises(reference_impl.ReferenceUnavailable,
                       match=r"does not take hin's weights: missing \['encoder.weight'"):
        reference_impl.reference_model(stand_in, tiny_model())


def test_a_module_that_lacks_a_name_is_named_with_the_name(tmp_path):
    """The checkout has the module (added from M2) but not a name the reference imports from
    it (the stand-ins the README lists): say which name, not "add the module"."""
    root = checkout(tmp_path, "from common.models.containers import Module, PolarRPE\n",
                    containers="Module = 'the reference'\n")
    with pytest.raises(reference_impl.ReferenceUnavailable,
                       match=r"cannot import name 'PolarRPE' from 'common.models.containers'"):
        reference_impl.import_models_of(root)


def test_a_model_that_cannot_be_built_or_loaded_is_refused_in_one_line():
    def build_other_signature(layers):
        return nn.Linear(2, 2)

    stand_in = SimpleNamespace(build_encoder=build_other_signature,
                               build_decoder=lambda *args, **kwargs: nn.Linear(2, 2),
                               Transformer=lambda *args: nn.Linear(2, 2))
    with pytest.raises(reference_impl.ReferenceUnavailable,
                       match=r"cannot be built with hin's weights \(.*unexpected keyword"):
        reference_impl.reference_model(stand_in, tiny_model())
