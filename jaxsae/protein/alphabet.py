"""The amino-acid alphabet: ESM-2 tokenisation and the 26-letter one-hot encoding.

Two encodings of a protein sequence live here:

* **ESM tokens**: the 33-token vocabulary of ESM-2 (``vocab.txt`` of every ESM-2 checkpoint,
  same ids): ``<cls>=0 <pad>=1 <eos>=2 <unk>=3``, the 20 standard amino acids, ``X B U Z O``,
  ``. -``, ``<null_1>=31`` and ``<mask>=32``. A sequence of ``T`` residues becomes
  ``<cls> r_1 … r_T <eos>`` (``T + 2`` tokens). Letters that ESM-2 has no token for (only ``J``)
  become ``<unk>``, as in the Hugging Face tokenizer.
* **One-hot**: a ``(26, T)`` indicator over the 26 letters ``A``–``Z`` (every IUPAC code,
  ambiguous ones such as ``B``, ``Z``, ``J``, ``X`` included), row ``k`` for letter ``chr(65 + k)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "ESM_TOKENS",
    "TOKEN_TO_ID",
    "CLS_ID",
    "PAD_ID",
    "EOS_ID",
    "UNK_ID",
    "MASK_ID",
    "LETTERS",
    "STANDARD_AMINO_ACIDS",
    "check_sequence",
    "tokenize",
    "batch_tokenize",
    "one_hot",
]

#: ESM-2's vocabulary, in id order (``vocab.txt`` of ``facebook/esm2_*``).
ESM_TOKENS: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H",
    "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)  # fmt: skip
TOKEN_TO_ID: dict[str, int] = {t: i for i, t in enumerate(ESM_TOKENS)}
CLS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 32

#: The one-hot alphabet: the 26 letters A–Z (all IUPAC amino-acid codes).
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: The 20 standard amino acids.
STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"

# byte -> ESM id for the 26 upper-case letters (J -> <unk>); -1 elsewhere
_LETTER_TO_ESM = np.full(256, -1, dtype=np.int32)
for _c in LETTERS:
    _LETTER_TO_ESM[ord(_c)] = TOKEN_TO_ID.get(_c, UNK_ID)


def check_sequence(sequence: str, name: str = "sequence") -> str:
    """Return ``sequence`` if it is a non-empty string of upper-case letters ``A``–``Z``.

    Raises:
      ValueError: naming ``name``, the first offending character and its 1-based position.
    """
    if not isinstance(sequence, str):
        raise ValueError(
            f"{name}: expected a string of letters A-Z, found {type(sequence).__name__}"
        )
    if not sequence:
        raise ValueError(f"{name}: expected a non-empty sequence, found an empty one")
    codes = np.frombuffer(sequence.encode("utf-8", "replace"), dtype=np.uint8)
    if len(codes) != len(sequence) or (_LETTER_TO_ESM[codes] < 0).any():
        for i, c in enumerate(sequence):
            if c not in LETTERS:
                raise ValueError(
                    f"{name}: expected upper-case amino-acid letters A-Z, found {c!r} at "
                    f"position {i + 1} of {len(sequence)}"
                )
    return sequence


def tokenize(sequence: str, *, add_special: bool = True) -> np.ndarray:
    """ESM-2 token ids of one sequence.

    Args:
      sequence: upper-case letters ``A``–``Z`` (``T`` residues).
      add_special: wrap in ``<cls>`` … ``<eos>``.

    Returns:
      ``(T + 2,)`` (or ``(T,)`` without specials) int32 ids.

    Examples:
      >>> tokenize("MKV").tolist()
      [0, 20, 15, 7, 2]
    """
    check_sequence(sequence)
    ids = _LETTER_TO_ESM[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]
    if add_special:
        ids = np.concatenate([[CLS_ID], ids, [EOS_ID]]).astype(np.int32)
    return ids


def batch_tokenize(
    sequences: Sequence[str], *, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise and right-pad a batch of sequences.

    Args:
      sequences: ``B`` sequences of letters ``A``–``Z``.
      length: padded length (tokens, ``<cls>``/``<eos>`` included); by default the longest.

    Returns:
      ``tokens (B, length)`` int32 padded with ``<pad>``, and ``mask (B, length)`` bool, true on
      real tokens (``<cls>``, residues, ``<eos>``).

    Raises:
      ValueError: an invalid sequence, or one longer than ``length - 2`` residues.
    """
    if len(sequences) == 0:
        raise ValueError("batch_tokenize: expected at least one sequence, found none")
    ids = [tokenize(s) for s in sequences]
    longest = max(len(t) for t in ids)
    if length is None:
        length = longest
    if longest > length:
        raise ValueError(
            f"batch_tokenize: expected sequences of at most {length - 2} residues, found one of "
            f"{longest - 2}"
        )
    tokens = np.full((len(ids), length), PAD_ID, dtype=np.int32)
    mask = np.zeros((len(ids), length), dtype=bool)
    for i, t in enumerate(ids):
        tokens[i, : len(t)] = t
        mask[i, : len(t)] = True
    return tokens, mask


def one_hot(sequence: str, dtype: type = np.float32) -> np.ndarray:
    """The ``(26, T)`` one-hot encoding of a sequence over the letters ``A``–``Z``.

    Column ``t`` has a single 1 in row ``ord(sequence[t]) - ord("A")``.

    Examples:
      >>> one_hot("AC")[:3]
      array([[1., 0.],
             [0., 0.],
             [0., 1.]], dtype=float32)
    """
    check_sequence(sequence)
    rows = np.frombuffer(sequence.encode("ascii"), dtype=np.uint8).astype(np.intp) - ord("A")
    out = np.zeros((len(LETTERS), len(sequence)), dtype=dtype)
    out[rows, np.arange(len(sequence))] = 1
    return out
