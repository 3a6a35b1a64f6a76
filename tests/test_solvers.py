import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fista_np, ista_np, lasso_objective_np, make_lasso_problem, sklearn_lasso

from jaxsae.kernels.lasso import duality_gap, lasso_objective, lipschitz_constant
from jaxsae.kernels.prox import soft_threshold
from jaxsae.kernels.solvers import (
    default_method,
    fista,
    fista_trace,
    homotopy,
    ista,
    ista_trace,
    pipeline,
    proximal,
    solve_lasso,
    working_set,
)
from jaxsae.kernels.solvers.common import COMPACT_MIN

# one small problem shared by most tests (float64)
X, W, REG = make_lasso_problem(0, B=12, D=16, F=40)
L = float(lipschitz_constant(W))


@pytest.fixture(scope="module")
def optimum():
    """A high-accuracy reference: scikit-learn coordinate descent, then our polished FISTA."""
    sol = fista(X, W, REG, tol=1e-12, max_steps=20000)
    assert bool(sol.converged)
    return sol


# --------------------------------------------------------------------------- objective, gap, L


def test_objective_and_gap_against_numpy(optimum):
    C = np.random.default_rng(1).standard_normal((12, 40)) * 0.1
    np.testing.assert_allclose(lasso_objective(X, W, C, REG), lasso_objective_np(X, W, C, REG))
    gap = np.asarray(duality_gap(X, W, C, REG))
    subopt = lasso_objective_np(X, W, C, REG) - np.asarray(optimum.objective)
    assert np.all(gap >= subopt - 1e-10) and np.all(subopt > 0)  # a certified upper bound
    assert np.all(np.asarray(duality_gap(X, W, optimum.codes, REG)) <= 1e-10)
    rel = duality_gap(X, W, C, REG, relative=True)
    np.testing.assert_allclose(rel, gap / lasso_objective_np(X, W, C, REG))


def test_nonneg_objective_and_gap():
    C = np.abs(np.random.default_rng(2).standard_normal((12, 40))) * 0.1
    sol = fista(X, W, REG, nonneg=True, tol=1e-12, max_steps=20000)
    gap = np.asarray(duality_gap(X, W, C, REG, nonneg=True))
    subopt = lasso_objective_np(X, W, C, REG) - np.asarray(sol.objective)
    assert np.all(gap >= subopt - 1e-10)
    C[0, 0] = -1.0
    assert np.isinf(np.asarray(lasso_objective(X, W, C, REG, nonneg=True))[0])


def test_lipschitz_constant():
    exact = np.linalg.norm(W, 2) ** 2
    assert exact <= L <= 1.02 * exact
    assert float(lipschitz_constant(W)) == L  # deterministic
    assert float(lipschitz_constant(W, safety=1.0)) == pytest.approx(exact, rel=1e-5)


# --------------------------------------------------------------------------- closed forms


def test_orthonormal_dictionary_one_ista_step():
    Q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((16, 16)))
    sol = ista(X, Q, REG, max_steps=1, check_every=1, step_size=1.0)
    np.testing.assert_allclose(sol.codes, soft_threshold(X @ Q.T, REG), atol=1e-12)
    assert int(sol.num_steps) == 1 and bool(sol.converged)
    assert np.all(np.asarray(sol.gap) <= 1e-12)


@pytest.mark.parametrize("nonneg", [False, True])
def test_large_reg_gives_zero_codes(nonneg):
    reg = float(np.max(np.abs(X @ W.T)))
    init = np.ones((12, 40))
    sol = fista(X, W, reg, nonneg=nonneg, init=init, max_steps=2000)
    assert bool(sol.converged)
    np.testing.assert_allclose(sol.codes, 0, atol=1e-8)


def test_zero_reg_undercomplete_is_least_squares():
    Wu = W[:8]  # 8 atoms in dimension 16: full row rank
    sol = fista(X, Wu, 0.0, max_steps=3000, polish=False)
    lstsq = np.linalg.lstsq(Wu.T, X.T, rcond=None)[0].T
    np.testing.assert_allclose(sol.codes, lstsq, atol=1e-6)


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("nonneg", [False, True])
def test_matches_sklearn(nonneg):
    ref = sklearn_lasso(X, W, REG, nonneg=nonneg)
    sol = fista(X, W, REG, nonneg=nonneg, tol=1e-9, max_steps=20000)
    assert bool(sol.converged)
    f_ref = lasso_objective_np(X, W, ref, REG)
    np.testing.assert_allclose(sol.objective, f_ref, rtol=1e-5)
    assert np.all(np.asarray(sol.objective) <= f_ref * (1 + 1e-9))
    np.testing.assert_allclose(sol.codes, ref, atol=1e-4)
    if nonneg:
        assert np.all(np.asarray(sol.codes) >= 0)


def test_per_feature_reg_equals_rescaled_atoms():
    # Σ λ_i |c_i| with atoms W_i is the scalar-λ problem on atoms W_i·λ/λ_i, codes c_i·λ_i/λ.
    lam = REG * np.random.default_rng(4).uniform(0.5, 2.0, 40)
    sol = fista(X, W, lam, tol=1e-10, max_steps=20000)
    scale = REG / lam
    ref = fista(X, W * scale[:, None], REG, tol=1e-10, max_steps=20000)
    np.testing.assert_allclose(sol.codes, ref.codes * scale[None, :], atol=1e-7)


def test_kkt_conditions(optimum):
    C = np.asarray(optimum.codes)
    g = (X - C @ W) @ W.T  # W r = −∇
    assert np.all(np.abs(g) <= REG * (1 + 1e-6))
    on = C != 0
    np.testing.assert_allclose(g[on], REG * np.sign(C[on]), rtol=1e-6)


def test_trace_matches_numpy_reference():
    eta = 1 / L
    for trace_fn, ref_fn in ((ista_trace, ista_np), (fista_trace, fista_np)):
        tr = trace_fn(X, W, REG, num_steps=200, step_size=eta)
        C_ref, obj_ref = ref_fn(X, W, REG, 200, eta)
        np.testing.assert_allclose(tr.codes, C_ref, atol=1e-10)
        np.testing.assert_allclose(tr.objective, obj_ref, rtol=1e-10)


