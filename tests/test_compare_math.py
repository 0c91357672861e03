"""CKA and unit matching: the mathematical properties the diff relies on."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from scopecli.compare.cka import GramSet, cka_table, linear_cka, permutation_floor, unbiased_centre
from scopecli.compare.matching import match_units, self_correlation, unit_correlation
from scopecli.core.errors import ScopeError


def _reference_hsic(k, l_):
    """HSIC with explicit centring matrices, straight from the definition."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l_ @ h) / (n - 1) ** 2


def _reference_cka(x, y):
    k, l_ = x @ x.T, y @ y.T
    return _reference_hsic(k, l_) / np.sqrt(_reference_hsic(k, k) * _reference_hsic(l_, l_))


def _song_unbiased_hsic(k, l_):
    """Unbiased HSIC estimator written exactly as in Song et al. (2012), eq. 5."""
    n = k.shape[0]
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    term = (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ kt @ lt @ one)
    return term / (n * (n - 3))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_cka_of_itself_is_one(rng):
    x = rng.normal(size=(60, 17)) + 3.0
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_symmetric(rng):
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(50, 30))
    y[:, :8] += 2 * x
    for deb in (False, True):
        assert linear_cka(x, y, debiased=deb) == pytest.approx(linear_cka(y, x, debiased=deb), abs=1e-12)


def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(rng):
    x = rng.normal(size=(40, 12))
    y = x @ rng.normal(size=(12, 12)) + 0.5 * rng.normal(size=(40, 12))
    q = ortho_group.rvs(12, random_state=7)
    for deb in (False, True):
        base = linear_cka(x, y, debiased=deb)
        assert linear_cka(x @ q, y, debiased=deb) == pytest.approx(base, abs=1e-10)
        assert linear_cka(x, 7.5 * y, debiased=deb) == pytest.approx(base, abs=1e-10)
        assert linear_cka(x + 100.0, y, debiased=deb) == pytest.approx(base, abs=1e-9)
    # and NOT invariant to a general (non-orthogonal, anisotropic) linear map: the test can fail
    d = np.diag(np.linspace(0.1, 10, 12))
    assert abs(linear_cka(x @ d, y) - linear_cka(x, y)) > 1e-3


def test_linear_cka_matches_explicit_centring_reference(rng):
    for p, q in ((5, 9), (30, 3), (64, 64)):
        x, y = rng.normal(size=(45, p)), rng.normal(size=(45, q))
        y[:, 0] += x[:, 0]
        assert linear_cka(x, y) == pytest.approx(_reference_cka(x, y), rel=1e-10)


def test_unbiased_centring_gives_song_estimator(rng):
    x, y = rng.normal(size=(30, 6)), rng.normal(size=(30, 4))
    k, l_ = x @ x.T, y @ y.T
    n = k.shape[0]
    ours = np.vdot(unbiased_centre(k), unbiased_centre(l_)) / (n * (n - 3))
    assert ours == pytest.approx(_song_unbiased_hsic(k, l_), rel=1e-10)


def test_debiased_cka_near_zero_for_independent_representations(rng):
    x, y = rng.normal(size=(300, 256)), rng.normal(size=(300, 256))
    biased, deb = linear_cka(x, y), linear_cka(x, y, debiased=True)
    assert abs(deb) < 0.02
    assert biased > 0.4  # the bias the debiased estimator removes (wide layers, few images)


def test_table_and_floor(rng):
    n = 120
    base = rng.normal(size=(n, 10))
    acts_a = [base @ rng.normal(size=(10, 20)), rng.normal(size=(n, 15))]
    acts_b = [base @ ortho_group.rvs(10, random_state=3), rng.normal(size=(n, 40)), acts_a[1] * 3]
    ga, gb = GramSet.from_acts(["a0", "a1"], acts_a), GramSet.from_acts(["b0", "b1", "b2"], acts_b)
    lin, deb = cka_table(ga, gb)
    assert lin.shape == deb.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert lin[i, j] == pytest.approx(linear_cka(acts_a[i], acts_b[j]), abs=1e-10)
            assert deb[i, j] == pytest.approx(linear_cka(acts_a[i], acts_b[j], debiased=True), abs=1e-10)
    assert deb[1, 2] == pytest.approx(1.0)
    lf, df = permutation_floor(ga, gb, n_perm=8, seed=0)
    assert lf.shape == (2, 3)
    assert lin[0, 0] > lf[0, 0] and deb[0, 0] > df[0, 0]  # a real relation beats its floor
    assert deb[1, 1] < df[1, 1] + 0.05  # unrelated stays at the floor
    lf2, _ = permutation_floor(ga, gb, n_perm=8, seed=0)
    np.testing.assert_array_equal(lf, lf2)  # seeded


def test_constant_layer_gives_nan_not_crash(rng):
    x = rng.normal(size=(20, 4))
    assert np.isnan(linear_cka(x, np.ones((20, 3))))
    with pytest.raises(ScopeError):
        linear_cka(x, x[:10])


def test_matching_recovers_known_permutation(rng):
    n, p = 200, 48
    a = rng.normal(size=(n, p))
    perm = rng.permutation(p)
    b = a[:, perm] + 0.3 * rng.normal(size=(n, p))  # unit j of B is unit perm[j] of A
    m = match_units(a, b, seed=0)
    truth = np.argsort(perm)  # unit i of A is unit truth[i] of B
    np.testing.assert_array_equal(m.best_b, truth)
    np.testing.assert_array_equal(m.assign_b[np.argsort(m.assign_a)], truth)
    assert len(m.buddies) == p
    assert m.floor < 0.5 and len(m.unmatched_a) == 0
    assert m.top_pairs(3)[0][2] > 0.9


def test_matching_flags_units_without_a_match(rng):
    n = 300
    a = rng.normal(size=(n, 20))
    b = np.concatenate([a[:, :10] + 0.2 * rng.normal(size=(n, 10)), rng.normal(size=(n, 10))], axis=1)
    m = match_units(a, b, seed=1)
    flagged = set(m.unmatched_a.tolist())
    assert len(flagged & set(range(10, 20))) >= 8  # the floor is a 95% chance level: most unrelated units
    assert not flagged & set(range(10))


def test_dead_units_are_nan_and_never_matched(rng):
    a = rng.normal(size=(50, 5))
    a[:, 2] = 0.0
    b = a.copy()
    c = unit_correlation(a, b)
    assert np.isnan(c[2]).all() and np.isnan(c[:, 2]).all()
    m = match_units(a, b)
    assert m.best_b[2] == -1 and 2 not in m.assign_a
    r = self_correlation(a, b)
    assert np.isnan(r[2]) and np.allclose(np.delete(r, 2), 1.0)
