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
from jaxsae.interpret.concepts import domain_concepts, residue_concepts, split_codes


def _proteins(num=12, seed=0):
    """Proteins with random DSSP strings; class b for odd proteins, a for even ones."""
    rng = np.random.default_rng(seed)
    splits = ["train", "validation", "test"]
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
    """d = 3: dim 0 fires (value 1..2) exactly on H, dim 1 is noise, dim 2 fires once in class b."""
    rng = np.random.default_rng(seed)
    acts, index = [], []
    for p, rec in enumerate(proteins):
        n = rec["length"]
        a = np.zeros((n, 3), np.float32)
        is_h = np.array([c == "H" for c in rec["dssp"]])
        a[is_h, 0] = 1 + rng.random(is_h.sum())
        a[:, 1] = rng.random(n)
        if rec["scop"].startswith("b"):
            a[n // 2, 2] = 3.0
        acts.append(a)
        index.append(np.stack([np.full(n, p), np.arange(n)], 1))
    return np.concatenate(acts), np.concatenate(index).astype(np.int32)


def test_counts_match_a_brute_force_loop():
    rng = np.random.default_rng(0)
    scaled = rng.random((40, 3)).astype(np.float32)
    concepts = (rng.random((40, 2)) < 0.4).astype(np.uint8)
    split = np.zeros((40, 2), np.uint8)
    split[np.arange(40), rng.integers(0, 2, 40)] = 1
    split[:5] = 0  # rows of no split
    c = count_concepts(scaled, concepts, split, chunk_size=16)
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


def test_helix_feature_gets_f1_one_for_helix():
    proteins = _proteins()
    acts, index = _activations(proteins)
    feat = neuron_featurizer(None, d=3)  # n0+ = dim 0
    max_act = acts.max(0).tolist() + [0.0, 0.0, 0.0]
    rc = residue_concepts(proteins)
    dc = domain_concepts(proteins, min_count=2, descriptions=False)
    res, dom = associate(
        (acts, index), feat, np.array(max_act), proteins, residue=rc, domain=dc, chunk_size=16
    )
    scores = select_best(res, rc.names, min_positives=1)
    h = scores.names.index("DSSP8 H")
    assert scores.feature[h] == 0 and scores.test_f1[h] == 1.0 and scores.val_f1[h] == 1.0
    assert scores.test_precision[h] == 1.0 and scores.test_recall[h] == 1.0
    assert scores.threshold[h] == 0.0  # lowest threshold among ties
    # the 3-state helix also holds G residues: precision 1, recall < 1
    h3 = scores.names.index("DSSP3 H")
    assert scores.test_precision[h3] == 1.0 and scores.test_recall[h3] < 1.0
    # domain level: feature n2+ fires on one residue of every class-b domain
    ds = select_best(dom, dc.names, min_positives=1)
    b = ds.names.index("class b")
    assert ds.feature[b] == 2 and ds.test_f1[b] == 1.0
    assert "family a.4.5.0" not in dc.names  # SCOPe automated matches are not families
    # positives count only evaluation proteins
    sp = split_codes(proteins)
    n_test_h = sum(r["dssp"].count("H") for r, s in zip(proteins, sp, strict=True) if s == 2)
    assert scores.n_test[h] == n_test_h
    summary = coverage_summary(scores)
    assert summary["by_category"]["DSSP8"]["covered"] >= 1


def test_streaming_equals_in_memory_counts():
    proteins = _proteins(num=9, seed=3)
    acts, index = _activations(proteins, seed=4)
    feat = neuron_featurizer(acts.mean(0))
    f = np.asarray(feat.apply(feat.params, acts))
    max_act = f.max(0)
    rc = residue_concepts(proteins)
    res, _ = associate((acts, index), feat, max_act, proteins, residue=rc, chunk_size=7)
    conc, ok = rc.lookup(index)
    sp = split_codes(proteins)[index[:, 0]]
    mask = np.stack([(sp == 1) & ok, (sp == 2) & ok], 1).astype(np.uint8)
    ref = count_concepts(f / max_act[None, :], conc, mask)
    np.testing.assert_array_equal(res.tp, ref.tp)
    np.testing.assert_array_equal(res.active, ref.active)
    np.testing.assert_array_equal(res.positives, ref.positives)


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
    scores = select_best(count_concepts(scaled, concepts, split), ["x c"], min_positives=2)
    assert scores.feature[0] == 0
    assert scores.threshold[0] == 0.5  # 0.5 is the lowest threshold with validation F1 = 1
    assert scores.val_f1[0] == 1.0
    assert scores.test_precision[0] == 0.5 and scores.test_recall[0] == 1.0
    np.testing.assert_allclose(scores.test_f1[0], 2 / 3)
    assert scores.eligible[0]
    assert not select_best(
        count_concepts(scaled, concepts, split), ["x c"], min_positives=3
    ).eligible[0]


def test_feature_best_concepts_and_errors():
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
