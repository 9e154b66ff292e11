"""Bad input gives one line, exit status 2, no traceback, and leaves every project/run/input file as it was.

Each case runs the real CLI in a subprocess, as a user would. The subprocesses run two at a time
(one module fixture); each parametrized test then checks one case's result.
"""

from __future__ import annotations

import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import run_cli

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory, digits_dir) -> dict[str, Path]:
    """A tiny finetune run, an AL project, and bad inputs derived from them."""
    import torch

    root = tmp_path_factory.mktemp("errors")
    run = root / "run"
    res = run_cli("finetune", "--data", str(digits_dir), "--out", str(run), "--recipe", "linear-probe",
                  "--epochs", "1", "--image-size", "32", "--workers", "0")
    assert res.returncode == 0, res.stderr
    project = root / "project"
    res = run_cli("al-init", str(project), "--pool", str(digits_dir))
    assert res.returncode == 0, res.stderr

    w = {"root": root, "digits": digits_dir, "run": run, "project": project}
    w["bad_yaml_project"] = _copy(project, root / "bad-yaml-project")
    (w["bad_yaml_project"] / "project.yaml").write_text("pool_root: [1, 2\nbackbone: }\n", encoding="utf-8")
    w["big_project"] = _copy(project, root / "big-project")
    yaml_path = w["big_project"] / "project.yaml"
    yaml_path.write_text(yaml_path.read_text(encoding="utf-8").replace("image_size: null", "image_size: big"),
                         encoding="utf-8")
    assert "image_size: big" in yaml_path.read_text(encoding="utf-8")
    w["corrupt_run"] = _copy(run, root / "corrupt-run")
    (w["corrupt_run"] / "best.safetensors").write_bytes(bytes(range(256)) * 4)
    w["bad_state_run"] = _copy(run, root / "bad-state-run")
    (w["bad_state_run"] / "train_state.pt").write_bytes(b"not a torch file\n" * 10)

    inputs = root / "inputs"
    inputs.mkdir()
    (inputs / "text.safetensors").write_text("these are not weights, just text\n", encoding="utf-8")
    torch.save(torch.nn.Linear(2, 2), inputs / "module.pth")  # a pickled module, not a state dict
    first = sorted(p.relative_to(digits_dir).as_posix() for p in digits_dir.rglob("*.png"))[0]
    (inputs / "cp1252.csv").write_bytes(f"path,label\n{first},caf\u00e9\n".encode("cp1252"))
    (inputs / "random.csv").write_bytes(bytes((i * 151 + 7) % 256 for i in range(600)))
    (inputs / "recipe.yaml").write_text("lr: [0.1\nepochs: }\n", encoding="utf-8")
    (inputs / "existing-file").write_text("keep me\n", encoding="utf-8")
    (inputs / "a-folder").mkdir()
    w["inputs"] = inputs
    return w


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (a missing root is recorded as missing).

    A project's ``.lock`` is left out: taking the lock records its holder there.
    """
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock")
        out.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
        if not root.exists():
            out[str(root)] = "missing"
    return out


# --------------------------------------------------------------------------- the table

# name -> (argv built from the fixture's paths, the paths that must stay byte-identical, what the line names)
CASES = {
    "al-status: project.yaml is invalid YAML": (
        lambda w: ["al-status", w["bad_yaml_project"]], ["bad_yaml_project"], "project.yaml is not valid YAML"),
    "al-import: project.yaml is invalid YAML": (
        lambda w: ["al-import", w["bad_yaml_project"], w["inputs"] / "cp1252.csv"], ["bad_yaml_project", "inputs"],
        "line 2, column 9"),
    "al-round: image_size: big": (
        lambda w: ["al-round", w["big_project"]], ["big_project"], "image_size is 'big', not a whole number"),
    "al-import: cp1252 label CSV": (
        lambda w: ["al-import", w["project"], w["inputs"] / "cp1252.csv"], ["project", "inputs"],
        "cp1252.csv is not UTF-8 text"),
    "al-import: random-bytes label CSV": (
        lambda w: ["al-import", w["project"], w["inputs"] / "random.csv"], ["project", "inputs"], "save it as UTF-8"),
    "finetune: cp1252 CSV manifest": (
        lambda w: ["finetune", "--data", w["inputs"] / "cp1252.csv", "--out", w["root"] / "new-run-1"],
        ["inputs"], "cp1252.csv is not UTF-8 text"),
    "finetune: random-bytes CSV manifest": (
        lambda w: ["finetune", "--data", w["inputs"] / "random.csv", "--out", w["root"] / "new-run-5"], ["inputs"],
        "random.csv is not UTF-8 text"),
    "finetune: text file as .safetensors weights": (
        lambda w: ["finetune", "--data", w["digits"], "--out", w["root"] / "new-run-2", "--weights",
                   w["inputs"] / "text.safetensors", "--image-size", "32"], ["inputs"],
        "text.safetensors is not a readable .safetensors file"),
    "finetune: pickled module as weights": (
        lambda w: ["finetune", "--data", w["digits"], "--out", w["root"] / "new-run-3", "--weights",
                   w["inputs"] / "module.pth", "--image-size", "32"], ["inputs"],
        "module.pth is not a plain state dict (torch.load(weights_only=True) refused it: "),
    "finetune: --out is an existing file": (
        lambda w: ["finetune", "--data", w["digits"], "--out", w["inputs"] / "existing-file"], ["inputs"],
        "existing-file is an existing file, not a folder"),
    "finetune --resume: corrupt train_state.pt": (
        lambda w: ["finetune", "--data", w["digits"], "--out", w["bad_state_run"], "--resume", "--recipe",
                   "linear-probe", "--epochs", "2", "--image-size", "32"], ["bad_state_run"],
        "train_state.pt is not a readable training state"),
    "finetune: invalid recipe YAML": (
        lambda w: ["finetune", "--data", w["digits"], "--out", w["root"] / "new-run-4", "--recipe",
                   w["inputs"] / "recipe.yaml"], ["inputs"], "is not valid YAML (line 2"),
    "finetune: --set value out of range": (
        lambda w: ["finetune", "--data", w["digits"], "--out", w["root"] / "new-run-6", "--set", "drop_rate=2"], [],
        "drop_rate=2.0: must be between 0.0 and 1.0"),
    "predict: --out is a folder": (
        lambda w: ["predict", w["run"], w["digits"], "--out", w["inputs"] / "a-folder"], ["run", "inputs"],
        "a-folder is a folder; give a file path"),
    "predict: corrupt best.safetensors": (
        lambda w: ["predict", w["corrupt_run"], w["digits"], "--out", w["root"] / "preds.csv"], ["corrupt_run"],
        "best.safetensors is not a readable .safetensors file"),
    "evaluate: corrupt best.safetensors": (
        lambda w: ["evaluate", w["corrupt_run"], "--data", w["digits"]], ["corrupt_run"],
        "best.safetensors is not a readable .safetensors file"),
    "demo: --workdir is an existing file": (
        lambda w: ["demo", "--workdir", w["inputs"] / "existing-file"], ["inputs"], "--workdir"),
}


@pytest.fixture(scope="module")
def results(world):
    """Run every case (two subprocesses at a time); snapshot the files each case must not touch."""
    keys = sorted({k for _, roots, _ in CASES.values() for k in roots})
    before = {k: snapshot(world[k]) for k in keys}

    def one(name):
        argv, _, _ = CASES[name]
        return name, run_cli(*map(str, argv(world)), timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        out = dict(pool.map(one, CASES))
    after = {k: snapshot(world[k]) for k in keys}
    return out, before, after


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, results, world):
    out, before, after = results
    res = out[name]
    text = res.stdout + res.stderr
    assert res.returncode == 2, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert CASES[name][2] in lines[0], lines[0]
    for key in CASES[name][1]:
        assert after[key] == before[key], f"{name} changed files under {world[key]}"


# --------------------------------------------------------------------------- library-level checks (in process)


@pytest.mark.parametrize("text, expected", [
    ("pool_root: /x\nimage_size: big\n", "project.yaml: image_size is 'big', not a whole number"),
    ("pool_root: /x\nimage_size: 8\n", "at least 16"),
    ("pool_root: /x\nseed: -1\n", "seed is -1"),
    ("pool_root: /x\nclasses: cat\n", "classes is 'cat', not a list of class names or null"),
    ("pool_root: /x\nweights: 5\n", "weights is 5, not a text value or null"),
    ("pool_root: [1, 2\n", "project.yaml is not valid YAML (line 2"),
    ("- a\n- b\n", "must be a mapping"),
    ("image_size: 64\n", "no pool_root"),
])
def test_project_yaml_is_validated(text, expected):
    from tlkit.active.project import ProjectConfig
    from tlkit.core.errors import TlkitError

    with pytest.raises(TlkitError) as e:
        ProjectConfig.from_yaml(text)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_project_yaml_accepts_what_al_init_writes():
    from tlkit.active.project import ProjectConfig

    cfg = ProjectConfig(pool_root="/x", classes=("0", "1"), image_size=64, weights="/w.pth")
    assert ProjectConfig.from_yaml(cfg.to_yaml()) == cfg
    assert ProjectConfig.from_yaml("pool_root: /x\nclasses: [1, b]\n").classes == ("1", "b")
    assert ProjectConfig.from_yaml("pool_root: /x\nclasses:\n").classes == ()


# --------------------------------------------------------------------------- help texts


def _commands():
    from typer.main import get_command

    from tlkit.cli import app

    return get_command(app).commands


# options declared in tlkit/cli/active.py outside al-status, which another change owns
def test_every_option_has_help_text():
    missing = {(name, p.name) for name, cmd in _commands().items() for p in cmd.params
               if not (getattr(p, "help", None) or "").strip()}
    assert not missing, sorted(missing)


def test_no_bool_metavar_in_any_help():
    from typer.testing import CliRunner

    from tlkit.cli import app

    runner = CliRunner()
    for argv in [["--help"]] + [[name, "--help"] for name in _commands()]:
        res = runner.invoke(app, argv, env={"COLUMNS": "200"})
        assert res.exit_code == 0, (argv, res.output)
        assert "<bool>" not in res.output and "BOOLEAN" not in res.output, (argv, res.output)
        assert "--help" in res.output


# --------------------------------------------------------------------------- class imbalance


def test_finetune_warns_about_class_imbalance(tmp_path):
    import numpy as np

    from tlkit.demo import digits_arrays, make_digits_folder

    _, y = digits_arrays()
    data = make_digits_folder(tmp_path / "imbalanced",
                              indices=np.concatenate([np.flatnonzero(y == 0)[:22], np.flatnonzero(y == 1)[:2]]))
    res = run_cli("finetune", "--data", str(data), "--out", str(tmp_path / "run"), "--recipe", "linear-probe",
                  "--epochs", "1", "--image-size", "32", "--workers", "0", env={"COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    assert "class imbalance" in res.stderr and "--set class_weights=balanced" in res.stderr, res.stderr
    assert "--set sampler=balanced" in res.stderr, res.stderr
    assert "macro F1" in res.stdout, res.stdout


def test_imbalance_hint():
    from tlkit.active.status import imbalance_hint
    from tlkit.data import class_imbalance

    assert class_imbalance({"a": 10, "b": 1}) is None  # 10x is not over 10x
    found = class_imbalance({"a": 22, "b": 2, "c": 0})
    assert (found.largest, found.smallest, round(found.ratio)) == ("a", "b", 11)
    assert "class-balanced" in imbalance_hint({"a": 22, "b": 2}) and imbalance_hint({"a": 3, "b": 2}) is None


def test_simulate_without_strategies_says_which_exist(tmp_path, digits_dir):
    from tlkit.active.simulate import simulate_folders
    from tlkit.core.errors import TlkitError

    with pytest.raises(TlkitError, match="no strategy given; pass --strategies .*margin"):
        simulate_folders(digits_dir, digits_dir, tmp_path / "sim", strategies=[])
    assert not (tmp_path / "sim").exists()
