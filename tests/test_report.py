"""The HTML report is valid, self-contained, and shows what it is given; plots are PNGs."""

from html.parser import HTMLParser

import jax
import numpy as np
import pytest

from jaxsae.interpret.plots import (
    plot_amortisation_gap,
    plot_coverage,
    plot_density_histogram,
    plot_feature_track,
    plot_training_curves,
)
from jaxsae.interpret.report import build_feature_cards, format_table, write_report
from jaxsae.interpret.stats import decoder_neighbours
from jaxsae.interpret.topk import sae_featurizer, scan_features
from jaxsae.kernels.sae import init_params

PNG = b"\x89PNG\r\n\x1a\n"


class _Checker(HTMLParser):
    VOID = {"meta", "img", "input", "br", "hr", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.urls, self.ids, self.imgs = [], [], [], set(), 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if k in a and not (a[k].startswith("data:") or a[k].startswith("#")):
                self.urls.append(a[k])
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs += 1
        if tag == "link":
            self.urls.append(a.get("href", "link"))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}>, open: {self.stack[-3:]}")
        else:
            self.stack.pop()


def _setup(tmp_path):
    rng = np.random.default_rng(0)
    proteins, acts, index = [], [], []
    for p in range(6):
        n = int(rng.integers(20, 40))
        proteins.append(
            {
                "id": f"P{p}<x>",  # needs escaping
                "sequence": "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)),
                "dssp": "".join(rng.choice(list("HELTS"), n)),
                "scop": "b.1.1.2",
            }
        )
        acts.append(rng.standard_normal((n, 8)).astype(np.float32))
        index.append(np.stack([np.full(n, p), np.arange(n)], 1))
    source = (np.concatenate(acts), np.concatenate(index).astype(np.int32))
    params = init_params(jax.random.key(0), 8, 16, dec_norm=1.0)
    feat = sae_featurizer(params)
    stats = scan_features(source, feat, k=6, chunk_size=64)
    return proteins, source, params, feat, stats


def test_report_is_self_contained_valid_html(tmp_path):
    proteins, source, params, feat, stats = _setup(tmp_path)
    nb = decoder_neighbours(params.W_dec, n=3)
    alive = [int(f) for f in np.flatnonzero(stats.density > 0)[:4]]
    cards = build_feature_cards(
        source,
        proteins,
        feat,
        stats,
        alive,
        best_concepts={alive[0]: [("DSSP8 H", 0.8, 0.15)]},
        neighbours=nb,
        notes={alive[0]: "best for DSSP8 H"},
        n_examples=2,
        window=5,
    )
    # the card's windows are the feature's activations on the protein, peak included
    ex = cards[0].examples[0]
    assert ex.peak_activation == max(ex.activations)
    assert abs(ex.peak_activation - stats.top_values[alive[0], 0]) < 1e-5
    assert (
        ex.residues
        == proteins[int(stats.top_protein[alive[0], 0])]["sequence"][
            ex.start : ex.start + len(ex.residues)
        ]
    )
    imgs = {
        "density": plot_density_histogram(stats.density, tmp_path / "d.png"),
        "training": plot_training_curves(
            [{"step": s, "l0": 10 - s, "fvu": 1 / (s + 1), "dead_frac": 0.0} for s in range(10)]
            + [{"event": "start"}],
            tmp_path / "t.png",
        ),
        "coverage": plot_coverage(
            {
                "SAE": {"DSSP8": {"covered": 3, "eligible": 8, "mean_f1": 0.5}},
                "neurons": {"DSSP8": {"covered": 1, "eligible": 8, "mean_f1": 0.3}},
            },
            tmp_path / "c.png",
        ),
        "gap": plot_amortisation_gap(
            {"encoder_objective": 2.0, "fista_objective": 1.5, "encoder_l0": 30, "fista_l0": 12},
            tmp_path / "g.png",
        ),
        "track": plot_feature_track(
            proteins[0]["sequence"],
            np.arange(len(proteins[0]["sequence"])),
            tmp_path / "f.png",
            dssp=proteins[0]["dssp"],
        ),
    }
    for p in imgs.values():
        assert p.read_bytes().startswith(PNG)
    summary = (
        [["SAE", 3, 8, 0.5], ["neurons", 1, 8, float("nan")]],
        ["method", "covered", "n", "F1"],
    )
    out = write_report(
        tmp_path / "r" / "report.html",
        title="Test <report>",
        intro="An intro & more.",
        summary=summary,
        concept_table=([["DSSP8 H", "f1", 0.8]], ["concept", "feature", "F1"]),
        concept_good=[True],
        cards=cards,
        images=imgs,
        sections=[("Reading", "para one\n\npara two")],
        console=format_table(*summary),
    )
    text = out.read_text()
    assert "http://" not in text and "https://" not in text
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert checker.urls == []
    assert checker.imgs == len(imgs)
    assert {f"f{f}" for f in alive} <= checker.ids
    shown = cards[0].examples[0].protein_id  # "P?<x>": escaped, never raw markup
    assert shown.replace("<x>", "&lt;x&gt;") in text and "<x>" not in text
    assert "best for DSSP8 H" in text and 'id="q"' in text


def test_format_table_aligns_columns():
    t = format_table([["a", 1.23456, 3], ["long name", float("nan"), 10]], ["x", "y", "z"])
    lines = t.splitlines()
    assert lines[0].startswith("x") and "1.235" in lines[2] and "nan" in lines[3]
    assert lines[2].index("1.235") == lines[3].index("nan")


def test_card_layout_and_report_page_are_given_whole_or_by_keyword(tmp_path):
    from jaxsae.interpret.report import CardLayout, ReportPage

    with pytest.raises(ValueError, match="CardLayout.window: expected an int >= 0"):
        CardLayout(window=-1)
    proteins, source, params, feat, stats = _setup(tmp_path)
    alive = [int(f) for f in np.flatnonzero(stats.density > 0)[:2]]
    layout = CardLayout(n_examples=2, window=3)
    whole = build_feature_cards(source, proteins, feat, stats, alive, layout=layout)
    named = build_feature_cards(source, proteins, feat, stats, alive, n_examples=2, window=3)
    assert whole == named and all(len(c.examples) <= 2 for c in whole)
    assert all(len(ex.residues) <= 7 for c in whole for ex in c.examples)
    page = ReportPage(title="T", intro="i", cards=whole, sections=[("S", "text")])
    a = write_report(tmp_path / "a.html", page)
    b = write_report(
        tmp_path / "b.html", title="T", intro="i", cards=named, sections=[("S", "text")]
    )
    c = write_report(tmp_path / "c.html", page, title="U")
    assert a.read_bytes() == b.read_bytes()
    assert "<title>U</title>" in c.read_text()
