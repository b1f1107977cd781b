"""The environment the suite runs in is exactly the locked one (``make test-latest`` passes its own lock)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = {"pip", "setuptools", "wheel"}  # come with the venv itself, not with the project


def _pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return {k: v for k, v in found.items() if k not in BOOTSTRAP}


def test_installed_packages_equal_the_lock():
    lock = Path(os.environ.get("VRU_LENS_LOCK", ROOT / "lock" / "requirements.txt"))
    want = {**_pins(lock.read_text()), **_pins((ROOT / "lock" / "assets.txt").read_text())}
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    got = _pins(freeze)
    assert got == want, {"missing or other version": {k: (want[k], got.get(k)) for k in want if got.get(k) != want[k]},
                         "not in the lock": sorted(set(got) - set(want))}


def test_pyproject_bounds_admit_the_lock():
    """Every direct dependency's locked version lies inside its declared, tested range."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = _pins((ROOT / "lock" / "requirements.txt").read_text())
    for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(spec)
        version = lock[re.sub(r"[-_.]+", "-", req.name).lower()]
        assert req.specifier.contains(version.split("+")[0]), (spec, version)
        assert any(s.operator in ("<=", "==") for s in req.specifier), f"{spec}: no tested upper bound"
