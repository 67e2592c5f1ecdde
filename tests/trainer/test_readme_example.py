"""The README's "Training with your own trainer" example runs as written (only the run directory is this test's) and
leaves a checkpoint whose data state resumes where it stopped."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Training with your own trainer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_example_trains_and_saves_a_resumable_state(sample_run, tmp_path):
    code = readme_example()
    assert 12 <= len([line for line in code.splitlines() if line.strip()]) <= 20, "a short example"
    assert '"out/sample"' in code
    script = tmp_path / "example.py"
    script.write_text(code.replace('"out/sample"', repr(str(sample_run))))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "checkpoint.pt")
    assert state["data"]["position"] == 20 * 8 and state["data"]["seq_len"] == 256
    assert set(state["model"]) >= {"wte.weight", "lm_head.weight"}
