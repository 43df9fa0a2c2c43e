"""pyproject.toml (pip) and environment.yml (conda) list the same dependencies."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_pip_and_conda_dependencies_agree():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_deps = {_name(r) for r in pyproject["dependencies"]}
    pip_deps |= {_name(r) for r in pyproject["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_deps = {
        CONDA_TO_PYPI.get(_name(d), _name(d))
        for d in env["dependencies"]
        if isinstance(d, str) and _name(d) not in ("python", "pip")
    }
    # packages that conda-forge lacks are installed by pip inside the conda environment
    pip_section = [d for d in env["dependencies"] if isinstance(d, dict)]
    conda_deps |= {
        _name(r) for d in pip_section for r in d.get("pip", []) if not r.startswith("-e")
    }
    assert pip_deps == conda_deps, (
        f"only in pyproject: {sorted(pip_deps - conda_deps)}; "
        f"only in environment.yml: {sorted(conda_deps - pip_deps)}"
    )


def test_makefile_pins_cpu_torch_and_ci_calls_make_test():
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
