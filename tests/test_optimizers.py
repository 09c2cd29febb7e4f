"""Optimizers: one step equals the book's formula; updates are in place; state round-trips."""

import math

import numpy as np
import pytest

import xpnet
from xpnet.optimizers import (
    OPTIMIZERS,
    SGD,
    AdaGrad,
    Adam,
    Momentum,
    Nesterov,
    RMSprop,
    get_optimizer,
)

W0 = np.array([[1.0, -2.0], [0.5, 3.0]])
B0 = np.array([0.25, -0.75])
G1 = {"W": np.array([[0.5, -1.0], [2.0, 0.0]]), "b": np.array([0.1, -0.2])}
G2 = {"W": np.array([[-0.5, 0.25], [1.0, 4.0]]), "b": np.array([0.3, 0.3])}


def fresh(dtype=np.float64):
    return {"W": W0.astype(dtype), "b": B0.astype(dtype)}


def grads(g, dtype=np.float64):
    return {k: v.astype(dtype) for k, v in g.items()}


# ---------------------------------------------------------------------------
# One step (and a second, which uses the state) against the formulas
# ---------------------------------------------------------------------------


def test_sgd_step_by_hand():
    params = fresh()
    SGD(lr=0.1).update(params, G1)
    # W - 0.1 * g, entry by entry
    np.testing.assert_allclose(params["W"], [[0.95, -1.9], [0.3, 3.0]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(params["b"], [0.24, -0.73], rtol=0, atol=1e-15)


def test_sgd_default_lr_is_the_books():
    assert SGD().lr == 0.01


def test_momentum_two_steps():
    params = fresh()
    opt = Momentum(lr=0.1, momentum=0.9)
    opt.update(params, G1)
    v1 = -0.1 * G1["W"]
    np.testing.assert_allclose(params["W"], W0 + v1, rtol=1e-15)
    # the first entry by hand: v = -0.1*0.5 = -0.05, W = 1 - 0.05
    assert params["W"][0, 0] == pytest.approx(0.95, abs=1e-15)
    opt.update(params, G2)
    v2 = 0.9 * v1 - 0.1 * G2["W"]
    np.testing.assert_allclose(params["W"], W0 + v1 + v2, rtol=1e-14)
    np.testing.assert_allclose(opt.v["W"], v2, rtol=1e-14)


def test_adagrad_two_steps():
    params = fresh()
    opt = AdaGrad(lr=0.1)
    opt.update(params, G1)
    h1 = G1["W"] ** 2
    w1 = W0 - 0.1 * G1["W"] / (np.sqrt(h1) + 1e-7)
    np.testing.assert_allclose(params["W"], w1, rtol=1e-14)
    # first entry by hand: h = 0.25, step = 0.1*0.5/(0.5+1e-7)
    assert params["W"][0, 0] == pytest.approx(1 - 0.05 / (0.5 + 1e-7), abs=1e-15)
    # a zero gradient with zero history moves nothing (the epsilon keeps 0/0 away)
    assert params["W"][1, 1] == 3.0
    opt.update(params, G2)
    h2 = h1 + G2["W"] ** 2
    np.testing.assert_allclose(params["W"], w1 - 0.1 * G2["W"] / (np.sqrt(h2) + 1e-7), rtol=1e-14)


def test_rmsprop_two_steps():
    params = fresh()
    opt = RMSprop(lr=0.01, decay_rate=0.99)
    opt.update(params, G1)
    h1 = 0.01 * G1["W"] ** 2
    w1 = W0 - 0.01 * G1["W"] / (np.sqrt(h1) + 1e-7)
    np.testing.assert_allclose(params["W"], w1, rtol=1e-14)
    # first entry by hand: h = 0.01*0.25 = 0.0025, sqrt = 0.05, step = 0.01*0.5/0.05 = 0.1
    assert params["W"][0, 0] == pytest.approx(0.9, abs=1e-5)
    opt.update(params, G2)
    h2 = 0.99 * h1 + 0.01 * G2["W"] ** 2
    np.testing.assert_allclose(params["W"], w1 - 0.01 * G2["W"] / (np.sqrt(h2) + 1e-7), rtol=1e-14)


def test_adam_two_steps_book_form():
    params = fresh()
    lr, b1, b2 = 0.001, 0.9, 0.999
    opt = Adam()
    assert (opt.lr, opt.beta1, opt.beta2) == (lr, b1, b2)
    m = np.zeros_like(W0)
    v = np.zeros_like(W0)
    w = W0.copy()
    for t, g in enumerate((G1, G2), start=1):
        opt.update(params, g)
        lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        m = m + (1 - b1) * (g["W"] - m)
        v = v + (1 - b2) * (g["W"] ** 2 - v)
        w = w - lr_t * m / (np.sqrt(v) + 1e-7)
        np.testing.assert_allclose(params["W"], w, rtol=1e-13)
    assert opt.iter == 2
    # The first step of Adam moves every entry with a nonzero gradient by about lr:
    # m = 0.1 g, v = 0.001 g^2, lr_t = lr * sqrt(0.001) / 0.1 -> lr * sign(g).
    p = fresh()
    Adam(lr=0.001).update(p, G1)
    np.testing.assert_allclose(W0 - p["W"], 0.001 * np.sign(G1["W"]), atol=1e-8)


# The book's formulas, written plainly in NumPy, as references for whole update sequences.
def _reference_step(name, state, x, g, lr):
    """One step of the book's ``common/optimizer.py`` formula for one parameter x (a float)."""
    if name == "sgd":
        return x - lr * g
    if name == "momentum":
        state["v"] = 0.9 * state.get("v", 0.0) - lr * g
        return x + state["v"]
    if name == "nesterov":  # steps with momentum**2 times the *previous* v, then updates v
        v = state.get("v", 0.0)
        x = x + 0.81 * v - 1.9 * lr * g
        state["v"] = 0.9 * v - lr * g
        return x
    if name == "adagrad":
        state["h"] = state.get("h", 0.0) + g * g
        return x - lr * g / (np.sqrt(state["h"]) + 1e-7)
    if name == "rmsprop":
        state["h"] = 0.99 * state.get("h", 0.0) + 0.01 * g * g
        return x - lr * g / (np.sqrt(state["h"]) + 1e-7)
    if name == "adam":
        state["t"] = t = state.get("t", 0) + 1
        lr_t = lr * np.sqrt(1.0 - 0.999**t) / (1.0 - 0.9**t)
        state["m"] = state.get("m", 0.0) + 0.1 * (g - state.get("m", 0.0))
        state["v"] = state.get("v", 0.0) + 0.001 * (g * g - state.get("v", 0.0))
        return x - lr_t * state["m"] / (np.sqrt(state["v"]) + 1e-7)
    raise AssertionError(name)


def _naive_gradient(x, y):
    """The gradient of the book's ch. 6 test function f(x, y) = x**2 / 20 + y**2."""
    return {"x": x / 10.0, "y": 2.0 * y}


def _reference_path(name, lr, steps=30):
    pos, states = {"x": -7.0, "y": 2.0}, {"x": {}, "y": {}}
    for _ in range(steps):
        g = _naive_gradient(pos["x"], pos["y"])
        pos = {k: _reference_step(name, states[k], pos[k], g[k], lr) for k in pos}
    return pos


_NAIVE_LR = {"sgd": 0.95, "momentum": 0.1, "nesterov": 0.1, "adagrad": 1.5, "rmsprop": 0.1,
             "adam": 0.3}


@pytest.mark.parametrize("kind", ["float", "0-d", "1-d"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_naive_problem_on_scalar_parameters_follows_the_book(name, kind):
    """The book's optimizer_compare_naive.py keeps its parameters as Python floats."""
    wrap = {"float": float, "0-d": np.array, "1-d": lambda v: np.array([v])}[kind]
    params = {"x": wrap(-7.0), "y": wrap(2.0)}
    opt = get_optimizer(name, lr=_NAIVE_LR[name])
    for _ in range(30):
        opt.update(params, _naive_gradient(params["x"], params["y"]))
    expected = _reference_path(name, _NAIVE_LR[name])
    for key in params:
        assert np.shape(params[key]) == np.shape(wrap(0.0))
        np.testing.assert_allclose(np.ravel(params[key]), [expected[key]], rtol=1e-12, atol=1e-15)


def test_nesterov_is_the_books_sequence():
    """Nesterov steps with momentum**2 times the previous step's v and updates v afterwards
    (the book's order): every point of 30 steps of the book's naive problem is the book's."""
    params = {"x": np.array([-7.0]), "y": np.array([2.0])}
    opt = Nesterov(lr=0.1)
    path = [(-7.0, 2.0)]
    for _ in range(30):
        opt.update(params, _naive_gradient(params["x"], params["y"]))
        path.append((float(params["x"][0]), float(params["y"][0])))
    for steps in (1, 2, 30):
        expected = _reference_path("nesterov", 0.1, steps)
        np.testing.assert_allclose(path[steps], (expected["x"], expected["y"]), rtol=1e-12)
    # the first step by hand: no velocity yet, so x = -7 - 1.9 * 0.1 * (-0.7)
    assert path[1][0] == pytest.approx(-6.867, abs=1e-12)


def _adam_formula(params, grads_, m, v, lr_t, b1=0.9, b2=0.999):
    """The book's Adam as NumPy expressions (Python-float scalars: no promotion)."""
    for key in params:
        g = grads_[key]
        m[key] += (1 - b1) * (g - m[key])
        v[key] += (1 - b2) * (g * g - v[key])
        params[key] -= m[key] / (np.sqrt(v[key]) + 1e-7) * lr_t


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_adam_kernel_equals_the_formula_bit_for_bit(dtype):
    from xpnet.kernels import cpu

    rng = np.random.default_rng(0)
    shape = (7, 3, 5)
    p, want = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    want[...] = p
    m, v = np.zeros_like(p), np.zeros_like(p)
    m_want, v_want = {"p": m.copy()}, {"p": v.copy()}
    for lr_t in (0.003, 1e-4, 0.02):
        g = rng.standard_normal((5, 3, 7)).astype(dtype).T  # a transposed (strided) gradient
        g[0, 0, 0] = 0.0
        cpu.adam_update(p, g, m, v, lr_t, 0.9, 0.999, 1e-7)
        _adam_formula({"p": want}, {"p": g}, m_want, v_want, lr_t)
        np.testing.assert_array_equal(p, want)
        np.testing.assert_array_equal(m, m_want["p"])
        np.testing.assert_array_equal(v, v_want["p"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_update_equals_the_formula_on_every_layout(dtype):
    """The fused path (contiguous NumPy arrays) and the formula's (a strided parameter)
    give the book's formula exactly, for three steps."""
    rng = np.random.default_rng(1)
    big = rng.standard_normal((6, 10)).astype(dtype)
    params = {"W": rng.standard_normal((4, 5)).astype(dtype), "b": big[:, ::2]}
    want = {k: a.copy() for k, a in params.items()}
    m = {k: np.zeros_like(a) for k, a in want.items()}
    v = {k: np.zeros_like(a) for k, a in want.items()}
    opt = Adam(lr=0.01)
    for t in range(1, 4):
        g = {k: rng.standard_normal(a.shape).astype(dtype) for k, a in want.items()}
        opt.update(params, g)
        _adam_formula(want, g, m, v, 0.01 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t))
        for k in want:
            np.testing.assert_array_equal(params[k], want[k])
            np.testing.assert_array_equal(opt.m[k], m[k])
    assert np.shares_memory(params["b"], big)  # still updated in place


def test_fused_adam_kernel_refuses_mismatched_arrays():
    from xpnet.kernels import cpu

    p = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"adam_update: grad is float64 \(3, 4\)"):
        cpu.adam_update(p, np.zeros((3, 4)), np.zeros_like(p), np.zeros_like(p), 0.1, 0.9,
                        0.999, 1e-7)
    with pytest.raises(ValueError, match="adam_update: m is float32 \\(4, 3\\)"):
        cpu.adam_update(p, p, np.zeros((4, 3), np.float32), p.copy(), 0.1, 0.9, 0.999, 1e-7)
    with pytest.raises(ValueError, match="v must be a writable C-contiguous"):
        cpu.adam_update(p, p, p.copy(), np.zeros((4, 3), np.float32).T, 0.1, 0.9, 0.999, 1e-7)


# ---------------------------------------------------------------------------
# In place, on the parameter's dtype
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_update_is_in_place(name):
    params = fresh()
    before = {k: id(v) for k, v in params.items()}
    view = params["W"][0]  # a layer holding a reference (or a view) sees the update
    opt = get_optimizer(name, lr=0.1)
    for g in (G1, G2):
        opt.update(params, g)
    assert {k: id(v) for k, v in params.items()} == before
    assert not np.array_equal(view, W0[0])
    np.testing.assert_array_equal(view, params["W"][0])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_low_precision_stays_low_precision(name, dtype):
    params = fresh(dtype)
    # a NumPy float64 learning rate, as the book's random search produces
    opt = get_optimizer(name, lr=np.float64(10**-2.5))
    opt.update(params, grads(G1, dtype))
    for key, p in params.items():
        assert p.dtype == dtype
        for slot in opt.slots:
            assert getattr(opt, slot)[key].dtype == dtype
    assert all(np.all(np.isfinite(p)) for p in params.values())


def test_float32_step_matches_float64_formula():
    params = fresh(np.float32)
    Adam(lr=0.01).update(params, grads(G1, np.float32))
    ref = fresh()
    Adam(lr=0.01).update(ref, G1)
    np.testing.assert_allclose(params["W"], ref["W"], rtol=1e-6)


# ---------------------------------------------------------------------------
# state_dict / load_state_dict
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_roundtrip_continues_identically(name):
    a_params = fresh()
    a = get_optimizer(name, lr=0.05)
    for g in (G1, G2, G1):
        a.update(a_params, g)
    state = a.state_dict()
    assert state["name"].lower() == name
    for arrays in state["state"].values():
        assert all(type(v) is np.ndarray for v in arrays.values())

    b_params = {k: v.copy() for k, v in a_params.items()}
    b = get_optimizer(name)  # default hyperparameters: the state brings lr=0.05 back
    b.load_state_dict(state, b_params)
    assert b.lr == 0.05
    a.update(a_params, G2)
    b.update(b_params, G2)
    for key in a_params:
        np.testing.assert_array_equal(a_params[key], b_params[key])


def test_state_dict_holds_copies():
    params = fresh()
    opt = Momentum(lr=0.1)
    opt.update(params, G1)
    state = opt.state_dict()
    saved = state["state"]["v"]["W"].copy()
    opt.update(params, G2)
    np.testing.assert_array_equal(state["state"]["v"]["W"], saved)


def test_state_loaded_without_params_is_placed_at_first_update():
    params = fresh(np.float32)
    a = Adam(lr=0.01)
    a.update(params, grads(G1, np.float32))
    b = Adam()
    b.load_state_dict(a.state_dict())
    assert b.state_dict()["state"]["m"]["W"].shape == (2, 2)  # pending state is reported
    p2 = {k: v.copy() for k, v in params.items()}
    a.update(params, grads(G2, np.float32))
    b.update(p2, grads(G2, np.float32))
    np.testing.assert_array_equal(params["W"], p2["W"])
    assert b.m["W"].dtype == np.float32


def test_load_state_dict_rejects_other_keys_and_shapes():
    opt = Momentum()
    opt.update(fresh(), G1)
    state = opt.state_dict()
    with pytest.raises(ValueError, match=r"parameters \['W', 'b'\].*network has \['W', 'c'\]"):
        Momentum().load_state_dict(state, {"W": W0.copy(), "c": B0.copy()})
    with pytest.raises(ValueError, match=r"v\['W'\] has shape \(2, 2\).*shape \(3, 2\)"):
        Momentum().load_state_dict(state, {"W": np.zeros((3, 2)), "b": B0.copy()})
    with pytest.raises(ValueError, match="state is for Momentum, but this optimizer is Adam"):
        Adam().load_state_dict(state)
    # the deferred check fires at the first update as well
    m = Momentum()
    m.load_state_dict(state)
    with pytest.raises(ValueError, match="shape"):
        m.update({"W": np.zeros((3, 2)), "b": B0.copy()}, {"W": np.zeros((3, 2)), "b": B0})


def test_load_state_dict_rejects_missing_slots():
    state = Adam().state_dict()
    del state["state"]["v"]
    with pytest.raises(ValueError, match=r"slots \['m', 'v'\]"):
        Adam().load_state_dict(state)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["sgd", "SGD", "Sgd"])
def test_names_are_case_insensitive(spelling):
    assert type(get_optimizer(spelling)) is SGD


def test_all_book_optimizers_are_registered():
    assert {c.__name__ for c in OPTIMIZERS.values()} == {
        "SGD",
        "Momentum",
        "Nesterov",
        "AdaGrad",
        "RMSprop",
        "Adam",
    }
    assert type(get_optimizer("adagrad", lr=0.1)) is AdaGrad
    assert get_optimizer("rmsprop").decay_rate == 0.99


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'.*SGD.*Momentum.*Adam"):
        get_optimizer("adamw")


def test_unknown_hyperparameter_lists_the_valid_ones():
    with pytest.raises(ValueError, match="SGD has no parameter 'momentum'; its parameters are lr"):
        get_optimizer("sgd", lr=0.1, momentum=0.9)


def test_instance_passes_through():
    opt = Adam()
    assert get_optimizer(opt) is opt


@pytest.mark.gpu
@pytest.mark.skipif(not xpnet.gpu_available(), reason="needs a CUDA GPU with CuPy")
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_gpu_update_stays_on_device_and_matches_cpu(name):
    cp = xpnet.backend.require_gpu()
    cpu = fresh(np.float32)
    gpu = {k: cp.asarray(v) for k, v in cpu.items()}
    ids = {k: id(v) for k, v in gpu.items()}
    a, b = get_optimizer(name, lr=0.05), get_optimizer(name, lr=0.05)
    for g in (G1, G2):
        a.update(cpu, grads(g, np.float32))
        b.update(gpu, {k: cp.asarray(v) for k, v in grads(g, np.float32).items()})
    assert {k: id(v) for k, v in gpu.items()} == ids
    for key in cpu:
        assert isinstance(gpu[key], cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(gpu[key]), cpu[key], rtol=1e-6)
        for slot in b.slots:
            assert isinstance(getattr(b, slot)[key], cp.ndarray)
