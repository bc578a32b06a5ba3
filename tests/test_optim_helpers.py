"""Gradient clipping, learning-rate schedules and early stopping (sparsegat.optim), checked against
torch.nn.utils.clip_grad_norm_/clip_grad_value_ and torch.optim.lr_scheduler where torch is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsegat import datasets, nn, optim

from test_device_structures import DeviceArray, _unwrap, _wrap, fake_xp  # noqa: F401  (fixture)

try:  # the comparisons with PyTorch skip without it; the rest runs anyway
    import torch
except ImportError:  # pragma: no cover - torch is an optional extra
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def model_with_grads(seed=0, dtype=np.float64, scale=1.0):
    """A nested model whose parameters all have gradients (random, ``scale`` times N(0, 1))."""
    model = nn.Sequential(nn.Linear(5, 4, dtype=dtype, seed=seed), nn.ELU(),
                          nn.Sequential(nn.Linear(4, 3, dtype=dtype, seed=seed + 1)))
    rng = np.random.default_rng(seed)
    for _, layer, key in model.named_parameters():
        layer.grads[key] = (scale * rng.standard_normal(layer.params[key].shape)).astype(dtype)
    return model


def grads_of(model):
    return [layer.grads[key].copy() for _, layer, key in model.named_parameters() if key in layer.grads]


def torch_params(model):
    out = []
    for _, layer, key in model.named_parameters():
        p = torch.nn.Parameter(torch.from_numpy(layer.params[key].copy()))
        p.grad = torch.from_numpy(layer.grads[key].copy())
        out.append(p)
    return out


# ---------------------------------------------------------------------- clipping
@needs_torch
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, dtype):
    model = model_with_grads(dtype=dtype)
    ref = torch_params(model)
    total_ref = float(torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type=norm_type))
    total = optim.clip_grad_norm_(model, max_norm, norm_type=norm_type)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert total == pytest.approx(total_ref, rel=rtol)
    for g, p in zip(grads_of(model), ref):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=rtol, atol=0)
    if max_norm == 0.5:  # clipped: the new total norm is max_norm
        assert optim.clip_grad_norm_(model, 1e9, norm_type=norm_type) == pytest.approx(0.5, rel=1e-5)


def test_clip_grad_norm_leaves_small_gradients_alone_bit_for_bit():
    model = model_with_grads(scale=1e-3)
    before = grads_of(model)
    total = optim.clip_grad_norm_(model.parameters(), 1.0)
    assert 0 < total < 1.0
    for a, b in zip(before, grads_of(model)):
        np.testing.assert_array_equal(a, b)


def test_clip_grad_norm_is_the_norm_of_all_gradients_as_one_vector():
    model = model_with_grads(scale=10.0)
    flat = np.concatenate([g.ravel() for g in grads_of(model)])
    total = optim.clip_grad_norm_(model, 2.0)
    assert total == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    clipped = np.concatenate([g.ravel() for g in grads_of(model)])
    np.testing.assert_allclose(clipped, flat * 2.0 / (total + 1e-6), rtol=1e-12)


def test_clip_skips_parameters_without_gradients_and_takes_lists_of_models():
    a, b = model_with_grads(seed=1, scale=5.0), model_with_grads(seed=2, scale=5.0)
    a[0].grads.pop("W")
    flat = np.concatenate([g.ravel() for m in (a, b) for g in grads_of(m)])
    total = optim.clip_grad_norm_([a, b.parameters()], 1.0)
    assert total == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    assert "W" not in a[0].grads
    assert optim.clip_grad_norm_(nn.Sequential(nn.ELU()), 1.0) == 0.0  # nothing to clip


def test_clip_replaces_gradient_arrays_instead_of_writing_into_them():
    model = model_with_grads(scale=10.0)
    held = model[0].grads["W"]
    kept = held.copy()
    optim.clip_grad_norm_(model, 1.0)
    assert model[0].grads["W"] is not held
    np.testing.assert_array_equal(held, kept)


@needs_torch
def test_clip_grad_norm_nonfinite_as_torch():
    model = model_with_grads()
    model[0].grads["b"][0] = np.inf
    before = grads_of(model)
    with pytest.raises(RuntimeError, match="total norm"):
        optim.clip_grad_norm_(model, 1.0, error_if_nonfinite=True)
    for a, b in zip(before, grads_of(model)):  # nothing changed
        np.testing.assert_array_equal(a, b)
    ref = torch_params(model)
    total_ref = float(torch.nn.utils.clip_grad_norm_(ref, 1.0))
    total = optim.clip_grad_norm_(model, 1.0)
    assert math.isinf(total) and math.isinf(total_ref)
    for g, p in zip(grads_of(model), ref):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(p.grad.numpy()))


@needs_torch
@pytest.mark.parametrize("clip_value", [0.0, 0.3, 10.0])
def test_clip_grad_value_matches_torch(clip_value):
    model = model_with_grads()
    model[2][0].grads["b"][1] = np.nan
    ref = torch_params(model)
    torch.nn.utils.clip_grad_value_(ref, clip_value)
    assert optim.clip_grad_value_(model, clip_value) is None
    for g, p in zip(grads_of(model), ref):
        np.testing.assert_array_equal(g, p.grad.numpy())
    assert np.nanmax(np.abs(np.concatenate([g.ravel() for g in grads_of(model)]))) <= clip_value


def test_clip_arguments_are_checked():
    model = model_with_grads()
    for bad, exc in ((-1.0, ValueError), (float("nan"), ValueError), ("1", TypeError), (True, TypeError)):
        with pytest.raises(exc, match="max_norm"):
            optim.clip_grad_norm_(model, bad)
        with pytest.raises(exc, match="clip_value"):
            optim.clip_grad_value_(model, bad)
    with pytest.raises(ValueError, match="norm_type"):
        optim.clip_grad_norm_(model, 1.0, norm_type=0)
    with pytest.raises(TypeError, match="model"):
        optim.clip_grad_norm_(3, 1.0)
    with pytest.raises(TypeError, match=r"model\[0\]"):
        optim.clip_grad_norm_([np.zeros(3)], 1.0)
    model[0].grads["W"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="'0.W'.*shape"):
        optim.clip_grad_norm_(model, 1.0)


def test_clipping_on_the_cupy_path(fake_xp):
    # The namespace functions the clipping code uses, with CuPy's signatures.
    for name in ("abs", "power", "clip"):
        f = getattr(np, name)
        setattr(fake_xp, name, lambda *a, _f=f, **k: _wrap(_f(*_unwrap(a), **_unwrap(k))))
    device = model_with_grads(scale=3.0).to("cupy")
    expected = model_with_grads(scale=3.0)
    assert isinstance(device[0].grads["W"], DeviceArray)
    total = optim.clip_grad_norm_(device, 1.0)
    assert total == pytest.approx(optim.clip_grad_norm_(expected, 1.0), rel=1e-12) and total > 1.0
    for (_, la, ka), (_, lb, kb) in zip(device.named_parameters(), expected.named_parameters()):
        assert isinstance(la.grads[ka], DeviceArray)
        np.testing.assert_allclose(la.grads[ka].get(), lb.grads[kb], rtol=1e-12)
    assert optim.clip_grad_norm_(device, 1e9, norm_type=math.inf) == pytest.approx(
        max(np.abs(g).max() for g in grads_of(expected)), rel=1e-12)
    assert optim.clip_grad_norm_(device, 1e9, norm_type=3.0) == pytest.approx(
        optim.clip_grad_norm_(expected, 1e9, norm_type=3.0), rel=1e-12)
    optim.clip_grad_value_(device, 0.01)
    assert all(np.abs(layer.grads[key].get()).max() <= 0.01 for _, layer, key in device.named_parameters())


# ---------------------------------------------------------------------- learning-rate schedules
def ours_and_torch(make_ours, make_torch, epochs=40, lr=0.1):
    model = nn.Linear(2, 2, seed=0)
    opt = optim.SGD(model, lr=lr)
    sched = make_ours(opt)
    ours = [opt.lr]
    for _ in range(epochs):
        sched.step()
        ours.append(opt.lr)
        assert sched.get_last_lr() == [opt.lr]
    if torch is None:
        return np.array(ours), None
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    topt = torch.optim.SGD([p], lr=lr)
    tsched = make_torch(topt)
    ref = [topt.param_groups[0]["lr"]]
    for _ in range(epochs):
        topt.step()
        tsched.step()
        ref.append(topt.param_groups[0]["lr"])
    return np.array(ours), np.array(ref)


def _torch_sched():
    return torch.optim.lr_scheduler


SCHEDULES = {
    "step": (lambda o: optim.StepLR(o, step_size=7, gamma=0.5),
             lambda o: _torch_sched().StepLR(o, step_size=7, gamma=0.5)),
    "cosine": (lambda o: optim.CosineAnnealingLR(o, T_max=15, eta_min=1e-3),
               lambda o: _torch_sched().CosineAnnealingLR(o, T_max=15, eta_min=1e-3)),
    "linear_warmup": (lambda o: optim.LinearLR(o, start_factor=0.1, total_iters=5),
                      lambda o: _torch_sched().LinearLR(o, start_factor=0.1, total_iters=5)),
    "linear_defaults": (lambda o: optim.LinearLR(o), lambda o: _torch_sched().LinearLR(o)),
    "warmup_then_cosine": (
        lambda o: optim.SequentialLR(o, [optim.LinearLR(o, start_factor=0.01, total_iters=4),
                                         optim.CosineAnnealingLR(o, T_max=20)], milestones=[4]),
        lambda o: _torch_sched().SequentialLR(o, [_torch_sched().LinearLR(o, start_factor=0.01, total_iters=4),
                                                  _torch_sched().CosineAnnealingLR(o, T_max=20)], milestones=[4])),
    "three_stages": (
        lambda o: optim.SequentialLR(o, [optim.LinearLR(o, 0.2, total_iters=3), optim.StepLR(o, 4, 0.5),
                                         optim.CosineAnnealingLR(o, 9, 0.005)], milestones=[3, 15]),
        lambda o: _torch_sched().SequentialLR(o, [_torch_sched().LinearLR(o, 0.2, total_iters=3),
                                                  _torch_sched().StepLR(o, 4, 0.5),
                                                  _torch_sched().CosineAnnealingLR(o, 9, 0.005)],
                                              milestones=[3, 15])),
}


@needs_torch
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_match_torch(name):
    ours, ref = ours_and_torch(*SCHEDULES[name])
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_schedules_closed_forms():
    ours, _ = ours_and_torch(*SCHEDULES["step"], epochs=15)
    np.testing.assert_allclose(ours, 0.1 * 0.5 ** (np.arange(16) // 7), rtol=1e-15)
    ours, _ = ours_and_torch(*SCHEDULES["cosine"], epochs=15)
    assert ours[0] == pytest.approx(0.1) and ours[15] == pytest.approx(1e-3) and np.all(np.diff(ours) < 0)
    ours, _ = ours_and_torch(*SCHEDULES["linear_warmup"], epochs=8)
    np.testing.assert_allclose(ours, [0.01, 0.028, 0.046, 0.064, 0.082, 0.1, 0.1, 0.1, 0.1], rtol=1e-12)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_state_dict_resumes(name):
    make = SCHEDULES[name][0]
    model = nn.Linear(2, 2, seed=0)
    opt = optim.SGD(model, lr=0.1)
    sched = make(opt)
    for _ in range(9):
        sched.step()
    saved_sched, saved_opt = sched.state_dict(), opt.state_dict()
    rest = []
    for _ in range(10):
        sched.step()
        rest.append(opt.lr)
    model2 = nn.Linear(2, 2, seed=0)
    opt2 = optim.SGD(model2, lr=0.1)
    sched2 = make(opt2)
    sched2.load_state_dict(saved_sched)
    opt2.load_state_dict(saved_opt)
    assert sched2.last_epoch == 9 and sched2.get_last_lr() == [saved_opt["hyper"]["lr"]]
    again = []
    for _ in range(10):
        sched2.step()
        again.append(opt2.lr)
    assert again == rest


def test_schedule_arguments_and_state_are_checked():
    opt = optim.SGD(nn.Linear(2, 2, seed=0), lr=0.1)
    with pytest.raises(ValueError, match="step_size"):
        optim.StepLR(opt, step_size=0)
    with pytest.raises(TypeError, match="step_size"):
        optim.StepLR(opt, step_size=2.5)
    with pytest.raises(ValueError, match="gamma"):
        optim.StepLR(opt, 3, gamma=0.0)
    with pytest.raises(ValueError, match="T_max"):
        optim.CosineAnnealingLR(opt, T_max=-1)
    with pytest.raises(ValueError, match="eta_min"):
        optim.CosineAnnealingLR(opt, T_max=3, eta_min=float("inf"))
    with pytest.raises(ValueError, match="start_factor"):
        optim.LinearLR(opt, start_factor=0.0)
    with pytest.raises(ValueError, match="end_factor"):
        optim.LinearLR(opt, end_factor=1.5)
    with pytest.raises(TypeError, match="optimizer"):
        optim.StepLR(object(), 3)
    a, b = optim.LinearLR(opt, 0.5, total_iters=2), optim.StepLR(opt, 3)
    with pytest.raises(ValueError, match="milestones"):
        optim.SequentialLR(opt, [a, b], milestones=[])
    with pytest.raises(ValueError, match="increase"):
        optim.SequentialLR(opt, [a, b, optim.StepLR(opt, 2)], milestones=[4, 4])
    other = optim.SGD(nn.Linear(2, 2, seed=1), lr=0.1)
    with pytest.raises(ValueError, match="another optimizer"):
        optim.SequentialLR(opt, [a, optim.StepLR(other, 3)], milestones=[2])
    sched = optim.StepLR(opt, 3)
    state = sched.state_dict()
    for bad, exc in (({**state, "type": "CosineAnnealingLR"}, ValueError), ({**state, "gamma": -1.0}, ValueError),
                     ({**state, "last_epoch": -3}, ValueError), ({**state, "surprise": 1}, ValueError),
                     ("state", TypeError)):
        with pytest.raises(exc):
            sched.load_state_dict(bad)
    assert sched.state_dict() == state  # nothing changed


def test_schedulers_share_the_initial_lr():
    opt = optim.SGD(nn.Linear(2, 2, seed=0), lr=0.2)
    optim.LinearLR(opt, start_factor=0.1, total_iters=3)  # sets lr to 0.02 ...
    cosine = optim.CosineAnnealingLR(opt, T_max=5)         # ... but decays from 0.2
    assert cosine.base_lr == 0.2 and opt.initial_lr == 0.2 and opt.lr == pytest.approx(0.2)


# ---------------------------------------------------------------------- early stopping
def test_early_stopping_tracks_the_best_and_stops_after_patience():
    model = nn.Linear(2, 2, seed=0, dtype=np.float64)
    stopper = optim.EarlyStopping(model, patience=3)
    scores = [0.2, 0.5, 0.4, 0.5, 0.45, 0.3, 0.9]
    stops = []
    for i, s in enumerate(scores):
        model.params["W"][...] = i  # the state at step i + 1
        stops.append(stopper.step(s))
        if stops[-1]:
            break
    assert stops == [False, False, False, False, True]  # the tie at 0.5 does not count
    assert stopper.best_epoch == 2 and stopper.best_score == 0.5 and stopper.num_bad_steps == 3
    assert stopper.restore_best() is model
    assert (model.params["W"] == 1).all()  # the copy was not changed by later steps


def test_early_stopping_min_mode_delta_and_nan():
    model = nn.Linear(2, 2, seed=0)
    stopper = optim.EarlyStopping(model, mode="min", min_delta=0.1)
    assert not stopper.step(1.0) and stopper.improved
    stopper.step(0.95)                      # not better by 0.1
    assert not stopper.improved and stopper.best_score == 1.0
    stopper.step(float("nan"))
    assert not stopper.improved and stopper.num_bad_steps == 2
    stopper.step(np.float32(0.5))
    assert stopper.improved and stopper.best_epoch == 4 and not stopper.should_stop  # no patience: never stops


def test_early_stopping_checks_and_state_dict():
    model = nn.Linear(2, 2, seed=0)
    with pytest.raises(ValueError, match="patience"):
        optim.EarlyStopping(model, patience=0)
    with pytest.raises(ValueError, match="mode"):
        optim.EarlyStopping(model, mode="best")
    with pytest.raises(ValueError, match="min_delta"):
        optim.EarlyStopping(model, min_delta=-1)
    with pytest.raises(TypeError, match="model"):
        optim.EarlyStopping({"W": np.zeros(2)})
    stopper = optim.EarlyStopping(model, patience=2)
    with pytest.raises(RuntimeError, match="no best state"):
        stopper.restore_best()
    with pytest.raises(TypeError, match="score"):
        stopper.step("0.5")
    stopper.step(0.3)
    stopper.step(0.1)
    state = stopper.state_dict()
    fresh = optim.EarlyStopping(model)
    fresh.load_state_dict(state)
    assert (fresh.best_score, fresh.best_epoch, fresh.num_bad_steps, fresh.patience) == (0.3, 1, 1, 2)
    assert fresh.step(0.2) and fresh.should_stop
    bad = {**state, "best_state": {"W": np.zeros((5, 5))}}
    with pytest.raises(ValueError, match="best_state"):
        fresh.load_state_dict(bad)


def test_early_stopping_on_the_cupy_path(fake_xp):
    model = nn.Linear(2, 2, seed=0).to("cupy")
    stopper = optim.EarlyStopping(model, patience=1)
    stopper.step(0.5)
    assert isinstance(stopper.best_state["W"], DeviceArray)
    model.params["W"][...] = fake_xp.zeros((2, 2), dtype=np.float32)
    stopper.step(0.4)
    stopper.restore_best()
    assert np.abs(model.params["W"].get()).sum() > 0


def test_the_pieces_together_learn():
    """A short hand-written loop with every helper: the schedule and clipping act, training still learns."""
    data = datasets.synthetic(seed=0)
    model = nn.Sequential(nn.Dropout(0.5, seed=0), nn.GATConv(data.num_features, 8, heads=4, dropout=0.5, seed=1),
                          nn.ELU(), nn.GATConv(32, data.num_classes, concat=False, seed=2))
    opt = optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    sched = optim.SequentialLR(opt, [optim.LinearLR(opt, 0.1, total_iters=5), optim.CosineAnnealingLR(opt, 35)],
                               milestones=[5])
    stopper = optim.EarlyStopping(model, patience=20)
    norms = []
    for _ in range(40):
        model.train()
        _, d = nn.softmax_cross_entropy(model(data.x, data.graph), data.y, data.train_mask)
        model.backward(d)
        norms.append(optim.clip_grad_norm_(model, 0.5))
        opt.step()
        sched.step()
        model.eval()
        if stopper.step(nn.accuracy(model(data.x, data.graph), data.y, data.val_mask)):
            break
    assert stopper.best_score > data.majority_accuracy(data.val_mask) + 0.05
    stopper.restore_best()
    assert nn.accuracy(model(data.x, data.graph), data.y, data.val_mask) == stopper.best_score
    assert max(norms) > 0.5  # clipping had something to do
