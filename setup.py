"""Build script: the metadata, dependencies and entry points are in setup.cfg.

The data folders stay at the top of the source tree; a built package (``pip install .``,
a wheel) carries their data files as ``dnas/_data/<folder>/``, where ``dnas.resources``
finds them through ``importlib.resources``. An editable install reads the checkout's
folders instead.
"""
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

DATA = {
    "supernets": ["*.yaml"],
    "search": ["*.yaml"],
    "retrain": ["*.yaml"],  # the recipes; ablation.py and results/ stay in the checkout
    "latency_tables": ["*.csv", "*.meta.json"],
    "backbones": ["*.yaml"],  # the DCS-FB fixed-backbone arch files
}


class BuildPy(build_py):
    """``dnas._data.*`` hold data files only, never the scripts next to them."""

    def find_package_modules(self, package, package_dir):
        if package.startswith("dnas._data."):
            return []
        return super().find_package_modules(package, package_dir)


setup(
    packages=find_packages(include=["dnas", "dnas.*"]) + [f"dnas._data.{d}" for d in DATA],
    package_dir={f"dnas._data.{d}": d for d in DATA},
    package_data={f"dnas._data.{d}": patterns for d, patterns in DATA.items()},
    cmdclass={"build_py": BuildPy},
)
