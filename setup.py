"""Which packages the wheel holds: setuptools cannot find a package whose directory has another name, and
``widgets/`` (at the top level) is the package ``nbflow.widgets``; the rest of the metadata is in pyproject.toml."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["nbflow", "nbflow.*"]), "nbflow.widgets"])
