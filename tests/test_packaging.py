"""A built wheel (what `pip install .` installs, not an editable checkout) carries everything the package reads at
run time: the presets, the embedded digits and the file that names their source, licence and hash."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_presets_embedded_data_and_its_licence(tmp_path) -> None:
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("dytrim-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        npz = z.read("dytrim/data/embedded/mnist10k.npz")
        card = z.read("dytrim/data/embedded/README.md").decode()
    from dytrim.data.mnist import MNIST10K_SHA256

    assert hashlib.sha256(npz).hexdigest() == MNIST10K_SHA256
    assert "CC BY-SA 3.0" in card and MNIST10K_SHA256 in card
    presets = {Path(n).name for n in names if n.startswith("dytrim/configs/") and n.endswith(".yaml")}
    assert {"mnist-lt-fixmatch.yaml", "paper-cifar10lt-g100-dytrim.yaml"} <= presets
    assert len(presets) == len(list((ROOT / "src" / "dytrim" / "configs").glob("*.yaml")))
    tables = {Path(n).name for n in names if n.startswith("dytrim/tables/") and n.endswith(".yaml")}
    assert tables == {p.name for p in (ROOT / "src" / "dytrim" / "tables").glob("*.yaml")} and tables  # sweep --list
    # installed from the wheel (not the checkout), run from an unrelated folder: the embedded default trains
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import dytrim, sys; from dytrim.cli import main; print(dytrim.__file__); sys.exit(main(['train', "
            "'--preset', 'mnist-lt-fixmatch', '--set', 'train.steps=2', '--set', 'train.eval_every=2', "
            "'--set', 'train.progress=false', '--out', 'run']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=elsewhere,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0].startswith(str(site))  # the installed copy, not the checkout
    assert (elsewhere / "run" / "summary.json").is_file()
