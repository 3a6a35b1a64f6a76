"""``jaxsae extract``: per-residue ESM-2 activations of proteins into activation stores."""

from __future__ import annotations

import argparse
import os

from jaxsae.errors import positive_int
from jaxsae.training.cli import add_process_arguments, join_processes

HELP = (
    "Run ESM-2 (embedded 8M default or a local checkpoint) over proteins (a FASTA file, a "
    "UniProt file or the embedded SCOPe/DSSP set) and store per-residue activations of chosen "
    "layers (resumable)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("proteins")
    src.add_argument("--fasta", help="FASTA file (plain or .gz); default: the embedded dataset")
    src.add_argument(
        "--uniprot",
        help="UniProtKB entries with their features (Swiss-Prot .dat/.txt, UniProt .xml or a "
        "UniProtKB .tsv export with feature columns; plain or .gz): the features become "
        "concepts for jaxsae interpret",
    )
    src.add_argument(
        "--invalid", choices=("error", "unk"), default="error",
        help="FASTA characters outside A-Z: fail (default) or read as X with a warning",
    )  # fmt: skip
    src.add_argument(
        "-n", "--num-proteins", type=positive_int, help="embedded dataset: how many proteins"
    )
    src.add_argument("--max-len", type=positive_int, help="embedded dataset: longest sequence kept")
    src.add_argument(
        "--split", choices=("train", "valid", "test"),
        help="embedded dataset: one split (SCOPe superfamily split); default all",
    )  # fmt: skip
    mod = parser.add_argument_group("model")
    mod.add_argument(
        "--model",
        help="Hugging Face ESM-2 directory (config.json + model.safetensors / pytorch_model.bin) "
        "or fair-esm .pt file; default: the embedded ESM-2 t6 8M",
    )
    mod.add_argument(
        "--layers", type=int, nargs="+",
        help="hidden states to store: 0 = embeddings ... L = last block (negative from the end); "
        "default: 2L/3 (layer 4 of the 8M model)",
    )  # fmt: skip
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, help="output directory (stores in OUT/layer_<l>/)")
    out.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    out.add_argument("--max-tokens-per-batch", type=positive_int, default=4096)
    out.add_argument("--rows-per-shard", type=positive_int, default=65536)
    out.add_argument(
        "--too-long", choices=("crop", "error"), default="crop",
        help="proteins longer than the model's 1022 residues: crop with a warning, or fail",
    )  # fmt: skip
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_process_arguments(parser)


# library keywords named by error messages -> the flags of this command (the sizes are checked
# by argparse: positive_int)
_FLAGS = {
    "invalid='unk'": "--invalid unk",
    "too_long='crop'": "--too-long crop",
    "layers: expected": "--layers: expected",
}


def run(args: argparse.Namespace) -> int:
    from jaxsae.errors import check_output_dir, renamed_options

    check_output_dir(args.out, "--out")
    with renamed_options(_FLAGS):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from jaxsae.errors import InputError
    from jaxsae.protein.extract import ExtractConfig, extract_activations

    if args.fasta and args.uniprot:
        raise ValueError("--fasta and --uniprot: expected one of them, found both")
    join_processes(args)

    if args.model:
        from jaxsae.protein.weights import load_esm2

        model = load_esm2(args.model)
    else:
        from jaxsae.protein.default import load_default_model

        model = load_default_model()
    config = model[0]
    if args.uniprot:
        from jaxsae.protein.uniprot import read_uniprot

        proteins, stats = read_uniprot(args.uniprot)
        print(stats.summary())
        source = args.uniprot
    elif args.fasta:
        from jaxsae.protein.fasta import read_fasta

        if not os.path.isfile(args.fasta):
            raise InputError(f"--fasta {args.fasta}: expected a FASTA file, found no such file")
        proteins = list(read_fasta(args.fasta, invalid=args.invalid))
        if not proteins:
            raise InputError(
                f"--fasta {args.fasta}: expected FASTA records (a '>name' line, then sequence "
                "lines), found none; check the file"
            )
        source = args.fasta
    else:
        from jaxsae.protein.default import load_default_dataset

        proteins = load_default_dataset(args.num_proteins, max_len=args.max_len, split=args.split)
        source = "embedded SCOPe 2.07 / DSSP set (sidechainnet)"
    layers = args.layers if args.layers else [2 * config.num_layers // 3]
    print(
        f"model {config.name}: {config.num_layers} layers, d={config.d_model}; "
        f"{len(proteins)} proteins from {source}; layers {layers}"
    )
    options = ExtractConfig(
        dtype=args.dtype,
        max_tokens_per_batch=args.max_tokens_per_batch,
        rows_per_shard=args.rows_per_shard,
        too_long=args.too_long,
        progress=not args.no_progress,
    )
    stores = extract_activations(proteins, model, layers, args.out, options)
    for layer, store in stores.items():
        print(f"layer {layer}: {store.num_rows} residues x d={store.d} -> {store.path}")
    return 0
