"""The package as `pip install .` makes it: built into a wheel, installed, serving pages."""

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from webapp.testing import Server

REPO = Path(__file__).resolve().parent.parent


def run(*command, **kwargs) -> str:
    """Its standard output; on failure, an assertion that shows both outputs."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_serves_pages(tmp_path):
    """Does the built wheel carry the templates, static files, migrations and defaults
    that a server needs, and find them once installed?"""
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(REPO))
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    # The venv sees the dependencies already installed, but has its own webapp: the wheel's.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv))
    python = str(venv / "bin" / "python")
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel))

    # Outside the checkout, or its webapp/ would come first on sys.path.
    folder = tmp_path / "run"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIDECK_")}
    installed = run(python, "-c", "import webapp; print(webapp.__file__)", cwd=folder, env=env)
    assert Path(installed.strip()).is_relative_to(venv)

    run(python, "-m", "flask", "--app", "webapp", "init-db", cwd=folder, env=env)
    # The defaults' instance folder is taken from the current folder, not site-packages.
    instance = folder / "instance"
    assert (instance / "optideck.db").is_file()

    server = Server(instance, {"OPTIDECK_ADMIN_PASSWORD": "wheel-admin-password"}, python=python).start()
    try:
        with urllib.request.urlopen(f"{server.url}/login", timeout=10) as response:  # noqa: S310 - localhost
            assert response.status == 200
            assert "<title>Log in · Optideck</title>" in response.read().decode()
        with urllib.request.urlopen(f"{server.url}/static/css/app.css", timeout=10) as response:  # noqa: S310
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/css")
    finally:
        server.stop()
