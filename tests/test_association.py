"""Feature ↔ concept association on hand-made activations with known answers."""

import numpy as np
import pytest

from jaxsae.interpret.association import (
    THRESHOLDS,
    associate,
    association_metrics,
    count_concepts,
    coverage_summary,
    feature_best_concepts,
    select_best,
)
from jaxsae.interpret.baselines import neuron_featurizer
from jaxsae.interpret.concepts import (
    build_concepts,
    domain_concepts,
    dssp_concepts,
    split_codes,
    split_name,
)


def _proteins(num=12, seed=0):
    """Proteins with random DSSP strings; class b for odd proteins, a for even ones."""
    rng = np.random.default_rng(seed)
    splits = ["train", "valid", "test"]
    out = []
    for p in range(num):
        n = int(rng.integers(5, 30))
        out.append(
            {
                "id": f"p{p}",
                "length": n,
                "sequence": "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)),
                "dssp": "".join(rng.choice(list("HHHGEEBTSL"), n)),
                "scop": "b.1.1.2" if p % 2 else "a.4.5.0",
                "split": splits[p % 3],
            }
        )
    return out


def _activations(proteins, seed=1):
    """d = 4: dim 0 fires (1..2) on H, dim 1 is noise, dim 2 fires once in class b, dim 3 fires
    on the first residue of every H run."""
    rng = np.random.default_rng(seed)
    acts, index = [], []
    for p, rec in enumerate(proteins):
        n = rec["length"]
        a = np.zeros((n, 4), np.float32)
        is_h = np.array([c == "H" for c in rec["dssp"]])
        a[is_h, 0] = 1 + rng.random(is_h.sum())
        a[:, 1] = rng.random(n)
        if rec["scop"].startswith("b"):
            a[n // 2, 2] = 3.0
        run_start = is_h & ~np.concatenate([[False], is_h[:-1]])
        a[run_start, 3] = 1.0
        acts.append(a)
        index.append(np.stack([np.full(n, p), np.arange(n)], 1))
    return np.concatenate(acts), np.concatenate(index).astype(np.int32)


def _reference(table, feat, acts, index, proteins, split=None):
    """``count_concepts`` on the whole data with InterPLM's instance-id label matrix."""
    f = np.asarray(feat.apply(feat.params, acts))
    m = f.max(0)
    scaled = f / np.where(m > 0, m, 1.0)
    rows = table.offsets[index[:, 0]] + index[:, 1]
    sp = (split_codes(proteins) if split is None else split)[index[:, 0]]
    ok = table.annotated[index[:, 0]]
    mask = np.stack([(sp == 1) & ok, (sp == 2) & ok], 1).astype(np.uint8)
    return count_concepts(
        scaled, table.table[rows], mask, instance_ids=table.instance_ids()[rows]
    ), m


def test_counts_match_a_brute_force_loop():
    rng = np.random.default_rng(0)
    scaled = rng.random((40, 3)).astype(np.float32)
    concepts = (rng.random((40, 2)) < 0.4).astype(np.uint8)
    split = np.zeros((40, 2), np.uint8)
    split[np.arange(40), rng.integers(0, 2, 40)] = 1
    split[:5] = 0  # rows of no split
    c = count_concepts(scaled, concepts, split)
    for s in range(2):
        for ti, t in enumerate(THRESHOLDS):
            for f in range(3):
                fires = (scaled[:, f] > t) & (split[:, s] == 1)
                assert c.active[s, ti, f] == fires.sum()
                for k in range(2):
                    assert c.tp[s, ti, f, k] == (fires & (concepts[:, k] == 1)).sum()
        np.testing.assert_array_equal(c.positives[s], concepts[split[:, s] == 1].sum(0))
    p, r, f1 = association_metrics(c)
    np.testing.assert_allclose(f1, np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0))


