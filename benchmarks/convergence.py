"""Convergence of ISTA, FISTA and FISTA with adaptive restart on a seeded lasso problem.

    python benchmarks/convergence.py [--out DIR]

The same as ``jaxsae bench convergence``; this script also refreshes ``docs/convergence.png``
(the figure in the README). The logic lives in ``jaxsae.bench.run_convergence``.
"""

import argparse
from pathlib import Path

from jaxsae.bench import run_convergence

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    run_convergence(args.out, docs_path=repo / "docs" / "convergence.png", seed=args.seed)
