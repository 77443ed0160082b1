"""The README's Python example runs as written (with the shipped molecule model)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


# slow (run by make test-slow, which CI runs): keeps the default suite under 5 minutes on 2 cores
@pytest.mark.slow
def test_readme_python_example_runs(capsys):
    text = README.read_text()
    block = re.search(r"From Python:\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 16
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "median QED" in out and "->" in out
