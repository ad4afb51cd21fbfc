"""pytest plugin for mutation runs (tools/mutation.py): read mutmut's configuration once, at the start of the test
session, while the working directory is the mutated copy. Tests that change directory (for example to check what
runs from the folder a payload sits in) would otherwise make mutmut look for its setup.cfg in the wrong place."""

from __future__ import annotations


def pytest_configure(config) -> None:
    import os

    try:
        from mutmut.configuration import config as mutmut_config
    except ImportError:  # not a mutation run
        return
    mutmut_config()
    # Python processes the tests start read it from here too (tools/mutmut_sitecustomize.py)
    os.environ["MMZOO_MUTATION_DIR"] = os.getcwd()
