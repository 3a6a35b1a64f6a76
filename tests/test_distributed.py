"""Two real processes × two fake CPU devices on JAX's distributed runtime (gloo, localhost).

One spawned pair (``distributed_worker.py``) extracts, trains on a data-parallel and on a
data × feature mesh, and resumes a checkpoint written by one process; this process meanwhile
runs the same work on its 4 devices, and the results must agree. A second pair, started with
``jaxsae train --coordinator ...``, loses one process mid-run: the other must stop with an error.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from distributed_worker import CFG, EXTRACT_KW, TRAIN_KW, data, extract_proteins, tiny_model

from jaxsae.data.store import open_store
from jaxsae.protein.extract import extract_activations
from jaxsae.training.loop import train
from jaxsae.training.metrics_log import read_metrics
from jaxsae.training.parallel import make_mesh

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
TIMEOUT_S = 240  # every wait on a spawned process is bounded by this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    return env


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)


def _wait_all(procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log.read_text()[-3000:]


def _close(a, b, tol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _params(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two-process runs and the same runs in this process on its 4 devices."""
    base = tmp_path_factory.mktemp("two_processes")
    X = data()
    np.save(base / "x.npy", X)
    dp_mesh = make_mesh(devices=jax.devices()[:4])
    # a checkpoint written by one process on 4 devices, for the two processes to resume
    train(CFG, X, base / "from1", mesh=dp_mesh, until_step=6, **TRAIN_KW)
    port = _free_port()
    logs = [base / f"worker{i}.log" for i in range(2)]
    procs = [
        _spawn([sys.executable, str(WORKER), str(port), str(i), str(base)], logs[i])
        for i in range(2)
    ]
    try:
        ours = {
            "dp": train(CFG, X, base / "one_dp", mesh=dp_mesh, **TRAIN_KW)[0],
            "fs": train(
                CFG, X, base / "one_fs", mesh=make_mesh(2, 2, devices=jax.devices()[:4]),
                **TRAIN_KW,
            )[0],
        }  # fmt: skip
        extract_activations(extract_proteins(), tiny_model(), [1], base / "one_ext", **EXTRACT_KW)
    finally:
        _wait_all(procs, logs)
    return base, ours


@pytest.mark.parametrize("run", ["dp", "fs"])
def test_two_processes_train_like_one(runs, run):
    """2 processes × 2 devices == 1 process × 4 devices, on a 4 × 1 and a 2 × 2 mesh."""
    base, ours = runs
    p0, p1 = _params(base / f"{run}_p0.npz"), _params(base / f"{run}_p1.npz")
    _close(p0, p1, 0)
    _close(p0, ours[run]._asdict())
    assert (base / run / "sae").is_dir()  # written once, by process 0, from gathered parameters
    two, one = read_metrics(base / run), read_metrics(base / f"one_{run}")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [3, 6, 6, 9, 12]
    assert two[2]["resampled"] == one[2]["resampled"] > 0  # gathered, resampled, placed again
    loss = [[r["loss"] for r in h if "loss" in r] for h in (two, one)]
    np.testing.assert_allclose(*loss, rtol=1e-6)


def test_checkpoints_move_between_process_counts(runs, tmp_path):
    """Saved by 1 process resumed by 2, and saved by 2 resumed by 1: the uninterrupted result."""
    base, ours = runs
    _close(_params(base / "from1_p0.npz"), ours["dp"]._asdict())
    resumed = tmp_path / "from2"  # the two processes' run, back at its step-6 checkpoint
    shutil.copytree(base / "dp", resumed)
    shutil.rmtree(resumed / "checkpoints" / "ckpt_000000012")
    shutil.rmtree(resumed / "sae")
    params, _ = train(CFG, data(), resumed, mesh=make_mesh(devices=jax.devices()[:4]), **TRAIN_KW)
    _close(params._asdict(), ours["dp"]._asdict())
    one_device = tmp_path / "to_one_device"  # and onto another mesh in this process
    shutil.copytree(base / "from1", one_device)
    shutil.rmtree(one_device / "checkpoints" / "ckpt_000000012")
    shutil.rmtree(one_device / "sae")
    params, _ = train(CFG, data(), one_device, devices=jax.devices()[:2], **TRAIN_KW)
    _close(params._asdict(), ours["dp"]._asdict(), 1e-5)


def test_two_processes_extract_one_store(runs):
    base, _ = runs
    two, one = open_store(base / "extract" / "layer_1"), open_store(base / "one_ext" / "layer_1")
    assert two.num_rows == one.num_rows and len(two.shard_rows) > 2  # shards of both processes
    np.testing.assert_array_equal(two.shard_rows, one.shard_rows)
    np.testing.assert_array_equal(two.rows(0, two.num_rows), one.rows(0, one.num_rows))
    for i in range(len(two.shard_rows)):
        np.testing.assert_array_equal(two.index(i), one.index(i))
    assert (base / "extract" / "layer_1" / "proteins.jsonl").read_text() == (
        base / "one_ext" / "layer_1" / "proteins.jsonl"
    ).read_text()


def test_a_dead_process_stops_the_other(tmp_path):
    """Kill one of two `jaxsae train` processes: the other exits non-zero with a message."""
    np.save(tmp_path / "x.npy", data())
    port = _free_port()
    argv = [
        sys.executable, "-m", "jaxsae", "train", str(tmp_path / "x.npy"), "--out",
        str(tmp_path / "run"), "--d-sae", "16", "--batch-size", "32", "--steps", "1000000",
        "--log-every", "1", "--no-progress", "--coordinator", f"localhost:{port}",
        "--num-processes", "2", "--heartbeat-timeout", "5",
    ]  # fmt: skip
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = [_spawn([*argv, "--process-id", str(i)], logs[i]) for i in range(2)]
    try:
        deadline = time.monotonic() + TIMEOUT_S
        metrics = tmp_path / "run" / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
            assert time.monotonic() < deadline and procs[0].poll() is None, logs[0].read_text()
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert procs[0].returncode != 0
    assert "another task died" in logs[0].read_text()


def test_pmap_is_one_process_only(monkeypatch):
    from jaxsae.training.distributed import Placement

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="pmap: runs on one process's devices; with 2 processes"):
        Placement(CFG, pmap=True)
