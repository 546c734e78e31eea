"""Set-up and packaging, driven as a user does: ``scripts/setup_env.sh`` with
``DATASEG_PYTHON``, a wheel built and installed with pip, the repacked detectron2 wheel in a
throwaway environment.

Nothing here installs into or removes from the environment the tests run in: the set-up
script runs against a throwaway environment that sees this one's packages (a ``.pth`` file)
and whose ``pip`` is a recorder, so the test exercises the script's own logic (stamps,
what it would install) in seconds.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "setup_env.sh"


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, **kw)


def _bare_venv(path: Path) -> Path:
    """A venv without pip (instant), of this interpreter's base Python; returns its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    proc = _run([base, "-m", "venv", "--without-pip", str(path)])
    assert proc.returncode == 0, proc.stderr
    return path / "bin" / "python"


def _purelib(python: Path) -> Path:
    out = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    return Path(out.stdout.strip())


def _pip(*args, python=None):
    """This environment's pip, acting on ``python``'s environment when given."""
    target = ["--python", str(python)] if python else []
    return _run([sys.executable, "-m", "pip", "--disable-pip-version-check", *target, *args])


# ---- scripts/setup_env.sh with DATASEG_PYTHON ---------------------------------------------

@pytest.fixture
def user_python(tmp_path):
    """``DATASEG_PYTHON`` of a user whose environment already has torch, detectron2, cv2 and
    panopticapi (this one's packages, through a .pth) and whose ``python -m pip`` only logs."""
    env_python = _bare_venv(tmp_path / "env")
    site = sysconfig.get_paths()["purelib"]
    (_purelib(env_python) / "shared.pth").write_text(f"import site; site.addsitedir({site!r})\n")
    log = tmp_path / "pip_calls.jsonl"
    wrapper = tmp_path / "python"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "$1" == "-m" && "$2" == "pip" ]]; then\n'
        f"  exec {env_python} -c 'import json, os, sys; print(json.dumps({{\"args\": sys.argv[1:], "
        f"\"DATASEG_OPENCV\": os.environ.get(\"DATASEG_OPENCV\")}}))' \"${{@:3}}\" >> {log}\n"
        "fi\n"
        f'exec {env_python} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


def _setup(python, stamp_dir, extras="test"):
    env = dict(os.environ, DATASEG_PYTHON=str(python), DATASEG_STAMP_DIR=str(stamp_dir),
               DATASEG_EXTRAS=extras)
    env.pop("DATASEG_OPENCV", None)
    return _run(["bash", str(SCRIPT)], env=env, cwd=str(REPO))


def _calls(log):
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_setup_into_users_environment_then_noop(user_python, tmp_path):
    python, log = user_python
    stamps = tmp_path / "stamps" / "nested"  # does not exist yet: the script creates it

    first = _setup(python, stamps)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "keeping installed torch" in first.stdout
    assert "keeping installed detectron2" in first.stdout
    assert "keeping installed OpenCV" in first.stdout
    assert len(list(stamps.glob("stamp-*"))) == 1
    calls = _calls(log)
    # The only install: this package, editable, with the extras asked for, and no OpenCV
    # requirement because a cv2 is importable (a user's opencv-python stays).
    assert [c["args"] for c in calls] == [
        ["--disable-pip-version-check", "install", "-e", ".[test]"]]
    assert calls[0]["DATASEG_OPENCV"] == ""

    second = _setup(python, stamps)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "environment is up to date" in second.stdout
    assert len(_calls(log)) == 1  # no pip call at all
    # The stamp records the inputs (hash of the set-up files, extras): other extras or an
    # edited setup.py set up again.
    (stamp,) = stamps.glob("stamp-*")
    assert stamp.read_text().strip().endswith(" extras=test")


def test_setup_installs_again_when_a_lazily_imported_dependency_is_missing(user_python,
                                                                          tmp_path, monkeypatch):
    # shapely is imported only when the training crop first meets a polygon: an environment
    # without it (uninstalled, or set up before it was required) must not pass as up to date.
    python, log = user_python
    stamps = tmp_path / "stamps"
    first = _setup(python, stamps)
    assert first.returncode == 0, first.stdout + first.stderr
    blocker = tmp_path / "no_shapely"
    (blocker / "shapely").mkdir(parents=True)
    (blocker / "shapely" / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker))
    second = _setup(python, stamps)
    assert "environment is up to date" not in second.stdout
    assert [c["args"][1:3] for c in _calls(log)] == [["install", "-e"]] * 2
    # The recorder installed nothing, so the final import check names the missing package.
    assert second.returncode != 0 and "shapely" in second.stderr


