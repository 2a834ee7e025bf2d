"""The README's library example runs as written (from a checkout beside ../shared)."""
from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs_as_written(tmp_path, shared, capsys, monkeypatch):
    block = re.search(r"## Library\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(block.strip().splitlines()) <= 12
    work = tmp_path / "checkout"
    work.mkdir()
    os.symlink(shared, tmp_path / "shared")
    monkeypatch.chdir(work)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("added 296 crops")
    rank, dist, camera, pid, path = out[1].split()
    assert (rank, camera, pid) == ("1", "2", "1") and path.endswith("001/02_7.png")
    assert out[-1] == "296 crops indexed"
    assert (work / "indexes" / "pku_cam02" / "manifest.json").exists()