def test_convergence_rates(optimum):
    # Beck & Teboulle (2009): F(c_k) − F* ≤ L‖c0 − c*‖²/(2k) (ISTA), 2L‖c0 − c*‖²/(k+1)² (FISTA)
    k = np.arange(1, 201)[:, None]
    dist = np.sum(np.asarray(optimum.codes) ** 2, axis=1)[None, :]  # c0 = 0
    f_star = np.asarray(optimum.objective)[None, :]
    ista_gap = np.asarray(ista_trace(X, W, REG, num_steps=200, step_size=1 / L).objective)[1:]
    fista_gap = np.asarray(fista_trace(X, W, REG, num_steps=200, step_size=1 / L).objective)[1:]
    ista_gap, fista_gap = ista_gap - f_star, fista_gap - f_star
    assert np.all(ista_gap <= L * dist / (2 * k) + 1e-12)
    assert np.all(fista_gap <= 2 * L * dist / (k + 1) ** 2 + 1e-12)
    assert np.all(np.diff(ista_gap, axis=0) <= 1e-12)  # ISTA is monotone


# --------------------------------------------------------------------------- options


def test_restart_never_needs_more_iterations():
    for seed in (1, 2):
        Xs, Ws, reg = make_lasso_problem(seed, B=12, D=16, F=40)
        plain = fista(Xs, Ws, reg, restart=None, polish=False, check_every=1, max_steps=5000)
        for scheme in ("gradient", "function"):
            rs = fista(Xs, Ws, reg, restart=scheme, polish=False, check_every=1, max_steps=5000)
            assert bool(rs.converged) and bool(plain.converged)
            assert int(rs.num_steps) <= int(plain.num_steps)


def test_polish_and_forms_agree(optimum):
    # (the first configuration is shared with test_restart_never_needs_more_iterations)
    for kw in ({"polish": False, "check_every": 1}, {"form": "gram", "max_support": 2}):
        sol = fista(X, W, REG, tol=1e-10, max_steps=20000, **kw)
        assert bool(sol.converged)
        np.testing.assert_allclose(sol.codes, optimum.codes, atol=1e-7)


def test_warm_start_from_optimum_stops_at_once(optimum):
    sol = fista(X, W, REG, init=optimum.codes, tol=1e-8)
    assert int(sol.num_steps) == 0 and bool(sol.converged)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_and_default_tol(dtype, optimum):
    sol = solve_lasso(X.astype(dtype), W.astype(dtype), REG)
    assert sol.codes.dtype == dtype and sol.objective.dtype == dtype
    assert bool(sol.converged)
    tol = 1e-4 if dtype == np.float32 else 1e-6
    rel = np.asarray(sol.gap) / np.asarray(sol.objective)
    assert np.all(rel <= tol)
    f64 = lasso_objective_np(X, W, np.asarray(sol.codes, np.float64), REG)
    assert np.all(f64 - np.asarray(optimum.objective) <= 2 * tol * f64)


def test_single_input():
    sol = fista(X[0], W, REG, tol=1e-10, max_steps=20000)
    full = fista(X, W, REG, tol=1e-10, max_steps=20000)
    assert sol.codes.shape == (40,) and sol.gap.shape == ()
    np.testing.assert_allclose(sol.codes, full.codes[0], atol=1e-8)


# --------------------------------------------------------------------------- transformations


def test_jit_vmap_and_one_trace_per_configuration():
    opts = {"tol": 1e-9, "max_steps": 5000, "polish": False, "check_every": 1}
    f = jax.jit(lambda X, W, reg: fista(X, W, reg, **opts).codes)
    eager = fista(X, W, REG, **opts).codes
    np.testing.assert_allclose(f(X, W, REG), eager, atol=1e-9)
    # vmap over a stack of problems == a loop
    Xs = np.stack([X, X[::-1]])
    Ws = np.stack([W, W[::-1]])
    batched = jax.vmap(lambda X, W: fista(X, W, REG, **opts).codes)(Xs, Ws)
    for i in range(2):
        np.testing.assert_allclose(batched[i], fista(Xs[i], Ws[i], REG, **opts).codes, atol=1e-8)
    # same shapes and static options, new data / reg / tol / max_steps: no new trace
    before = proximal.solve_core._cache_size()
    for i in range(3):
        fista(X * (1 + i), W, REG * (1 + i), tol=10.0 ** (-6 - i), max_steps=100 + i)
    assert proximal.solve_core._cache_size() - before <= 1


def _directional_fd(f, x, d, eps=1e-6):
    return (f(x + eps * d) - f(x - eps * d)) / (2 * eps)


def test_implicit_gradients_match_finite_differences():
    x0 = X[0]
    probe = np.random.default_rng(5).standard_normal(40)

    def loss(xa, Wa, reg):
        return jnp.sum(fista(xa, Wa, reg, tol=1e-13, max_steps=50000).codes * probe)

    gx, gW, greg = jax.grad(loss, argnums=(0, 1, 2))(x0, W, REG)
    rng = np.random.default_rng(7)
    for _ in range(2):
        dx, dW = rng.standard_normal(x0.shape), rng.standard_normal(W.shape)
        fd_x = _directional_fd(lambda a: float(loss(a, W, REG)), x0, dx)
        fd_W = _directional_fd(lambda a: float(loss(x0, a, REG)), W, dW)
        assert float(np.sum(gx * dx)) == pytest.approx(fd_x, rel=1e-5, abs=1e-7)
        assert float(np.sum(gW * dW)) == pytest.approx(fd_W, rel=1e-5, abs=1e-7)
    fd_reg = _directional_fd(lambda a: float(loss(x0, W, a)), REG, 1.0)
    assert float(greg) == pytest.approx(fd_reg, rel=1e-5, abs=1e-7)

    # the unrolled trace (reverse mode through lax.scan) gives the same gradient once converged
    def unrolled(xa):
        return jnp.sum(fista_trace(xa, W, REG, num_steps=2000, restart="gradient").codes * probe)

    np.testing.assert_allclose(jax.grad(unrolled)(x0), gx, atol=1e-6)


