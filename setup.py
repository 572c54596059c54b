"""What pyproject.toml cannot say: the files beside the package ship inside it.

templates/, static/, migrations/ and config.toml stay at the top of the repository
(the layout docs/architecture.md describes). A built wheel carries them as
webapp/templates/ and so on, which is where webapp/config.py looks when the package
is installed from one. An editable install reads them from the checkout.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("templates", "static", "migrations", "config.toml")


class BuildPyWithResources(build_py):
    def build_package_data(self) -> None:
        super().build_package_data()
        target = Path(self.build_lib) / "webapp"
        for source in _resource_files():
            self.mkpath(str((target / source).parent))
            self.copy_file(str(source), str(target / source))


def _resource_files() -> list[Path]:
    files = []
    for name in SHIPPED:
        path = Path(name)
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [p for p in candidates if p.is_file() and "__pycache__" not in p.parts]
    return files


setup(cmdclass={"build_py": BuildPyWithResources})