def test_deploy_extra_is_set_up_by_default_and_its_imports_are_checked(user_python, tmp_path,
                                                                       monkeypatch):
    # The ONNX export and OnnxPredictor import onnx / onnxscript / onnxruntime only when
    # used: the default set-up installs them (the deploy extra) and checks they import.
    script = SCRIPT.read_text()
    assert 'EXTRAS="${DATASEG_EXTRAS:-test,minilm,clip,deploy}"' in script
    setup_py = (REPO / "setup.py").read_text()
    assert '"deploy": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"]' in setup_py
    python, log = user_python
    stamps = tmp_path / "stamps"
    first = _setup(python, stamps, extras="test,deploy")
    assert first.returncode == 0, first.stdout + first.stderr
    assert [c["args"] for c in _calls(log)] == [
        ["--disable-pip-version-check", "install", "-e", ".[test,deploy]"]]
    blocker = tmp_path / "no_onnxruntime"
    (blocker / "onnxruntime").mkdir(parents=True)
    (blocker / "onnxruntime" / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker))
    # Without the extra, onnxruntime is not required ...
    without = _setup(python, tmp_path / "other_stamps", extras="test")
    assert without.returncode == 0, without.stdout + without.stderr
    # ... with it, a missing onnxruntime sets up again and the import check names it.
    again = _setup(python, stamps, extras="test,deploy")
    assert "environment is up to date" not in again.stdout
    assert again.returncode != 0 and "onnxruntime" in again.stderr


def test_setup_refuses_a_python_that_does_not_run(tmp_path):
    proc = _setup(tmp_path / "no_such_python", tmp_path / "stamps")
    assert proc.returncode != 0
    assert "does not run" in proc.stderr


def test_setup_keeps_a_users_torch_when_torchvision_is_missing(user_python, tmp_path,
                                                              monkeypatch):
    python, log = user_python
    blocker = tmp_path / "no_torchvision"  # torch imports, torchvision does not
    (blocker / "torchvision").mkdir(parents=True)
    (blocker / "torchvision" / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker))
    proc = _setup(python, tmp_path / "stamps")
    assert proc.returncode != 0
    assert "torchvision is not" in proc.stderr and "pytorch.org" in proc.stderr
    assert _calls(log) == []  # nothing was installed, torch least of all


# ---- detectron2 from the wheel's sources: visible to pip ----------------------------------