def test_envelope_theorem_dictionary_gradient():
    # ∇_W min_C P(C; W) = ∇_W P(C*; W) with C* held fixed
    def value(Wa):
        C = jax.lax.stop_gradient(fista(X, Wa, REG, tol=1e-13, max_steps=50000).codes)
        return jnp.sum(lasso_objective(X, Wa, C, REG))

    def optimum_value(Wa):
        return float(np.sum(fista(X, Wa, REG, tol=1e-13, max_steps=50000).objective))

    g = jax.grad(value)(W)
    rng = np.random.default_rng(6)
    for _ in range(2):
        d = rng.standard_normal(W.shape)
        fd = (optimum_value(W + 1e-6 * d) - optimum_value(W - 1e-6 * d)) / 2e-6
        assert float(np.sum(g * d)) == pytest.approx(fd, rel=1e-5)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((X[None], W, REG), {}, "rank 1 or 2"),
        ((X, W[0], REG), {}, "rank 2"),
        ((X[:, :5], W, REG), {}, "last dimension D=16"),
        ((X, W, -1.0), {}, ">= 0"),
        ((X, W, np.ones(3)), {}, r"shape \(40,\)"),
        ((np.where(np.eye(12, 16) > 0, np.nan, X), W, REG), {}, "finite"),
        ((X[:0], W, REG), {}, "non-empty"),
        ((X, W, REG), {"init": np.zeros((12, 3))}, r"C: expected shape \(12, 40\)"),
        ((X, W, REG), {"step_size": -1.0}, "step_size"),
        ((X, W, REG), {"restart": "sometimes"}, "restart"),
        ((X, W, REG), {"tol": -1.0}, "tol"),
    ],
)
def test_bad_inputs_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fista(*args, **kwargs)


def test_bad_inputs_raise_elsewhere():
    with pytest.raises(ValueError, match="rank 2"):
        lipschitz_constant(W[0])
    with pytest.raises(ValueError, match="num_steps"):
        fista_trace(X, W, REG, num_steps=-1)
    with pytest.raises(ValueError, match="C: expected shape"):
        duality_gap(X, W, np.zeros((12, 41)), REG)


# --------------------------------------------------------------------------- command line


