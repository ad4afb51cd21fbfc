"""Installed as ``sitecustomize.py`` at the root of a mutated copy (tools/mutation.py): a Python process that a test
starts from another folder (the CLI run from the folder a payload sits in, say) reads mutmut's configuration from the
mutated copy, as the test process did (tools/mutmut_preload.py), instead of failing to find setup.cfg where it runs.
It does nothing outside a mutation run."""

from __future__ import annotations

import os

if os.environ.get("MUTANT_UNDER_TEST") and os.environ.get("MMZOO_MUTATION_DIR"):
    _here = os.getcwd()
    os.chdir(os.environ["MMZOO_MUTATION_DIR"])
    try:
        from mutmut.configuration import config

        config()
    except ImportError:
        pass
    finally:
        os.chdir(_here)
