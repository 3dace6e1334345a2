"""The installable library: `pip install .` into a fresh virtualenv gives console commands that work from any folder,
with the configs shipped inside the package and every declared dependency satisfied by the pinned set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (
    "nextgpt-train",
    "nextgpt-predict",
    "nextgpt-merge",
    "nextgpt-demo",
    "nextgpt-serve",
    "nextgpt-preprocess-embeddings",
    "nextgpt-preprocess-features",
    "nextgpt-prepare-data",
    "nextgpt-evaluate",
    "nextgpt-build-tiny",
    "nextgpt-make-tiny-world",
    "nextgpt-convert",
)


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH, no rendezvous variables of this process: the installed package alone answers."""
    drop = {"PYTHONPATH", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with `pip install .` of a copy of the source tree (the dependencies come from this
    interpreter's site-packages through a .pth file, so nothing is downloaded)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("nextgpt", "configs"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # this interpreter's pip installs into it (`pip --python`)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The wheel is built with this interpreter's setuptools (a fresh venv's bundled one may predate PEP 660/wheels).
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist", "."]
    done = subprocess.run(build, capture_output=True, text=True, cwd=source, env=_clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (root / "dist").glob("nextgpt-*.whl")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index", wheel]
    done = subprocess.run(pip, capture_output=True, text=True, cwd=root, env=_clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return env_dir


@pytest.mark.slow  # the module fixture builds the wheel and installs it into a fresh venv (~1 min)
def test_installed_package_imports_from_its_own_folder_with_configs(installed: Path, tmp_path: Path):
    python = installed / "bin" / "python"
    code = (
        "import nextgpt, nextgpt.config_loader as c; print(nextgpt.__file__); print(c.SHIPPED_CONFIG_DIR); "
        "print(nextgpt.__version__); print(nextgpt.load_config('stage_3').train.stage)"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=_clean_env())
    assert out.returncode == 0, out.stderr[-3000:]
    module_file, config_dir, version, stage = out.stdout.split()
    assert Path(module_file).is_relative_to(installed) and Path(config_dir).is_relative_to(installed)
    assert (Path(config_dir) / "deepspeed" / "zero2.json").is_file() and version == "0.1.0" and stage == "3"
    check = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "check"], capture_output=True, text=True, env=_clean_env()
    )
    assert "nextgpt" not in check.stdout, check.stdout  # every declared dependency is met by the pinned set
    for command in COMMANDS:
        help_run = subprocess.run([installed / "bin" / command, "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert help_run.returncode == 0 and "usage:" in help_run.stdout, (command, help_run.stderr[-2000:])


@pytest.mark.slow  # three stages and a merge through the installed commands (~1 min)
def test_installed_commands_train_merge_and_predict_from_another_folder(
    installed: Path, tiny_root: Path, tiny_world: Path, tmp_path: Path
):
    from nextgpt.tiny.build import tiny_path_overrides

    work = tmp_path / "elsewhere"
    work.mkdir()
    bin_dir = installed / "bin"
    run_dir = tmp_path / "run"
    train = [
        bin_dir / "nextgpt-train",
        "--config",
        "tiny_stage_3",  # a shipped config, found by name
        *tiny_path_overrides(tiny_root),
        f"data.catalog_path={tiny_world}",
        f"train.output_dir={run_dir}",
        "train.init_from=",
        "train.max_steps=2",
        "train.micro_batch_size=2",
        "train.save_every=100",
    ]
    env = {**_clean_env(), "MASTER_PORT": "29611"}
    done = subprocess.run(train, capture_output=True, text=True, cwd=work, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    merged = tmp_path / "merged"
    done = subprocess.run(
        [bin_dir / "nextgpt-merge", "--checkpoint-dir", run_dir / "final", "--output-dir", merged],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    moved = tmp_path / "moved" / "model"
    moved.parent.mkdir()
    shutil.move(merged, moved)
    out_dir = work / "out"
    predict = [
        bin_dir / "nextgpt-predict",
        "--checkpoint-dir",
        moved,
        "--prompt",
        "Please generate an image of a cat.",
        "--output-dir",
        out_dir,
        "--max-new-tokens",
        "8",
        "--no-stream",
    ]
    done = subprocess.run(predict, capture_output=True, text=True, cwd=work, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (summary,) = out_dir.glob("*/summary.json")  # one new run folder per run
    assert json.loads(summary.read_text())["results"][0]["id"] == "reply"
    assert str(moved) in done.stderr  # it loaded the moved folder, from another working directory


def test_wheel_metadata_declares_commands_and_dependencies():
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["scripts"]) == set(COMMANDS)
    pinned = {
        line.split("==")[0].lower()
        for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    declared = {dep.split(">")[0].split("<")[0].split("=")[0].strip().lower() for dep in project["dependencies"]}
    assert declared == pinned  # every pinned runtime package is declared, and nothing else
    packages = set(
        project and tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {".".join(p.relative_to(REPO_ROOT).parts[:-1]) for p in (REPO_ROOT / "nextgpt").rglob("__init__.py")}
    assert on_disk <= packages, f"add {sorted(on_disk - packages)} to [tool.setuptools] packages in pyproject.toml"
    assert sys.version_info >= (3, 10)
