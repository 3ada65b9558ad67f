"""The wheel carries every sub-package under the one `instructmining` namespace."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUBPACKAGES = [
    "cli",
    "models",
    "indicators",
    "regression",
    "selection",
    "experiments",
    "generation",
]


def code_folders():
    """Every folder holding an __init__.py under the mapped top-level folders."""
    found = []
    for top in ["core", *SUBPACKAGES]:
        for init in (REPO / top).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(REPO / top).parts
            name = ".".join(("instructmining", *([top] if top != "core" else []), *rel))
            found.append(name)
    return sorted(found)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
    )
    (whl,) = out.glob("instructmining-*.whl")
    return whl


def test_wheel_holds_only_the_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"instructmining"}
    for package in code_folders():
        path = package.replace(".", "/") + "/__init__.py"
        assert path in names, f"{package} missing from the wheel"
    assert "instructmining/py.typed" in names
    for rule in (REPO / "regression" / "rules").glob("*.json"):  # shipped rules, by name
        assert f"instructmining/regression/rules/{rule.name}" in names


def test_wheel_installs_and_imports_outside_the_repository(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    # The wheel's own code comes from the clean venv; its third-party dependencies come
    # from the test environment's site-packages, appended after it.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    code = (
        "import importlib, sys\n"
        f"sys.path.extend({deps!r})\n"
        f"names = {code_folders()!r}\n"
        "for n in names: importlib.import_module(n)\n"
        "import instructmining\n"
        "print(instructmining.__file__)\n"
    )
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(env_dir))
    cli = subprocess.run(
        [str(env_dir / "bin" / "instructmining"), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": ":".join(deps), "PATH": "/usr/bin:/bin"},
    )
    assert cli.returncode == 0, cli.stderr


def test_bare_folder_import_is_refused():
    proc = subprocess.run(
        [sys.executable, "-c", "import indicators"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "instructmining.indicators" in proc.stderr
