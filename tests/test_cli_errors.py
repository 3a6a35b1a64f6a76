"""The `jaxsae` command's error policy, one row per bad input.

Every expected failure prints one line ``jaxsae <cmd>: error: …`` on stderr and exits 2, with no
traceback, no output folder left behind and nothing the user had on disk changed. Plus: the
exit-code/traceback contract through real subprocesses, Ctrl-C (130), ``--debug``, and the
damaged-shard fault test (a re-run of ``extract`` names the shard and writes it again).
"""

import hashlib
import os
import pickle
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxsae import cli
from jaxsae.data.store import open_store
from jaxsae.kernels.sae import init_params
from jaxsae.models.saelens import save_saelens
from jaxsae.protein.esm2 import ESM2Config, init_esm2_params
from jaxsae.protein.extract import extract_activations
from jaxsae.protein.fasta import write_fasta
from jaxsae.protein.weights import save_esm2_hf

TINY = ESM2Config(num_layers=2, d_model=16, num_heads=2, d_ff=32, name="tiny")
SEQS = [("p0", "MKTAYIAKQRQISFVKSHFSRQ"), ("p1", "GSHMLEDPVAGAAK"), ("p2", "MADEEKLPPGWEKRMSRSSG")]
FAST = ["--max-tokens-per-batch", "256", "--no-progress"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _write_torch_zip(path: Path, obj) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The user's files: a tiny ESM-2 in three formats (good, truncated, garbled), FASTA files,
    a finished store, an SAE of another width, .npy files."""
    root = tmp_path_factory.mktemp("user")
    params = init_esm2_params(jax.random.key(0), TINY)
    hf = save_esm2_hf(params, TINY, root / "model")
    blob = (hf / "model.safetensors").read_bytes()
    for name, data in {
        "trunc_st": blob[: len(blob) // 2],
        "garbled_st": blob[:8] + bytes(range(256)) * 4 + blob[8 + 1024 :],
        "garbled_st_data": blob[:-4096] + b"\xff" * 4096,
    }.items():
        d = root / name
        d.mkdir()
        (d / "config.json").write_bytes((hf / "config.json").read_bytes())
        (d / "model.safetensors").write_bytes(data)
    (root / "bad_config").mkdir()
    (root / "bad_config" / "config.json").write_text('{"model_type": "esm", ')
    (root / "bad_config" / "model.safetensors").write_bytes(blob)
    # a torch zip checkpoint, then truncated / with a garbled entry
    _write_torch_zip(root / "full.bin", {"x": 1, "pad": "A" * 4000})
    zbytes = (root / "full.bin").read_bytes()
    for name, data in {
        "trunc_bin": zbytes[: len(zbytes) // 2],
        "garbled_bin": zbytes[:200] + b"Z" * 64 + zbytes[264:],
    }.items():
        d = root / name
        d.mkdir()
        (d / "config.json").write_bytes((hf / "config.json").read_bytes())
        (d / "pytorch_model.bin").write_bytes(data)
    (root / "full.bin").unlink()
    _write_torch_zip(root / "evil.pt", {"model": _Evil()})

    write_fasta(root / "good.fasta", SEQS)
    (root / "empty.fasta").write_text("")
    (root / "picture.fasta").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (root / "random.fasta").write_bytes(np.random.default_rng(0).bytes(2048))
    (root / "letters.fasta").write_text(">p0\nMKTA1YIAK\n")
    (root / "long.fasta").write_text(">long\n" + "A" * 1100 + "\n")

    stores = extract_activations(
        [{"id": i, "sequence": s} for i, s in SEQS],
        (TINY, params),
        [1],
        root / "acts",
        buckets=(32,),
        max_tokens_per_batch=64,
        progress=False,
    )
    assert stores[1].d == 16
    (root / "partial").mkdir()
    for f in ("shard_00000.npy", "index_00000.npy"):
        (root / "partial" / f).write_bytes((root / "acts" / "layer_1" / f).read_bytes())
    save_saelens(root / "sae8", init_params(jax.random.key(1), 8, 32))
    save_saelens(root / "sae_bad_cfg", init_params(jax.random.key(1), 16, 32))
    (root / "sae_bad_cfg" / "cfg.json").write_bytes(b"\x00garbage")

    rng = np.random.default_rng(0)
    np.save(root / "X.npy", rng.normal(size=(32, 20)).astype(np.float32))
    np.save(root / "W.npy", rng.normal(size=(50, 20)).astype(np.float32))
    np.save(root / "W21.npy", rng.normal(size=(50, 21)).astype(np.float32))
    Xnan = rng.normal(size=(8, 20)).astype(np.float32)
    Xnan[5, 3] = np.nan
    np.save(root / "Xnan.npy", Xnan)
    np.save(root / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (root / "text.npy").write_text("1 2 3\n4 5 6\n")
    (root / "a_file").write_text("not a directory\n")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


M = ["--model", "{u}/model"]
# (id, argv with {u} = the user's folder and {o} = a fresh output path, stderr pattern)
CASES = [
    ("fasta-empty", ["extract", "--fasta", "{u}/empty.fasta", *M], r"expected FASTA records"),
    ("fasta-png", ["extract", "--fasta", "{u}/picture.fasta", *M], r"expected a text file"),
    ("fasta-random", ["extract", "--fasta", "{u}/random.fasta", *M], r"expected a text file"),
    ("fasta-letters", ["extract", "--fasta", "{u}/letters.fasta", *M], r"'1'.*--invalid unk"),
    ("fasta-missing", ["extract", "--fasta", "{u}/nope.fasta", *M],
     r"--fasta .*nope.fasta: expected a FASTA file, found no such file"),
    ("too-long", ["extract", "--fasta", "{u}/long.fasta", *M, "--too-long", "error"],
     r"at most 1022 residues.*--too-long crop"),
    ("model-missing", ["extract", "--fasta", "{u}/good.fasta", "--model", "{u}/nope"],
     r"expected an ESM-2 checkpoint.*no such checkpoint"),
    ("safetensors-truncated", ["extract", "--fasta", "{u}/good.fasta", "--model", "{u}/trunc_st"],
     r"model.safetensors: expected a safetensors file.*truncated or damaged"),
    ("safetensors-garbled", ["extract", "--fasta", "{u}/good.fasta", "--model", "{u}/garbled_st"],
     r"model.safetensors: expected a safetensors file"),
    ("safetensors-garbled-data",
     ["extract", "--fasta", "{u}/good.fasta", "--model", "{u}/garbled_st_data"],
     r"model.safetensors: expected finite weights, found NaN/inf in .*damaged"),
    ("config-garbled", ["extract", "--fasta", "{u}/good.fasta", "--model", "{u}/bad_config"],
     r"config.json: expected a JSON model configuration, found unreadable content"),
    ("bin-truncated", ["extract", "--fasta", "{u}/good.fasta", "--model", "{u}/trunc_bin"],
     r"pytorch_model.bin: expected a torch zip .*found a damaged or truncated zip archive"),
    ("bin-garbled", ["extract", "--fasta", "{u}/good.fasta", "--model", "{u}/garbled_bin"],
     r"pytorch_model.bin: damaged torch checkpoint"),
    ("pickle-malicious", ["extract", "--fasta", "{u}/good.fasta", "--model", "{u}/evil.pt"],
     r"evil.pt: .*refers to (posix|os|nt).system.*refusing to load it"),
    ("layers-99", ["extract", "--fasta", "{u}/good.fasta", *M, "--layers", "99"],
     r"--layers: expected integers in 0..2"),
    ("max-tokens-0", ["extract", "--fasta", "{u}/good.fasta", *M, "--max-tokens-per-batch", "0"],
     r"argument --max-tokens-per-batch: expected an integer >= 1, found 0"),
    ("extract-out-is-file", ["extract", "--fasta", "{u}/good.fasta", *M, "--out", "{u}/a_file"],
     r"--out .*a_file: expected a directory, found a file"),
    ("extract-other-settings", ["extract", "--fasta", "{u}/good.fasta", *M, "--out", "{u}/acts",
     "--layers", "2"], r"holds an extraction with other settings"),
    ("store-missing", ["interpret", "{u}/nope", "{u}/sae8"], r"nope: expected a directory written"),
    ("store-partial", ["interpret", "{u}/partial", "{u}/sae8"],
     r"incomplete.*re-run `jaxsae extract` with the same arguments"),
    ("sae-missing", ["interpret", "{u}/acts/layer_1", "{u}/nope"],
     r"expected sae_weights.safetensors"),
    ("sae-cfg-garbled", ["interpret", "{u}/acts/layer_1", "{u}/sae_bad_cfg"],
     r"sae_bad_cfg: cfg.json is not readable JSON"),
    ("store-is-a-file", ["interpret", "{u}/X.npy", "{u}/sae8"],
     r"X.npy: expected a directory written by `jaxsae extract` .*found a file"),
    ("d_in-mismatch", ["interpret", "{u}/acts/layer_1", "{u}/sae8"],
     r"the SAE expects inputs of d_in=8, the store .* has d=16"),
    ("solve-missing", ["solve", "{u}/nope.npy", "{u}/W.npy", "--reg", "0.1"],
     r"inputs .*nope.npy: expected a .npy file, found no such file"),
    ("solve-object-dtype", ["solve", "{u}/objects.npy", "{u}/W.npy", "--reg", "0.1"],
     r"expected a numeric array, found dtype object"),
    ("solve-text-npy", ["solve", "{u}/X.npy", "{u}/text.npy", "--reg", "0.1"],
     r"dictionary .*text.npy: expected a .npy file .*found a file starting with b'1 2 3"),
    ("solve-D-mismatch", ["solve", "{u}/X.npy", "{u}/W21.npy", "--reg", "0.1"],
     r"shape \(32, 20\) = \(B, D\) and dictionary .* shape \(50, 21\)"),
    ("solve-negative-reg", ["solve", "{u}/X.npy", "{u}/W.npy", "--reg", "-0.1"],
     r"--reg: expected a finite number >= 0, found -0.1$"),
    ("solve-out-no-dir", ["solve", "{u}/X.npy", "{u}/W.npy", "--reg", "0.1", "-o", "{o}/c.npy"],
     r"-o/--out .*c.npy: expected an existing directory"),
    ("solve-out-under-file",
     ["solve", "{u}/X.npy", "{u}/W.npy", "--reg", "0.1", "-o", "{u}/a_file/c.npy"],
     r"-o/--out .*: expected .*a_file to be a directory, found a file"),
    ("solve-nan-rows", ["solve", "{u}/Xnan.npy", "{u}/W.npy", "--reg", "0.1"],
     r"Xnan.npy, rows 0..7: .*non-finite"),
    ("train-missing", ["train", "{u}/nope.npy"], r"expected an activation store directory or"),
    ("train-object-dtype", ["train", "{u}/objects.npy"],
     r"data .*objects.npy: expected a numeric array, found dtype object"),
    ("train-text-npy", ["train", "{u}/text.npy"], r"data .*text.npy: expected a .npy file"),
    ("train-out-is-file", ["train", "{u}/X.npy", "--out", "{u}/a_file"],
     r"--out .*a_file: expected a directory, found a file"),
]  # fmt: skip


def _argv(argv: list[str], user: Path, out: Path) -> list[str]:
    """The command line of a case; ``out`` is the output path it would create."""
    argv = [a.format(u=user, o=out) for a in argv]
    if argv[0] == "solve":
        if "-o" not in argv:
            argv += ["-o", str(out)]
    elif "--out" not in argv:
        argv += ["--out", str(out)]
    if argv[0] == "extract":
        argv += FAST
    return argv


def _error_lines(err: str) -> list[str]:
    """Non-empty stderr lines, less the progress bar's (solve's bar is drawn with '\\r')."""
    lines = [seg for line in err.split("\n") for seg in line.split("\r")]
    return [s for s in lines if s.strip() and "block/s" not in s and "s/block" not in s]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(case, env, tmp_path, capsys):
    name, argv, pattern = case
    out = tmp_path / "out"
    argv = _argv(argv, env, out)
    before = _snapshot(env)
    try:
        rc = cli.main(argv)
    except SystemExit as exit:  # argparse's usage errors
        rc = exit.code
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"jaxsae {argv[0]}: error: "), err
    assert __import__("re").search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err and "allow_pickle" not in err
    assert "0.10000000149" not in err
    assert not out.exists(), f"{name} left {out} behind"
    assert _snapshot(env) == before, f"{name} changed the user's files"


def test_unwritable_output_is_found_before_solving(env, tmp_path, monkeypatch, capsys):
    import jaxsae.errors
    import jaxsae.kernels.solvers

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root writes everywhere: the permission check is told so
        real = os.access
        monkeypatch.setattr(jaxsae.errors.os, "access", lambda p, m: real(p, m) and Path(p) != ro)

    def no_solving(*a, **k):
        raise AssertionError("solved before checking the output")

    monkeypatch.setattr(jaxsae.kernels.solvers, "fista", no_solving)
    argv = ["solve", f"{env}/X.npy", f"{env}/W.npy", "--reg", "0.1", "-o", f"{ro}/c.npy"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxsae solve: error: -o/--out") and "c.npy: not writable by you" in err
    assert list(ro.iterdir()) == []


def test_train_warns_resumes_and_exports_with_the_usual_modes(env, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        store = f"{env}/acts/layer_1"  # 56 rows
        argv = ["train", store, "--out", str(tmp_path / "run"), "--d-sae", "32", "--no-progress"]
        argv += ["--batch-size", "64", "--checkpoint-every", "1"]
        assert cli.main([*argv, "--steps", "1"]) == 0
        err = capsys.readouterr().err
        assert "jaxsae train: warning: --batch-size 64 is larger than the data (56 rows)" in err
        sae = tmp_path / "run" / "sae"
        assert stat.S_IMODE(sae.stat().st_mode) == 0o755
        for f in sae.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
        assert cli.main([*argv, "--steps", "1"]) == 0  # the same command again
        assert "resuming from step 1" in capsys.readouterr().out
    finally:
        os.umask(old)


def test_ctrl_c_bugs_and_debug(env, tmp_path, monkeypatch, capsys):
    from jaxsae import solve_cli

    argv = ["solve", f"{env}/X.npy", f"{env}/W.npy", "--reg", "0.1", "-o", f"{tmp_path}/c.npy"]

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(solve_cli, "run", interrupted)
    assert cli.main(argv) == 130
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [
        "jaxsae solve: interrupted: finished work is kept on disk; run the same command to resume"
    ]

    def buggy(args):
        raise TypeError("a bug")

    monkeypatch.setattr(solve_cli, "run", buggy)
    with pytest.raises(TypeError, match="a bug"):  # a bug keeps its traceback
        cli.main(argv)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="found no such file"):  # --debug: the traceback too
        cli.main(["--debug", *argv[:1], f"{env}/nope.npy", *argv[2:]])


def test_exit_codes_and_tracebacks_in_a_real_process(env, tmp_path):
    def run(*argv):
        return subprocess.run(
            [sys.executable, "-m", "jaxsae", *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )

    bad = ["solve", f"{env}/nope.npy", f"{env}/W.npy", "--reg", "0.1", "-o", f"{tmp_path}/c.npy"]
    p = run(*bad)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("jaxsae solve: error: inputs ")
    p = run("--debug", *bad)
    assert p.returncode == 1 and "Traceback" in p.stderr
    p = run("solve", f"{env}/X.npy", "--reg", "x")  # a usage error: one line too
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_damaged_shard_is_named_and_extracted_again(env, tmp_path, capsys):
    out = tmp_path / "acts"
    argv = ["extract", "--fasta", f"{env}/good.fasta", "--model", f"{env}/model", "--out", str(out)]
    argv += [*FAST, "--rows-per-shard", "20", "--layers", "1"]
    assert cli.main(argv) == 0
    layer = out / "layer_1"
    good = {f.name: f.read_bytes() for f in layer.iterdir()}
    shard = layer / "shard_00001.npy"
    data = bytearray(good[shard.name])
    data[-8:] = b"\xff" * 8  # the same size, garbled values
    shard.write_bytes(bytes(data))
    (layer / "index_00002.npy").write_bytes(good["index_00002.npy"][:90])  # truncated
    capsys.readouterr()
    with pytest.warns(UserWarning) as record:
        assert cli.main(argv) == 0
    said = " ".join(str(w.message) for w in record)
    assert "shard_00001.npy is damaged" in said and "index_00002.npy" in said
    assert {f.name: f.read_bytes() for f in layer.iterdir()} == good
    store = open_store(layer)
    assert store.num_rows == sum(len(s) for _, s in SEQS)
