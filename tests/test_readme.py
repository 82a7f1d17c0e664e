"""The README works as written: its Python blocks run, its two set-up commands succeed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
INNER = "SQLA_SYNC_README_INNER"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def test_every_python_block_runs(tmp_path: Path) -> None:
    code = "\n\n".join(blocks("python"))
    assert "start_sync" in code and len(blocks("python")) >= 5
    script = tmp_path / "readme_blocks.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get(INNER) == "1", reason="this is the README's own inner run")
def test_the_two_set_up_commands_work_in_a_fresh_environment(tmp_path: Path) -> None:
    commands = blocks("bash")[:2]
    assert len(commands) == 2
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
        ".hypothesis", "*.egg-info"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    # CI itself runs the README's test command over the whole suite; here the
    # inner pytest runs one test so the check proves the commands install and
    # start the suite without running every test a second time.
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "VIRTUAL_ENV": str(env_dir), INNER: "1",
           "PYTEST_ADDOPTS": "tests/test_readme.py::test_every_python_block_runs"}
    env.pop("PYTHONPATH", None)
    outputs = []
    for command in commands:
        done = subprocess.run(["bash", "-c", command.strip()], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    assert "every step did what it says" in outputs[0]
    assert re.search(r"\d+ passed", outputs[1])
