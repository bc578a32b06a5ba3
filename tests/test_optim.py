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
    opt.step()
    assert all(v.dtype == np.float32 for v in model.params.values())
    assert all(s["exp_avg"].dtype == np.float32 for s in opt.state.values())


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
        for name, arr in a.state_dict().items():
            b.state_dict()[name][...] = arr
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