@pytest.mark.parametrize("chunk_size", [7, 64])
def test_streaming_equals_interplm_unique_instance_count(chunk_size):
    proteins = _proteins(num=9, seed=3)
    acts, index = _activations(proteins, seed=4)
    feat = neuron_featurizer(acts.mean(0))
    tables = build_concepts(proteins, min_domains=1, descriptions=False)
    dom_split = np.where(split_codes(proteins) > 0, 1 + np.arange(9) % 2, -1)
    splits = [dom_split if name == "SCOPe" else None for name in tables]
    f = np.asarray(feat.apply(feat.params, acts))
    got = associate(
        (acts, index), feat, f.max(0), proteins, list(tables.values()),
        splits=splits, chunk_size=chunk_size,
    )  # fmt: skip
    for (name, table), counts, sp in zip(tables.items(), got, splits, strict=True):
        ref, _ = _reference(table, feat, acts, index, proteins, sp)
        for field in ("tp", "active", "positives", "total"):
            np.testing.assert_array_equal(getattr(counts, field), getattr(ref, field), name)
        is_range = np.array([k == "range" for k in table.kinds])
        np.testing.assert_array_equal(
            counts.tp_instances[..., is_range], ref.tp_instances[..., is_range]
        )
        np.testing.assert_array_equal(counts.instances[:, is_range], ref.instances[:, is_range])


def test_per_instance_recall_for_ranges_per_residue_for_points():
    proteins = _proteins()
    acts, index = _activations(proteins)
    feat = neuron_featurizer(None, d=4)  # n{i}+ = dim i
    max_act = np.array(acts.max(0).tolist() + [0.0] * 4)
    tables = build_concepts(proteins, min_domains=2, descriptions=False)
    counts = associate((acts, index), feat, max_act, proteins, list(tables.values()), chunk_size=16)
    dssp = tables["DSSP"]
    d = dict(zip(tables, counts, strict=True))["DSSP"]
    scores = select_best(d, dssp.names, kinds=dssp.kinds, min_residues=0)
    h = scores.names.index("DSSP8 H")
    # n0+ fires on every H residue: precision 1, recall 1 in both counts
    assert scores.feature[h] == 0 and scores.test_f1[h] == 1.0 and scores.val_f1[h] == 1.0
    # n3+ fires on one residue per helix: precision 1, every helix found
    _, rec, f1 = association_metrics(d, dssp.kinds)
    assert rec[1, 0, 3, h] == 1.0 and f1[1, 0, 3, h] == 1.0
    _, rec_res, _ = association_metrics(d, dssp.kinds, recall="residue")
    assert rec_res[1, 0, 3, h] < 1.0
    # InterPLM's tie-break: equal instance F1, the better per-residue F1 wins (n0+ over n3+)
    assert scores.feature[h] == 0
    # the 3-state helix also holds G residues: precision 1, recall < 1
    h3 = scores.names.index("DSSP3 H")
    assert scores.test_precision[h3] == 1.0 and scores.test_recall[h3] < 1.0
    # SCOPe: one instance per domain; n2+ fires on one residue of every class-b domain
    scop = tables["SCOPe"]
    ds = select_best(
        dict(zip(tables, counts, strict=True))["SCOPe"],
        scop.names,
        kinds=scop.kinds,
        min_residues=0,
    )
    b = ds.names.index("class b")
    assert ds.feature[b] == 2 and ds.test_f1[b] == 1.0 and ds.test_recall[b] == 1.0
    assert "family a.4.5.0" not in scop.names  # SCOPe automated matches are not families
    sp = split_codes(proteins)
    n_test_h = sum(r["dssp"].count("H") for r, s in zip(proteins, sp, strict=True) if s == 2)
    assert scores.n_test[h] == n_test_h
    assert coverage_summary(scores)["by_category"]["DSSP8"]["covered"] >= 1
    # residue identity comes from the sequence alone: a protein without DSSP keeps it
    bare = [{k: v for k, v in p.items() if k != "dssp"} for p in proteins]
    assert list(build_concepts(bare, descriptions=False)) == ["sequence", "SCOPe"]