def test_repacked_detectron2_is_managed_by_pip(tmp_path):
    # The layout of the sal-detectron2 wheel: the package (with a compiled _C for another
    # Python and data files), a top-level tools/ folder and its own metadata.
    src = tmp_path / "src"
    (src / "detectron2" / "model_zoo" / "configs").mkdir(parents=True)
    (src / "detectron2" / "__init__.py").write_text('__version__ = "0.6.1"\n')
    (src / "detectron2" / "model_zoo" / "__init__.py").write_text("")
    (src / "detectron2" / "model_zoo" / "configs" / "a.yaml").write_text("MODEL: {}\n")
    (src / "detectron2" / "_C.cpython-310-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    (src / "tools").mkdir()
    (src / "tools" / "train_net.py").write_text("")
    (src / "sal_detectron2-0.7.2.dist-info").mkdir()

    built = _run([sys.executable, str(REPO / "scripts" / "detectron2_wheel.py"), str(src),
                  str(tmp_path / "dist")])
    assert built.returncode == 0, built.stderr
    wheel = Path(built.stdout.strip())
    assert wheel.name == "detectron2-0.6.1-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "detectron2/model_zoo/configs/a.yaml" in names
    assert not any(n.startswith("tools/") or n.endswith(".so") for n in names)

    python = _bare_venv(tmp_path / "env")
    site = _purelib(python)
    installed = _pip("install", "--no-deps", "--no-index", str(wheel), python=python)
    assert installed.returncode == 0, installed.stderr
    listed = _pip("list", "--format", "json", python=python)
    assert {"name": "detectron2", "version": "0.6.1"} in json.loads(listed.stdout)
    assert (site / "detectron2" / "model_zoo" / "configs" / "a.yaml").is_file()

    removed = _pip("uninstall", "-y", "detectron2", python=python)
    assert removed.returncode == 0, removed.stderr
    assert not (site / "detectron2").exists()


# ---- packaging: configs in the wheel, OpenCV requirement ----------------------------------

@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    """The files a build reads, copied so builds never write into the checkout."""
    root = tmp_path_factory.mktemp("dataseg_src")
    for name in ("setup.py", "README.md"):
        (root / name).write_bytes((REPO / name).read_bytes())
    for name in ("dataseg", "configs"):
        shutil.copytree(REPO / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return root


def test_wheel_ships_the_configs(source_copy, tmp_path):
    built = _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                 str(tmp_path / "dist"), str(source_copy))
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("dataseg-*.whl")
    target = tmp_path / "installed"
    installed = _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    assert installed.returncode == 0, installed.stderr

    # A non-editable install, imported from outside the checkout.
    code = (
        "import json; from dataseg import model_zoo as mz\n"
        "path = mz.get_config_file('coco_ade_o365/DaTaSeg_ViTDet-L.yaml')\n"
        "cfg = mz.get_config('coco_ade_o365/DaTaSeg_ViTDet-L.yaml')\n"
        "print(json.dumps({'path': path, 'configs': mz.list_configs(), 'depth': cfg.MODEL.VIT.DEPTH,"
        " 'decay': cfg.SOLVER.VIT_LAYER_DECAY_RATE, 'arch': cfg.MODEL.META_ARCHITECTURE}))\n")
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = _run([sys.executable, "-c", code], env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["path"]).is_relative_to(target)
    # ViTDet-L -> ViTDet-B -> R50 -> Base-DaTaSeg: every relative _BASE_ resolved.
    assert (out["depth"], out["decay"], out["arch"]) == (24, 0.8, "DaTaSeg")
    shipped = sorted(p.relative_to(REPO / "configs").as_posix()
                     for p in (REPO / "configs").rglob("*.yaml"))
    assert out["configs"] == shipped


def test_model_zoo_in_a_checkout_and_unknown_names():
    from dataseg import model_zoo

    path = Path(model_zoo.get_config_file("tiny/DaTaSeg-tiny.yaml"))
    assert path == REPO / "configs" / "tiny" / "DaTaSeg-tiny.yaml"
    with pytest.raises(FileNotFoundError, match="not a DaTaSeg config.*tiny/DaTaSeg-tiny.yaml"):
        model_zoo.get_config_file("tiny/nope.yaml")


def _requires_dist(source, tmp_path, **env):
    report = tmp_path / "report.json"
    proc = _run([sys.executable, "-m", "pip", "--disable-pip-version-check", "install",
                 "--dry-run", "--no-deps", "--no-index", "--no-build-isolation", "--quiet",
                 "--report", str(report), str(source)],
                env={**{k: v for k, v in os.environ.items() if k != "DATASEG_OPENCV"}, **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (item,) = json.loads(report.read_text())["install"]
    return [r for r in item["metadata"]["requires_dist"] if "extra ==" not in r]


def test_opencv_requirement_follows_the_installed_build(source_copy, tmp_path):
    # A user with the GUI build: a distribution "opencv-python" on the path.
    fake = tmp_path / "site"
    (fake / "opencv_python-4.10.0.84.dist-info").mkdir(parents=True)
    (fake / "opencv_python-4.10.0.84.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: opencv-python\nVersion: 4.10.0.84\n")
    gui = _requires_dist(source_copy, tmp_path,
                         PYTHONPATH=os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]))
    assert "opencv-python" in gui and "opencv-python-headless" not in gui
    # The set-up script's override when a cv2 is importable: no OpenCV requirement at all.
    none = _requires_dist(source_copy, tmp_path, DATASEG_OPENCV="")
    assert not any(r.startswith("opencv") for r in none)
    assert "numpy" in none and "pycocotools>=2.0.2" in none
    # The training crop of polygon annotations (fvcore's CropTransform) imports shapely.
    assert "shapely" in none