def test_cli_solve_fills_the_compile_cache(tmp_path):
    import os
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", X.astype(np.float32))
    np.save(tmp_path / "w.npy", W.astype(np.float32))
    cache = tmp_path / "cache"
    args = [str(tmp_path / "x.npy"), str(tmp_path / "w.npy"), "--reg", str(REG)]
    args += ["-o", str(tmp_path / "c.npy"), "--compile-cache", str(cache)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-m", "jaxsae", "solve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert any(cache.iterdir())


def test_compile_cache_dir(monkeypatch, tmp_path):
    from jaxsae.solve_cli import CACHE_ENV, compile_cache_dir

    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir(None) == tmp_path / "jaxsae" / "jax"
    assert compile_cache_dir("off") is None
    monkeypatch.setenv(CACHE_ENV, "0")
    assert compile_cache_dir(None) is None
    assert compile_cache_dir(str(tmp_path / "c")) == tmp_path / "c"


def test_cli_solve(tmp_path, capsys):
    from jaxsae import cli

    np.save(tmp_path / "x.npy", X.astype(np.float32))
    np.save(tmp_path / "w.npy", W.astype(np.float32))
    out = tmp_path / "codes.npy"
    rc = cli.main(
        [
            "solve",
            str(tmp_path / "x.npy"),
            str(tmp_path / "w.npy"),
            "--reg",
            str(REG),
            "-o",
            str(out),
            "--batch-size",
            "12",
            "--compile-cache",
            "off",
        ]
    )
    assert rc == 0
    assert "converged: True" in capsys.readouterr().out
    codes = np.load(out)
    ref = fista(X.astype(np.float32), W.astype(np.float32), REG)
    np.testing.assert_allclose(codes, ref.codes, atol=1e-6)
    assert (
        cli.main(
            [
                "solve",
                str(tmp_path / "x.npy"),
                str(tmp_path / "w.npy"),
                "--reg",
                "-1",
                "-o",
                str(out),
            ]
        )
        == 2
    )


def test_compacted_batch_matches_reference():
    # a batch of >= COMPACT_MIN samples is solved in blocks that shrink as samples finish
    Xb, Wb, reg = make_lasso_problem(8, B=COMPACT_MIN + 44, D=16, F=40)
    # (the static options of test_restart_never_needs_more_iterations: no polish to compile)
    sol = fista(Xb, Wb, reg, tol=1e-10, max_steps=20000, polish=False, check_every=1)
    assert bool(sol.converged)
    assert np.all(np.asarray(sol.gap) <= 1e-10 * np.asarray(sol.objective))
    f = lasso_objective_np(Xb, Wb, sol.codes, reg)
    np.testing.assert_allclose(sol.objective, f)
    ref = sklearn_lasso(Xb, Wb, reg)
    assert np.all(f <= lasso_objective_np(Xb, Wb, ref, reg) * (1 + 1e-10))
    np.testing.assert_allclose(sol.codes, ref, atol=1e-5)


# --------------------------------------------------------------------------- homotopy warm start


def _check_optimal(sol, Xp, Wp, reg, tol, nonneg=False, ref=None):
    """Certified, KKT on the float64 residual, and as good as ``ref`` codes (default:
    scikit-learn's)."""
    C = np.asarray(sol.codes, np.float64)
    assert bool(sol.converged)
    assert np.all(np.asarray(sol.gap) <= tol * np.asarray(sol.objective))
    g = (Xp - C @ Wp) @ Wp.T
    on = C != 0
    slack = 1e-3 if sol.codes.dtype == np.float32 else 1e-6
    if nonneg:
        assert np.all(C >= 0) and np.all(g <= reg * (1 + slack))
    else:
        assert np.all(np.abs(g) <= reg * (1 + slack))
    np.testing.assert_allclose(g[on], reg * (1.0 if nonneg else np.sign(C[on])), rtol=slack)
    f = lasso_objective_np(Xp, Wp, C, reg)
    ref = sklearn_lasso(Xp, Wp, reg, nonneg=nonneg) if ref is None else np.asarray(ref)
    f_ref = lasso_objective_np(Xp, Wp, ref, reg)
    assert np.all(f <= f_ref * (1 + 1e-6))


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_homotopy_matches_iterations_and_sklearn(dtype, nonneg):
    # the default path (homotopy, then iterations for what it does not certify) against the
    # iterations alone, on a batch large enough to be compacted
    Xb, Wb, reg = make_lasso_problem(3, B=COMPACT_MIN + 20, D=24, F=64)
    tol = 1e-6 if dtype == np.float32 else 1e-10
    args = (Xb.astype(dtype), Wb.astype(dtype), reg)
    sol = solve_lasso(*args, nonneg=nonneg, tol=tol)
    assert sol.codes.dtype == dtype
    _check_optimal(sol, Xb, Wb, reg, tol, nonneg)
    its = fista(*args, nonneg=nonneg, tol=tol, max_steps=20000, homotopy=False)
    atol = 1e-4 if dtype == np.float32 else 1e-7
    np.testing.assert_allclose(sol.codes, its.codes, atol=atol)


def test_homotopy_grows_its_active_set_slots():
    # supports larger than the first block's 32 slots: the samples move to 64 slots
    Xb, Wb, reg = make_lasso_problem(4, B=40, D=64, F=128, nnz=(40, 60), reg_frac=0.01)
    *_, certified, kinks = homotopy.follow_paths(
        jnp.asarray(Xb),
        jnp.asarray(Wb),
        jnp.full((128,), reg),
        1e-10,
        nonneg=False,
        max_slots=64,
        max_kinks=1000,
    )
    assert np.all(certified) and kinks > 32
    sol = solve_lasso(Xb, Wb, reg, tol=1e-10)
    assert np.max(np.sum(np.asarray(sol.codes) != 0, axis=1)) > 32
    # (scikit-learn's coordinate descent does not converge on these supports)
    ref = fista(Xb, Wb, reg, tol=1e-12, max_steps=50000, homotopy=False)
    _check_optimal(sol, Xb, Wb, reg, 1e-10, ref=ref.codes)


@pytest.mark.parametrize("rows_per_dim, cache_bytes", [(0.0, 1 << 20), (4.0, 1 << 20), (4.0, 0)])
def test_homotopy_without_the_gram_matrix(monkeypatch, rows_per_dim, cache_bytes):
    # Gram rows and the refinement's Gram formed from the atoms (a dictionary over the budget),
    # against G's rows, with the direction from G's rows (4) or from the atoms' sum and one
    # product with W (0, or a G taken as out of cache: ROWS_PER_DIM_FAR)
    monkeypatch.setattr(homotopy, "ROWS_PER_DIM", rows_per_dim)
    monkeypatch.setattr(homotopy, "ROWS_CACHE_BYTES", cache_bytes)
    monkeypatch.setattr(homotopy, "ROWS_PER_DIM_FAR", 0.0)
    jax.clear_caches()  # (the value is read when the path is traced)
    Xb, Wb, reg = make_lasso_problem(7, B=20, D=16, F=48)
    args = (jnp.asarray(Xb), jnp.asarray(Wb), jnp.full((48,), reg), 1e-10)
    opts = dict(nonneg=False, max_slots=16, max_kinks=200)
    with_g = homotopy.follow_paths(*args, **opts)
    without = homotopy.follow_paths(*args, **opts, G=homotopy.Grams(None, None))
    jax.clear_caches()
    assert np.all(with_g[3]) and np.all(without[3])
    np.testing.assert_allclose(without[0], with_g[0], atol=1e-10)


def test_full_paths_in_concurrent_parts_match_one_part(monkeypatch):
    # the paths over the whole dictionary in parts on a thread pool give the codes of one part
    Xb, Wb, reg = make_lasso_problem(4, B=40, D=16, F=48)
    args = (jnp.asarray(Xb), jnp.asarray(Wb), jnp.full((48,), reg), 1e-10)
    monkeypatch.setattr(pipeline, "host_workers", lambda: 1)
    one = pipeline._full_paths(*args, nonneg=False)
    monkeypatch.setattr(pipeline, "host_workers", lambda: 3)
    monkeypatch.setattr(pipeline, "PATH_PART_MIN", 8)
    monkeypatch.setattr(pipeline, "PATH_CHUNK", 16)  # 3 parts, 3 workers
    parts = pipeline._full_paths(*args, nonneg=False)
    assert np.all(one[3]) and np.all(parts[3])
    np.testing.assert_allclose(parts[0], one[0], atol=1e-10)
    np.testing.assert_allclose(parts[1], one[1], atol=1e-12)


def test_gram_rows_sum_is_the_sum_of_the_slots_rows():
    # the direction over the whole dictionary from G: Σ_k d_k G[idx_k], every slot counted
    rng = np.random.default_rng(3)
    G = rng.standard_normal((40, 40))
    idx = rng.integers(0, 40, (6, 5))
    d = rng.standard_normal((6, 5))
    a = homotopy._gram_rows_sum(jnp.asarray(G), jnp.asarray(idx), jnp.asarray(d))
    np.testing.assert_allclose(a, np.einsum("bk,bkf->bf", d, G[idx]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nonneg", [False, True])
def test_path_certificates_from_the_gram_match_the_dense_products(nonneg):
    # the codes and gaps from W x and the rows of W Wᵀ in float64 (float32 paths) match those
    # from the residuals' dense products
    Xb, Wb, reg = make_lasso_problem(8, B=48, D=32, F=96)
    X, W = jnp.asarray(Xb, jnp.float32), jnp.asarray(Wb, jnp.float32)
    G = homotopy.dictionary_gram(W)
    assert homotopy.certificate_gram(W, 48) is None  # (too few samples for it to pay)
    G_hi = homotopy.certificate_gram(W, 4 * 96)
    assert G_hi is not None and G_hi.dtype == jnp.float64
    args = (X, W, jnp.full((96,), reg, jnp.float32), 1e-6)
    opts = dict(nonneg=nonneg, max_slots=32, max_kinks=200)
    dense = homotopy.follow_paths(*args, **opts, G=homotopy.Grams(G, None))
    sums = homotopy.follow_paths(*args, **opts, G=homotopy.Grams(G, G_hi))
    assert np.all(sums[3]) and np.array_equal(sums[3], dense[3])
    np.testing.assert_allclose(sums[0], dense[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sums[1], dense[1], rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(sums[2], dense[2], rtol=1e-9)
    # KKT of the float32 problem, in float64
    X64, W64, C = (np.asarray(a, np.float64) for a in (X, W, sums[0]))
    g = (X64 - C @ W64) @ W64.T
    assert np.all((g if nonneg else np.abs(g)) <= reg * (1 + 1e-4))
    assert not nonneg or np.all(C >= 0)
    on = C != 0
    np.testing.assert_allclose(g[on], reg * (1.0 if nonneg else np.sign(C[on])), rtol=1e-4)


def test_homotopy_hands_over_to_the_iterations():
    # a repeated atom makes the active set's Gram singular: the homotopy stops for the samples
    # that need both copies and the iterations finish them; a zero λ turns the homotopy off
    Xb, Wb, reg = make_lasso_problem(5, B=30, D=16, F=40)
    Wd = np.concatenate([Wb, Wb[:1]])
    lam = np.full((41,), reg)
    *_, certified, _ = homotopy.follow_paths(
        jnp.asarray(Xb),
        jnp.asarray(Wd),
        jnp.asarray(lam),
        1e-10,
        nonneg=False,
        max_slots=16,
        max_kinks=1000,
    )
    assert not np.all(certified)
    sol = solve_lasso(Xb, Wd, lam, tol=1e-10)
    assert int(sol.num_steps) > 0
    _check_optimal(sol, Xb, Wd, reg, 1e-10)
    lam[3] = 0
    sol = solve_lasso(Xb, Wd, lam, tol=1e-10)
    ref = fista(Xb, Wd, lam, tol=1e-10, homotopy=False)
    np.testing.assert_allclose(sol.codes, ref.codes)


# --------------------------------------------------------------------------- working sets


@pytest.mark.parametrize(("dtype", "nonneg"), [(np.float64, False), (np.float32, True)])
def test_working_sets_match_sklearn(monkeypatch, dtype, nonneg):
    # small working sets (8 atoms of 96), so that rounds add violators and sets grow; then the
    # default pipeline with working sets on, against scikit-learn and the iterations
    monkeypatch.setattr(working_set, "MIN_SIZE", 8)
    Xb, Wb, reg = make_lasso_problem(6, B=24, D=20, F=96, nnz=(3, 9))
    tol = 1e-6 if dtype == np.float32 else 1e-10
    args = (jnp.asarray(Xb, dtype), jnp.asarray(Wb, dtype), jnp.full((96,), reg, dtype))
    res = working_set.solve_working_sets(*args, tol, nonneg=nonneg)
    assert res.certified.all() and res.kinks > 0
    assert np.all(res.gap <= tol * res.objective)
    assert np.max(np.sum(res.codes != 0, axis=1)) > 4  # some sets had to grow past 8
    monkeypatch.setattr(working_set, "MIN_ATOMS", 0)
    sol = solve_lasso(Xb.astype(dtype), Wb.astype(dtype), reg, nonneg=nonneg, tol=tol)
    _check_optimal(sol, Xb, Wb, reg, tol, nonneg)
    np.testing.assert_allclose(sol.codes, res.codes, atol=1e-6 if dtype == np.float32 else 1e-9)


def test_working_sets_in_small_chunks_match(monkeypatch):
    # chunks of 1-2 samples (the last one padded), three at once on a thread pool, and the
    # groups merged between rounds give the same certified codes as one chunk per group
    monkeypatch.setattr(working_set, "MIN_SIZE", 8)
    Xb, Wb, reg = make_lasso_problem(8, B=13, D=20, F=96, nnz=(3, 9))
    args = (jnp.asarray(Xb), jnp.asarray(Wb), jnp.full((96,), reg))
    monkeypatch.setattr(working_set, "host_workers", lambda: 1)
    ref = working_set.solve_working_sets(*args, 1e-10, nonneg=False)
    monkeypatch.setattr(working_set, "GRAM_ELEMENTS", 2 * 8 * 8)
    monkeypatch.setattr(working_set, "MIN_CHUNK", 1)
    monkeypatch.setattr(working_set, "host_workers", lambda: 3)
    res = working_set.solve_working_sets(*args, 1e-10, nonneg=False)
    assert working_set._chunk(8, 20, 13) == 2 and working_set._chunk(16, 20, 13) == 1
    assert res.certified.all() and ref.certified.all()
    np.testing.assert_allclose(res.codes, ref.codes, atol=1e-9)


@pytest.mark.parametrize("nonneg", [False, True])
def test_working_sets_extended_match(monkeypatch, nonneg):
    # rounds that extend their sets (inputs "wide", sets of 16 > √96 atoms) certify the same
    # codes as rounds that do not, more of them in the first round
    monkeypatch.setattr(working_set, "MIN_SIZE", 8)
    monkeypatch.setattr(working_set, "WIDE", 16)
    Xb, Wb, reg = make_lasso_problem(9, B=24, D=20, F=96, nnz=(2, 4))
    args = (jnp.asarray(Xb), jnp.asarray(Wb), jnp.full((96,), reg))
    first = []
    real = working_set._chunked_round

    def spy(*a, **k):
        out = real(*a, **k)
        first.append(int(out[2].sum()))  # certified by this round
        return out

    monkeypatch.setattr(working_set, "_chunked_round", spy)
    monkeypatch.setattr(working_set, "EXTEND", 0)
    ref = working_set.solve_working_sets(*args, 1e-10, nonneg=nonneg)
    plain, first[:] = first[0], []
    monkeypatch.setattr(working_set, "EXTEND", 4)
    assert working_set._extend(16, 96, 20) == 4 and working_set._extend(8, 96, 20) == 0
    res = working_set.solve_working_sets(*args, 1e-10, nonneg=nonneg)
    assert res.certified.all() and ref.certified.all()
    np.testing.assert_allclose(res.codes, ref.codes, atol=1e-9)
    assert first[0] > plain


@pytest.mark.parametrize("nonneg", [False, True])
def test_warm_round_continues_the_path(nonneg):
    # a round on 8 or 16 atoms (stopped when its 4 or 8 slots fill, or at λ), then a round on
    # all 96 started from its active set: the codes of a round on all 96 from c = 0; the same
    # from a round stopped after 3 kinks; started from its own result, a round is over in one
    # kink
    Xb, Wb, reg = make_lasso_problem(10, B=8, D=20, F=96, nnz=(3, 9))
    X, lam = np.asarray(Xb), jnp.full((96,), reg)
    W = jnp.asarray(Wb)
    everything = np.tile(np.arange(96), (8, 1))

    def round_(sets, corr, warm, max_kinks=4096):
        out = working_set._chunked_round(
            X, working_set._atoms(W, W, lam), sets, corr, warm, tol=-1.0, nonneg=nonneg,
            k_next=96, max_kinks=max_kinks,
        )  # fmt: skip
        return out[:2] + out[3:]  # (tol -1: nothing certified, every sample's next set)

    def codes_of(out):
        return working_set.dense_codes(out[6], 96)

    corr = X @ Wb.T
    ref = round_(everything, corr, None)
    assert ref[2].all()
    for k in (8, 16):
        first = np.argsort(-np.abs(corr), axis=1)[:, :k]
        out = round_(first, np.take_along_axis(corr, first, 1), None)
        assert (out[6].occ.sum(axis=1) == k // 2).any()  # some paths stopped short of λ
        rows = np.arange(8)
        group = (rows, out[3], out[4], 96, out[6], rows)
        [(rows, sets, nxt_corr, _, warm, _)] = working_set._merge([group], 20, np.zeros(8))
        out = round_(sets, nxt_corr, warm)
        codes, done = codes_of(out), out[2]
        assert done.all()
        np.testing.assert_allclose(codes[np.argsort(rows)], codes_of(ref), atol=1e-10)
    # stopped after 3 kinks: the atom that joined at the last one is active with code 0
    out = round_(everything, corr, None, max_kinks=3)
    assert np.any(out[6].occ & (out[6].codes == 0))
    out = round_(out[3], out[4], out[6])
    codes, done = codes_of(out), out[2]
    assert done.all()
    np.testing.assert_allclose(codes, codes_of(ref), atol=1e-10)
    again = round_(ref[3], ref[4], ref[6])
    assert again[-1] == 1
    np.testing.assert_allclose(codes_of(again), codes_of(ref), atol=1e-12)


@pytest.mark.parametrize("nonneg", [False, True])
def test_round_extends_its_working_sets(nonneg):
    # a warm round on 16 atoms whose paths end at their restricted solutions: with `few`, a
    # sample with violators off its set and slots to spare goes on at once on the set extended
    # by its 4 worst (lax.top_k of the ratios): the codes of a round from c = 0 on that set;
    # without `few` (all samples, or the first one), or with nothing to add, the codes stay
    # those of the set
    Xb, Wb, reg = make_lasso_problem(12, B=16, D=20, F=96, nnz=(3, 9))
    X, W, lam = jnp.asarray(Xb), jnp.asarray(Wb), jnp.full((96,), reg)
    atoms = working_set._atoms(W, W, lam)
    mk = jnp.asarray(4096, jnp.int32)

    def round_(sets, corr, warm, few, extend=0):
        sets = jnp.asarray(sets)
        return working_set._round(
            X, atoms, sets, jnp.asarray(corr), mk, warm, few, K=16, nonneg=nonneg, extend=extend
        )

    def codes_of(out):
        return working_set.dense_codes(working_set.Warm(*map(np.asarray, out[4])), 96)

    def ratios(codes, sets):
        g = (Xb - codes @ Wb) @ Wb.T
        on = np.zeros((16, 96), bool)
        np.put_along_axis(on, sets, True, 1)
        return jnp.where(on, -1, working_set._ratios(jnp.asarray(g), lam, nonneg))

    S = np.argsort(-np.abs(Xb @ Wb.T), axis=1)[:, :16]
    cold = round_(S, np.take_along_axis(Xb @ Wb.T, S, 1), None, None)
    assert np.asarray(cold[2]).all()
    base = codes_of(cold)
    corr = np.take_along_axis((Xb - base @ Wb) @ Wb.T, S, 1)
    warm = cold[4]
    plain = round_(S, corr, warm, jnp.zeros((16,), bool), extend=4)
    np.testing.assert_allclose(codes_of(plain), base, atol=1e-12)
    few = np.arange(16) > 0  # (not the first sample)
    out = round_(S, corr, warm, jnp.asarray(few), extend=4)
    score = ratios(base, S)
    S2 = np.concatenate([S, np.asarray(jax.lax.top_k(score, 4)[1])], axis=1)
    ref = round_(S2, np.take_along_axis(Xb @ Wb.T, S2, 1), None, None)
    room = np.asarray(warm.occ).sum(axis=1) + 4 <= 16
    ext = few & room & (np.max(np.asarray(score), axis=1) > 1)
    assert ext.sum() >= 8
    np.testing.assert_allclose(codes_of(out)[ext], codes_of(ref)[ext], atol=1e-9)
    np.testing.assert_allclose(codes_of(out)[~ext], base[~ext], atol=1e-12)
    assert np.asarray(out[2]).all() and int(out[3]) > int(plain[3])


@pytest.mark.parametrize("nonneg", [False, True])
def test_round_certificate_bounds_the_float64_gap(nonneg):
    # float32 paths: the certificate (the correlations off the active set from a float32
    # product and its rounding bound) is an upper bound of the float64 duality gap, and equal
    # to it, as is the certificate recomputed in float64 (_exact_gap)
    Xb, Wb, reg = make_lasso_problem(11, B=16, D=20, F=96, nnz=(3, 9))
    X, W = Xb.astype(np.float32), Wb.astype(np.float32)
    lam = jnp.full((96,), reg, jnp.float32)
    sets = np.tile(np.arange(96), (16, 1))
    atoms = working_set._atoms(jnp.asarray(W), jnp.asarray(W, jnp.float64), lam)
    (R, sums, done, active), _ = working_set._paths(
        X, atoms, sets, X @ W.T, None, nonneg=nonneg, max_kinks=4096
    )
    assert done.all()
    warm = working_set.Warm(*map(jnp.asarray, active))
    args = (jnp.asarray(R), jnp.asarray(sums.T))
    gap, low, *_ = working_set._certify(
        *args, atoms.W, lam, atoms.spread, warm, jnp.asarray(done), nonneg=nonneg
    )
    gap, low = np.asarray(gap), np.asarray(low)
    exact = working_set._exact_gap(*args, jnp.asarray(W, jnp.float64), lam, warm, nonneg=nonneg)
    C = working_set.dense_codes(active, 96).astype(np.float64)
    ref = np.asarray(duality_gap(X.astype(np.float64), W.astype(np.float64), C, reg, nonneg=nonneg))
    # the float32 certificate brackets the float64 gap (at solutions: the gap grows with the
    # largest ratio), and equals it where the rounding bound does not decide
    assert np.all(gap >= ref * (1 - 1e-6))
    assert np.all(low <= ref * (1 + 1e-6) + 1e-12)
    np.testing.assert_allclose(exact, ref, rtol=1e-5, atol=1e-12)
    same = gap == low
    assert same.any()
    np.testing.assert_allclose(gap[same], ref[same], rtol=1e-5)


def test_working_sets_with_the_dictionary_gram_match(monkeypatch):
    # the sets' Gram rows gathered from W Wᵀ: the same codes as formed from the sets' atoms
    monkeypatch.setattr(working_set, "MIN_SIZE", 8)
    Xb, Wb, reg = make_lasso_problem(8, B=13, D=20, F=96, nnz=(3, 9))
    args = (jnp.asarray(Xb), jnp.asarray(Wb), jnp.full((96,), reg))
    ref = working_set.solve_working_sets(*args, 1e-10, nonneg=False)
    used, pays = [], working_set._gram_pays
    monkeypatch.setattr(working_set, "_gram_pays", lambda n, k, W: used.append(k) or True)
    res = working_set.solve_working_sets(*args, 1e-10, nonneg=False)
    assert used == [8] and res.certified.all() and ref.certified.all()
    np.testing.assert_allclose(res.codes, ref.codes, atol=1e-9)

    # W Wᵀ when it fits in GRAM_BYTES and a round would form as many Gram entries
    def dictionary(F):
        return jax.ShapeDtypeStruct((F, 8), jnp.float32)

    assert pays(1024, 512, dictionary(10_240)) and not pays(1024, 128, dictionary(10_240))
    assert not pays(1 << 14, 512, dictionary(20_000))


def test_working_sets_hand_over_to_the_iterations(monkeypatch):
    # one round only: what it does not certify goes on to FISTA + restart + polish
    monkeypatch.setattr(working_set, "MIN_SIZE", 8)
    monkeypatch.setattr(working_set, "MIN_ATOMS", 0)
    Xb, Wb, reg = make_lasso_problem(7, B=24, D=20, F=96, nnz=(3, 9))
    res = working_set.solve_working_sets(
        jnp.asarray(Xb), jnp.asarray(Wb), jnp.full((96,), reg), 1e-10, nonneg=False, rounds=1
    )
    assert not res.certified.all()
    _check_optimal(solve_lasso(Xb, Wb, reg, tol=1e-10), Xb, Wb, reg, 1e-10)


# --------------------------------------------------------------------------- accelerators


def test_default_method_per_backend():
    assert default_method("cpu") == "homotopy"
    assert default_method("gpu") == "fista" and default_method("tpu") == "fista"


def test_accelerator_default_runs_fista_on_cpu(monkeypatch):
    # the method the default call picks on GPU/TPU, run here: FISTA + restart + polish
    from jaxsae.kernels.solvers import api

    monkeypatch.setattr(api, "default_method", lambda backend=None: "fista")
    sol = solve_lasso(X, W, REG, tol=1e-10)
    assert int(sol.num_steps) % 10 == 0  # whole blocks of iterations between gap checks
    ref = fista(X, W, REG, tol=1e-10, homotopy=True)
    _check_optimal(sol, X, W, REG, 1e-10, ref=ref.codes)
    np.testing.assert_allclose(sol.codes, ref.codes, atol=1e-8)


def test_polish_without_the_gram_matrix(monkeypatch):
    # above the Gram budget the polish forms each support's Gram block from its atoms
    monkeypatch.setattr(proximal, "GRAM_BUDGET", 0)
    Xb, Wb, reg = make_lasso_problem(8, B=10, D=12, F=44)  # a shape of its own: a new trace
    sol = fista(Xb, Wb, reg, tol=1e-10, homotopy=False)
    _check_optimal(sol, Xb, Wb, reg, 1e-10)


# --------------------------------------------------------------------------- options, step size


def test_iteration_options_are_validated_static_config():
    from jaxsae.kernels.solvers.common import IterOptions

    opts = IterOptions(nonneg=True, max_support=8)
    assert opts == IterOptions(nonneg=True, max_support=8) and hash(opts) == hash(
        IterOptions(nonneg=True, max_support=8)
    )
    assert IterOptions(accel=False).restart is None  # ISTA has no momentum to restart
    for bad, match in (
        (dict(form="sparse"), "form"),
        (dict(restart="sometimes"), "restart"),
        (dict(check_every=0), "check_every"),
        (dict(max_support=0), "max_support"),
    ):
        with pytest.raises(ValueError, match=match):
            IterOptions(**bad)
    with pytest.raises(ValueError, match="check_every"):
        fista(X, W, REG, check_every=0)
    with pytest.raises(ValueError, match="form"):
        ista(X, W, REG, form="sparse")


def test_default_step_from_the_gram_factor():
    # a wide dictionary's 1/L comes from the D x D Cholesky factor of Wᵀ W: the same ‖W‖₂²
    from jaxsae.kernels.solvers.common import default_step

    Ww = np.random.default_rng(3).standard_normal((64, 8))
    exact = np.linalg.norm(Ww, 2) ** 2
    L_wide = 1 / float(default_step(jnp.asarray(Ww), jnp.float64))
    assert exact <= L_wide <= 1.011 * exact
    np.testing.assert_allclose(L_wide, float(lipschitz_constant(Ww)), rtol=1e-6)
    low = np.repeat(Ww[:, :1], 8, axis=1)  # rank 1: no Cholesky factor, the power iteration
    L_low = 1 / float(default_step(jnp.asarray(low), jnp.float64))
    assert np.linalg.norm(low, 2) ** 2 <= L_low <= 1.011 * np.linalg.norm(low, 2) ** 2
    # under jit the dictionary is a tracer: the power iteration on W itself, the same norm
    L_traced = float(jax.jit(lambda w: lipschitz_constant(w, safety=1.0))(jnp.asarray(Ww)))
    np.testing.assert_allclose(L_traced, exact, rtol=1e-5)


def test_working_sets_do_not_repeat_a_round():
    sets = np.array([[3, 1, 2], [4, 5, 6]])
    nxt = np.array([[1, 2, 3], [4, 5, 7]])
    assert working_set._unchanged(sets, nxt).tolist() == [True, False]


def test_working_set_selection_splits_the_best_first():
    # a block large enough for the host selection (row_top_k): the same atoms as lax.top_k, and
    # the first k of the 2k are the k best (the support's atoms, scored highest, among them)
    from jaxsae.kernels.row_select import HOST_SELECT_MIN

    n, F, k = 16, 4096, 32
    assert n * F >= HOST_SELECT_MIN
    rng = np.random.default_rng(4)
    G = jnp.asarray(rng.standard_normal((n, F)), jnp.float32)
    C = jnp.zeros((n, F), jnp.float32).at[:, :5].set(1.0)
    reg = jnp.full((F,), 3.0, jnp.float32)  # about 11 violators per row
    scores = working_set._scores(working_set._ratios(G, reg, False), C != 0)
    atom = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (n, 5))
    sets, corr, viol = working_set._next_sets(
        G, reg, atom, jnp.ones((n, 5), bool), None, k_next=2 * k, k=k, nonneg=False
    )
    sets = np.asarray(sets)
    ref = np.asarray(jax.lax.top_k(scores, 2 * k)[1])
    np.testing.assert_array_equal(corr, np.take_along_axis(np.asarray(G), sets, 1))
    # the violators among the chosen: all |g| > λ off the active set (fewer than 2k − 5 here)
    want = np.sum((np.abs(np.asarray(G)) > 3) & (np.asarray(C) == 0), axis=1)
    assert np.all((want > 0) & (want < 2 * k - 5))
    np.testing.assert_array_equal(viol, want)
    assert np.array_equal(np.sort(sets, axis=1), np.sort(ref, axis=1))
    assert np.array_equal(np.sort(sets[:, :k], axis=1), np.sort(ref[:, :k], axis=1))
    assert np.all(np.sort(sets[:, :k], axis=1)[:, :5] == np.arange(5))


def _wrong_sign_problem():
    """Three slots whose equations give the third code a sign opposite to its slot's."""
    rng = np.random.default_rng(5)
    W_A = rng.standard_normal((3, 12))
    G = W_A @ W_A.T
    lam, sign = np.full(3, 0.1), np.ones(3)
    x = W_A.T @ (np.array([1.0, 0.8, -0.05]) + np.linalg.solve(G, lam * sign))
    return W_A, G, lam, sign, x


def test_refinement_drops_a_code_of_the_wrong_sign():
    # the equations on three slots give the third code a sign opposite to its slot's: it
    # leaves, and the codes are the solution on the other two (the inverse Gram downdated)
    W_A, G, lam, sign, x = _wrong_sign_problem()
    args = [jnp.asarray(a[None]) for a in (x, W_A, lam, sign, np.zeros(3))]
    cs, occ, H = homotopy.refine_active(
        *args,
        jnp.ones((1, 3), bool),
        jnp.asarray(np.linalg.inv(G)[None]),
        jnp.ones((1,), bool),
        steps=2,
    )
    expect = np.linalg.solve(G[:2, :2], W_A[:2] @ x - lam[:2])
    assert occ.tolist() == [[True, True, False]]
    np.testing.assert_allclose(cs[0], [*expect, 0], atol=1e-10)
    # the inverse Gram of the slots still occupied, zero in the left slot's row and column
    np.testing.assert_allclose(H[0, :2, :2], np.linalg.inv(G[:2, :2]), atol=1e-10)
    assert not np.any(H[0, 2]) and not np.any(H[0, :, 2])


def test_refinement_on_the_gram_matches_the_atoms():
    # the same problem as above from the products at c = 0 and the Gram of the slots
    W_A, G, lam, sign, x = _wrong_sign_problem()
    c_ref = np.array([0.9, 0.7, 0.1])
    E = W_A @ (x - c_ref @ W_A)
    occ, done, H = jnp.ones((1, 3), bool), jnp.ones((1,), bool), np.linalg.inv(G)[None]
    cs, occ_g, _ = homotopy.refine_on_gram(
        *(jnp.asarray(a[None]) for a in (E, G, lam, sign, c_ref)), occ, H, done, steps=2
    )
    ref, occ_a, _ = homotopy.refine_active(
        *(jnp.asarray(a[None]) for a in (x, W_A, lam, sign, c_ref)), occ, H, done, steps=2
    )
    assert occ_g.tolist() == occ_a.tolist() == [[True, True, False]]
    np.testing.assert_allclose(cs, ref, atol=1e-10)


def test_argmin_is_the_first_minimum():
    t = jnp.asarray(
        [[3.0, 1.0, 1.0, 2.0], [jnp.inf] * 4, [2.0, jnp.nan, 0.0, jnp.nan], [5.0, 4.0, 3.0, 3.0]]
    )
    i, m = homotopy._argmin(t)
    assert i.tolist() == np.asarray(jnp.argmin(t, axis=-1)).tolist() == [1, 0, 1, 2]
    assert i.dtype == jnp.int32
    np.testing.assert_array_equal(m, [1.0, np.inf, np.nan, 3.0])


def test_first_join_takes_the_smaller_time_with_one_division():
    # against both divisions, with negative numerators and non-positive denominators on either
    # side (a side whose denominator is not positive never joins)
    rng = np.random.default_rng(0)
    n1, d1, n2, d2 = (rng.standard_normal((64, 96)) for _ in range(4))
    d1[0, :8], d2[0, 4:12] = 0.0, 0.0

    def first(num, den):
        return np.where(den > 0, np.maximum(num, 0) / np.where(den > 0, den, 1), np.inf)

    ref = np.minimum(first(n1, d1), first(n2, d2))
    got = homotopy._first_join(*(jnp.asarray(a) for a in (n1, d1)), (n2, d2))
    np.testing.assert_allclose(got, ref, rtol=1e-14)
    assert np.isinf(ref).any() and (ref == 0).any()
    one = homotopy._first_join(jnp.asarray(n1), jnp.asarray(d1))
    np.testing.assert_allclose(one, first(n1, d1))


def test_paths_run_in_chunks(monkeypatch):
    # a batch larger than a chunk of paths: the same certified codes as in one piece
    Xb, Wb, reg = make_lasso_problem(6, B=40, D=16, F=48)
    one = solve_lasso(Xb, Wb, reg, tol=1e-10)
    monkeypatch.setattr(pipeline, "PATH_CHUNK", 16)
    parts = solve_lasso(Xb, Wb, reg, tol=1e-10)
    assert bool(parts.converged)
    np.testing.assert_allclose(parts.codes, one.codes, atol=1e-12)
    assert int(parts.num_steps) == int(one.num_steps)


def test_support_joined_by_its_violators_is_solved_exactly():
    # codes exact on the support less one atom: that atom violates its constraint; the
    # support joined by its violators, solved exactly, gives the optimum back
    Xb, Wb, reg = make_lasso_problem(9, B=6, D=20, F=96, nnz=(3, 9))
    ref = solve_lasso(Xb, Wb, reg, tol=1e-12)
    C = np.asarray(ref.codes)
    C0 = np.zeros_like(C)
    for b in range(len(C)):
        S = np.flatnonzero(C[b])
        S = np.delete(S, np.argmin(np.abs(C[b, S])))
        WS = Wb[S]
        C0[b, S] = np.linalg.solve(WS @ WS.T, WS @ Xb[b] - reg * np.sign(C[b, S]))
    regv = jnp.full((96,), reg)
    C2, gap, obj = working_set._support_and_violators(
        jnp.asarray(Xb), jnp.asarray(Wb), regv, jnp.asarray(C0), S=16, V=4, nonneg=False
    )
    assert np.all(np.asarray(gap) <= 1e-10 * np.asarray(obj))
    np.testing.assert_allclose(C2, C, atol=1e-8)