def test_dssp_instances_are_runs_within_one_protein():
    proteins = [
        {"id": "a", "sequence": "A" * 8, "dssp": "HHHEEHHL", "split": "valid"},
        {"id": "b", "sequence": "A" * 3, "dssp": "HHH", "split": "test"},
    ]
    t = dssp_concepts(proteins)
    h = t.names.index("DSSP8 H")
    runs = [tuple(r[:3]) for r in t.instances if r[3] == h]
    assert runs == [(0, 0, 3), (0, 5, 7), (1, 0, 3)]
    c3 = t.names.index("DSSP3 C")
    assert [tuple(r[:3]) for r in t.instances if r[3] == c3] == [(0, 7, 8)]
    assert set(t.kinds) == {"range"}


def test_selection_uses_validation_and_scores_on_test():
    # 2 features, 1 concept, 10 rows per split.
    # validation: feature 0 at t=0.5 is perfect; feature 1 is poor.
    # test: feature 0 at t=0.5 gets precision 1/2, recall 1; feature 1 would be perfect.
    concept = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], np.uint8)
    val = np.zeros((10, 2), np.float32)
    val[:2, 0] = 0.9
    val[2:6, 0] = 0.3  # fires at t <= 0.15 only: hurts precision there
    val[:, 1] = 0.1
    test = np.zeros((10, 2), np.float32)
    test[:4, 0] = 0.9
    test[:2, 1] = 0.9
    scaled = np.concatenate([val, test])
    concepts = np.concatenate([concept, concept])[:, None]
    split = np.zeros((20, 2), np.uint8)
    split[:10, 0] = 1
    split[10:, 1] = 1
    counts = count_concepts(scaled, concepts, split)
    scores = select_best(counts, ["x c"], min_residues=3)
    assert scores.feature[0] == 0
    assert scores.threshold[0] == 0.5  # 0.5 is the lowest threshold with validation F1 = 1
    assert scores.val_f1[0] == 1.0
    assert scores.test_precision[0] == 0.5 and scores.test_recall[0] == 1.0
    np.testing.assert_allclose(scores.test_f1[0], 2 / 3)
    np.testing.assert_allclose(scores.test_f1_best_threshold[0], 2 / 3)  # report_metrics' variant
    assert select_best(counts, ["x c"], threshold="test").threshold[0] == 0.0
    assert scores.eligible[0]  # 4 residues > 3 (validation and test pooled, InterPLM's rule)
    assert not select_best(counts, ["x c"], min_residues=4).eligible[0]


def test_feature_best_concepts_split_names_and_errors():
    scaled = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    concepts = np.array([[1, 0], [0, 1], [1, 0]], np.uint8)
    split = np.array([[1, 0], [0, 1], [0, 1]], np.uint8)
    c = count_concepts(scaled, concepts, split)
    best = feature_best_concepts(c, ["a x", "b y"], [0, 1])
    assert best[0][0][:2] == ("a x", 1.0) and best[1][0][:2] == ("b y", 1.0)
    with pytest.raises(ValueError, match="same number of rows"):
        count_concepts(scaled, concepts[:2], split)
    with pytest.raises(ValueError, match="concept names"):
        select_best(c, ["only one"])
    with pytest.raises(ValueError, match="recall"):
        association_metrics(c, recall="domain")
    assert split_name("validation") == "valid" and split_name("test") == "test"
    old = [{"split": "validation"}, {"split": "valid"}, {"split": "train"}, {}]
    assert split_codes(old).tolist() == [1, 1, 0, -1]
    assert domain_concepts([{"sequence": "AA"}]).names == ()


def test_analysis_config_is_validated():
    from jaxsae.interpret.analysis import AnalysisConfig

    assert AnalysisConfig().thresholds == THRESHOLDS and AnalysisConfig().min_residues == 1500
    bads = ({"recall": "domain"}, {"chunk_size": 0}, {"thresholds": (1.5,)}, {"k": 0})
    for bad in (*bads, {"neurons": "raw"}):
        with pytest.raises(ValueError):
            AnalysisConfig(**bad)
    with pytest.raises(TypeError):
        AnalysisConfig(min_domains=3)  # unknown option
