"""Load a repository script (scripts/, benchmarks/) as a module, for tests of its pure logic."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str, name: str | None = None):
    """The module at ``ROOT / relpath`` (or at an absolute path), executed fresh under ``name``."""
    path = Path(relpath) if Path(relpath).is_absolute() else ROOT / relpath
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
