"""sparsegat.optim: update rules against hand-computed values and torch.optim, state round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsegat import nn, optim


class Scalar(nn.Module):
    """One learnable array with a gradient we set by hand."""

    def __init__(self, value, dtype=np.float64):
        super().__init__(dtype=dtype)
        self.params["p"] = np.array(value, dtype=dtype)

    def set_grad(self, g):
        self.grads["p"] = np.array(g, dtype=self.dtype)


def run(opt_cls, grads, p0=1.0, **kw):
    m = Scalar([p0])
    opt = opt_cls(m, **kw)
    out = []
    for g in grads:
        m.set_grad([g])
        opt.step()
        out.append(float(m.params["p"][0]))
    return out


def test_sgd_hand_computed():
    assert run(optim.SGD, [0.5], lr=0.1) == pytest.approx([0.95])
    assert run(optim.SGD, [0.5], lr=0.1, weight_decay=0.1) == pytest.approx([0.94])
    assert run(optim.SGD, [0.5, 0.25], lr=0.1, momentum=0.9) == pytest.approx([0.95, 0.88])
    assert run(optim.SGD, [0.5, 0.25], lr=0.1, momentum=0.9, nesterov=True) == pytest.approx([0.905, 0.817])
    assert run(optim.SGD, [0.5, 0.25], lr=0.1, momentum=0.9, dampening=0.5) == pytest.approx([0.95, 0.8925])
    assert run(optim.SGD, [0.5], lr=0.1, maximize=True) == pytest.approx([1.05])
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(Scalar([1.0]), lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        optim.SGD(Scalar([1.0]), lr=-1.0)


def test_adam_hand_computed():
    # step 1 moves by lr (up to eps), whatever the gradient's size
    assert run(optim.Adam, [0.5], lr=0.1) == pytest.approx([0.9], abs=1e-7)
    assert run(optim.Adam, [0.5], lr=0.1, weight_decay=0.1) == pytest.approx([0.9], abs=1e-7)
    # step 2 written out
    m = 0.9 * 0.05 + 0.1 * 0.25
    v = 0.999 * 0.00025 + 0.001 * 0.0625
    expected = 0.9 - (0.1 / (1 - 0.9**2)) * m / (math.sqrt(v) / math.sqrt(1 - 0.999**2) + 1e-8)
    assert run(optim.Adam, [0.5, 0.25], lr=0.1)[1] == pytest.approx(expected, rel=1e-6)
    # AdamW: decoupled decay first, then the Adam step
    assert run(optim.AdamW, [0.5], lr=0.1, weight_decay=0.1) == pytest.approx([0.99 - 0.1], abs=1e-7)
    with pytest.raises(ValueError):
        optim.Adam(Scalar([1.0]), betas=(1.0, 0.9))


OPTIMIZERS = [
    (optim.SGD, "SGD", dict(lr=0.1)),
    (optim.SGD, "SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    (optim.SGD, "SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    (optim.SGD, "SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, maximize=True)),
    (optim.Adam, "Adam", dict(lr=0.01)),
    (optim.Adam, "Adam", dict(lr=0.005, weight_decay=5e-4, betas=(0.8, 0.99), eps=1e-6)),
    (optim.Adam, "Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    (optim.AdamW, "AdamW", dict(lr=0.01)),
    (optim.AdamW, "AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True, maximize=True)),
]


@pytest.mark.pyg
@pytest.mark.parametrize("cls,name,kw", OPTIMIZERS)
def test_matches_torch_optim(cls, name, kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    model = nn.Linear(4, 3, dtype=np.float64, seed=0)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    ours = cls(model, **kw)
    theirs = getattr(torch.optim, name)(list(tparams.values()), **kw)
    for _ in range(6):
        for k, v in model.params.items():
            g = rng.normal(size=v.shape)
            model.grads[k] = g
            tparams[k].grad = torch.tensor(g)
        ours.step()
        theirs.step()
    for k in model.params:
        np.testing.assert_allclose(model.params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_float32_params_stay_float32():
    model = nn.Linear(3, 2, seed=0)
    opt = optim.Adam(model, lr=0.1, weight_decay=0.1)
    model.grads = {k: np.ones_like(v, dtype=np.float64) for k, v in model.params.items()}
    before = {k: v.copy() for k, v in model.params.items()}
    opt.step()
    assert all(v.dtype == np.float32 for v in model.params.values())
    assert all(s["exp_avg"].dtype == np.float32 for s in opt.state.values())
    # the same step in float64, rounded: the float32 update is the float64 one to float32 rounding
    ref = nn.Linear(3, 2, seed=0, dtype=np.float64)
    for k in ref.params:
        ref.params[k] = before[k].astype(np.float64)
        ref.grads[k] = np.ones_like(ref.params[k])
    optim.Adam(ref, lr=0.1, weight_decay=0.1).step()
    for k, v in model.params.items():
        np.testing.assert_allclose(v, ref.params[k], rtol=1e-6, atol=1e-7)
        assert np.abs(v - before[k]).max() == pytest.approx(0.1, rel=1e-5)  # Adam's first step: lr


def test_state_dict_round_trip():
    rng = np.random.default_rng(1)

    def make():
        return nn.Sequential(nn.Linear(4, 3, dtype=np.float64, seed=0), nn.ELU(),
                             nn.Linear(3, 2, dtype=np.float64, seed=1))

    grads = [{n: rng.normal(size=p.shape) for n, p in make().state_dict().items()} for _ in range(6)]

    def apply(model, g):
        for name, layer, key in model.named_parameters():
            layer.grads[key] = g[name]

    for cls, kw in ((optim.Adam, dict(lr=0.01, amsgrad=True)), (optim.SGD, dict(lr=0.1, momentum=0.9))):
        a = make()
        opt_a = cls(a, **kw)
        for g in grads[:3]:
            apply(a, g)
            opt_a.step()
        saved = opt_a.state_dict()
        b = make()
        b.load_state_dict(a.state_dict())
        opt_b = cls(b, lr=123.0)
        opt_b.load_state_dict(saved)
        assert opt_b.lr == kw["lr"]
        for g in grads[3:]:
            apply(a, g)
            opt_a.step()
            apply(b, g)
            opt_b.step()
        for name in a.state_dict():
            np.testing.assert_array_equal(a.state_dict()[name], b.state_dict()[name])
        # state_dict holds copies
        for entry in saved["state"].values():
            for v in entry.values():
                if isinstance(v, np.ndarray):
                    v[...] = 0
        assert any(np.any(s.get("exp_avg", s.get("momentum_buffer"))) for s in opt_a.state.values())


def test_load_state_dict_errors():
    model = nn.Linear(3, 2, dtype=np.float64, seed=0)
    opt = optim.Adam(model)
    model.grads = {k: np.ones_like(v) for k, v in model.params.items()}
    opt.step()
    state = opt.state_dict()
    with pytest.raises(ValueError, match="Adam"):
        optim.SGD(model).load_state_dict(state)
    other = optim.Adam(nn.Linear(5, 2, seed=0))
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(state)
    bad = dict(state, state={"nope": {}})
    with pytest.raises(ValueError, match="nope"):
        optim.Adam(model).load_state_dict(bad)
    with pytest.raises(ValueError):
        optim.Adam(model).load_state_dict({"x": 1})


def test_params_without_grads_are_skipped_and_assignment_followed():
    model = nn.Sequential(nn.Linear(3, 2, dtype=np.float64, seed=0), nn.Linear(2, 2, dtype=np.float64, seed=1))
    opt = optim.SGD(model, lr=1.0)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    model[1].grads["W"] = np.ones((2, 2))
    opt.step()
    after = model.state_dict()
    np.testing.assert_array_equal(after["0.W"], before["0.W"])
    np.testing.assert_array_equal(after["1.W"], before["1.W"] - 1.0)
    model[1].params["W"] = np.zeros((2, 2))  # a new array: the optimizer follows the name
    opt.step()
    np.testing.assert_array_equal(model[1].params["W"], -np.ones((2, 2)))
    opt.zero_grad()
    assert "W" not in model[1].grads
    # a shape change with live state is an error, not silent corruption
    adam = optim.Adam(model[1])
    model[1].grads["W"] = np.ones((2, 2))
    adam.step()
    model[1].params["W"] = np.zeros((3, 3))
    model[1].grads["W"] = np.ones((3, 3))
    with pytest.raises(ValueError, match="shape"):
        adam.step()


def test_several_modules_and_bad_models():
    a, b = nn.Linear(2, 2, seed=0), nn.Linear(2, 2, seed=1)
    opt = optim.AdamW([a, b], lr=0.1)
    a.grads["W"] = np.ones((2, 2), np.float32)
    b.grads["b"] = np.ones(2, np.float32)
    opt.step()
    assert set(opt.state) == {"0:W", "1:b"}
    with pytest.raises(TypeError):
        optim.SGD(3)
    with pytest.raises(TypeError):
        optim.SGD([a, "b"])
    with pytest.raises(ValueError, match="no parameters"):
        optim.SGD(nn.ELU())
    assert "lr=0.1" in repr(opt)


# ---------------------------------------------------------------------- the NumPy Adam on its own
def _reference_adam(p, grads, lr, betas, eps, weight_decay, amsgrad, maximize, decoupled):
    """PyTorch's Adam/AdamW rule written out element by element on NumPy scalars of the
    parameter's dtype, in the documented order of operations (``m.lerp_(g, 1 - b1)``;
    ``v = b2 * v + (1 - b2) * g * g``; ``denom = sqrt(v) * (1 / sqrt(1 - b2**t)) + eps``;
    ``p -= lr / (1 - b1**t) * (m / denom)``)."""
    t_ = p.dtype.type
    b1, b2 = betas
    p = p.copy().reshape(-1)
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.reshape(-1)
        step_size = t_(lr / (1.0 - b1 ** t))
        inv_bc2 = t_(1.0 / math.sqrt(1.0 - b2 ** t))
        for i in range(p.size):
            gi = -g[i] if maximize else g[i]
            if weight_decay and decoupled:
                p[i] = p[i] * t_(1.0 - lr * weight_decay)
            elif weight_decay:
                gi = gi + t_(weight_decay) * p[i]
            m[i] = m[i] + t_(1.0 - b1) * (gi - m[i])
            v[i] = v[i] * t_(b2)
            v[i] = v[i] + t_(1.0 - b2) * (gi * gi)
            vi = v[i]
            if amsgrad:
                vmax[i] = max(vmax[i], v[i])
                vi = vmax[i]
            denom = np.sqrt(vi) * inv_bc2 + t_(eps)
            p[i] = p[i] - step_size * (m[i] / denom)
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kw", [
    (optim.Adam, dict(lr=0.01)),
    (optim.Adam, dict(lr=0.005, weight_decay=5e-4, betas=(0.8, 0.99), eps=1e-6)),
    (optim.Adam, dict(lr=0.02, amsgrad=True, maximize=True, weight_decay=0.1)),
    (optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    (optim.AdamW, dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
], ids=["adam", "adam-l2-betas", "adam-amsgrad-maximize", "adamw", "adamw-amsgrad"])
def test_numpy_adam_is_bitwise_the_reference_rule(monkeypatch, dtype, cls, kw):
    """The NumPy Adam (backend numpy: no compiled update) against the rule written out by hand."""
    from sparsegat.backends import optional_function

    monkeypatch.setenv("SPARSEGAT_BACKEND", "numpy")
    assert optional_function("adam_update", "numpy") is None  # really the NumPy arithmetic
    rng = np.random.default_rng(11)
    model = nn.Linear(5, 3, dtype=dtype, seed=0)
    start = {k: v.copy() for k, v in model.params.items()}
    grads = {k: [(rng.standard_normal(v.shape) * 10.0 ** rng.integers(-3, 2)).astype(dtype) for _ in range(7)]
             for k, v in model.params.items()}
    opt = cls(model, **kw)
    for step in range(7):
        for k in model.params:
            model.grads[k] = grads[k][step]
        opt.step()
    full = dict(dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01 if cls is optim.AdamW else 0.0,
                     amsgrad=False, maximize=False), **kw)
    for k, p in model.params.items():
        expected = _reference_adam(start[k], grads[k], full["lr"], full["betas"], full["eps"], full["weight_decay"],
                                   full["amsgrad"], full["maximize"], cls is optim.AdamW)
        assert p.dtype == dtype
        assert np.array_equal(p.reshape(-1), expected), k
        assert opt.state["W" if k == "W" else "b"]["step"] == 7


# ---------------------------------------------------------------------- validation (issue 11)
def test_non_float_parameters_are_refused():
    m = Scalar([1, 2], dtype=np.float64)
    m.params["p"] = np.array([1, 2], np.int64)
    with pytest.raises(TypeError, match="parameter 'p' has dtype int64"):
        optim.Adam(m)
    m.params["p"] = np.array([1.0, 2.0])
    opt = optim.Adam(m, lr=0.1)
    m.params["p"] = np.array([1, 2], np.int64)  # assigned after construction
    m.grads["p"] = np.ones(2)
    with pytest.raises(TypeError, match="parameter 'p' has dtype int64"):
        opt.step()
    assert m.params["p"].tolist() == [1, 2]


def test_read_only_and_deleted_parameters_are_clear_errors():
    m = nn.Linear(3, 2, dtype=np.float64, seed=0)
    opt = optim.Adam(m, lr=0.1)
    frozen = m.params["W"].copy()
    frozen.flags.writeable = False
    m.params["W"] = frozen
    m.grads = {"W": np.ones((3, 2)), "b": np.ones(2)}
    b_before = m.params["b"].copy()
    with pytest.raises(ValueError, match="parameter 'W' is a read-only array.*copy"):
        opt.step()
    assert np.array_equal(m.params["b"], b_before)  # checked before anything moved
    with pytest.raises(ValueError, match="read-only"):
        optim.SGD(m)
    m.params["W"] = frozen.copy()
    opt.step()
    del m.params["b"]
    with pytest.raises(ValueError, match="parameter 'b' is no longer in Linear.params"):
        opt.step()


def test_gradients_must_be_arrays_of_the_parameter_kind():
    m = nn.Linear(3, 2, dtype=np.float64, seed=0)
    opt = optim.SGD(m, lr=0.1)
    m.grads["W"] = np.ones((3, 2)).tolist()
    with pytest.raises(TypeError, match="gradient of 'W' must be a numpy array like the parameter, got list"):
        opt.step()
    m.grads["W"] = np.ones((3, 2)) * 1j
    with pytest.raises(TypeError, match="gradient of 'W' must hold real numbers"):
        opt.step()
    m.grads["W"] = np.ones((3, 2), np.int64)  # real integers are cast
    before = m.params["W"].copy()
    opt.step()
    np.testing.assert_array_equal(m.params["W"], before - 0.1)


def test_hyper_parameters_are_checked_at_every_step():
    m = Scalar([1.0])
    opt = optim.Adam(m, lr=0.1)
    m.set_grad([0.5])
    opt.lr = float("nan")
    with pytest.raises(ValueError, match="lr must be a finite number"):
        opt.step()
    assert m.params["p"].tolist() == [1.0]
    for bad, exc in ((dict(lr="0.1"), TypeError), (dict(lr=True), TypeError), (dict(betas=(0.9,)), TypeError),
                     (dict(amsgrad="no"), TypeError), (dict(eps=-1.0), ValueError)):
        with pytest.raises(exc):
            optim.Adam(m, **bad)


def _stepped_adam(amsgrad=False):
    m = nn.Linear(3, 2, dtype=np.float64, seed=0)
    opt = optim.Adam(m, lr=0.01, amsgrad=amsgrad)
    m.grads = {k: np.ones_like(v) for k, v in m.params.items()}
    opt.step()
    return m, opt


@pytest.mark.parametrize("change,exc,message", [
    (lambda s: s["hyper"].update(lr=float("nan")), ValueError, "lr must be a finite number"),
    (lambda s: s["hyper"].update(betas=(1, 1)), ValueError, "betas must lie in"),
    (lambda s: s["hyper"].update(eps="1e-8"), TypeError, "eps must be a real number"),
    (lambda s: s["hyper"].pop("eps"), ValueError, "lacks 'eps'"),
    (lambda s: s["state"]["W"].update(step=-1), ValueError, "'step' of 'W' must be a positive integer"),
    (lambda s: s["state"]["W"].update(step=0), ValueError, "positive integer"),
    (lambda s: s["state"]["W"].update(step=1.5), TypeError, "positive integer"),
    (lambda s: s["state"]["W"].pop("exp_avg_sq"), ValueError, "state of 'W' lacks the buffer 'exp_avg_sq'"),
    (lambda s: s["state"]["W"].update(extra=np.zeros((3, 2))), ValueError, "unknown buffer 'extra'"),
    (lambda s: s["state"]["W"].update(exp_avg=np.zeros((2, 3))), ValueError, "shape"),
    (lambda s: s["state"]["W"].update(exp_avg=np.zeros((3, 2), np.int64)), TypeError, "float array"),
    (lambda s: s["state"]["W"].update(exp_avg=np.full((3, 2), np.nan)), ValueError, "not finite"),
    (lambda s: s["state"]["b"].update(exp_avg_sq=-np.ones(2)), ValueError, "must be >= 0"),
    (lambda s: s["state"]["b"].update(exp_avg="zeros"), TypeError, "must be an array"),
    (lambda s: s.update(state={"W": [1, 2]}), ValueError, "dict of buffers"),
    (lambda s: s.update(hyper=None), ValueError, "hyper"),
], ids=["lr-nan", "betas-1", "eps-str", "eps-missing", "step-negative", "step-zero", "step-float", "buffer-missing",
        "buffer-extra", "buffer-shape", "buffer-int", "buffer-nan", "second-moment-negative", "buffer-str",
        "entry-list", "hyper-none"])
def test_load_state_dict_validates_everything_and_changes_nothing_on_error(change, exc, message):
    m, opt = _stepped_adam()
    state = opt.state_dict()
    change(state)
    target = optim.Adam(m, lr=0.123)
    with pytest.raises(exc, match=message):
        target.load_state_dict(state)
    assert target.lr == 0.123 and target.state == {}
    # the untouched state loads, and an amsgrad state needs its extra buffer
    target.load_state_dict(opt.state_dict())
    assert target.lr == 0.01 and target.state["W"]["step"] == 1
    ams = opt.state_dict()
    ams["hyper"]["amsgrad"] = True
    with pytest.raises(ValueError, match="lacks the buffer 'max_exp_avg_sq'"):
        target.load_state_dict(ams)


def test_sgd_load_state_dict_checks_its_buffers():
    m = nn.Linear(3, 2, dtype=np.float64, seed=0)
    opt = optim.SGD(m, lr=0.1, momentum=0.9)
    m.grads = {k: np.ones_like(v) for k, v in m.params.items()}
    opt.step()
    state = opt.state_dict()
    state["state"]["W"].pop("momentum_buffer")
    with pytest.raises(ValueError, match="lacks the buffer 'momentum_buffer'"):
        optim.SGD(m).load_state_dict(state)
    state = opt.state_dict()
    state["hyper"]["nesterov"] = True
    state["hyper"]["dampening"] = 0.5
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(m).load_state_dict(state)
