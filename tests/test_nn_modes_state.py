"""Modules as PyTorch users drive them: train()/eval() modes, parameters(), state_dict copies,
load_state_dict with its checks, zero_grad; on NumPy and on the strict fake CuPy of
test_device_structures (arrays NumPy cannot read, a namespace with only CuPy's functions)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from sparsegat import datasets, nn, optim
from sparsegat.arrays import array_kind

from test_device_structures import DeviceArray, fake_xp  # noqa: F401  (fixture)


def small_data():
    return datasets.synthetic(num_nodes=60, num_classes=3, num_features=6, flag_features=1, train_per_class=3,
                              num_val=10, num_test=20, distractors=0.0, seed=0)


def gat_model(seed=0, dropout=0.5):
    return nn.Sequential(nn.Dropout(dropout, seed=seed), nn.GATConv(6, 4, heads=2, dropout=dropout, seed=seed + 1),
                         nn.ELU(), nn.Sequential(nn.Dropout(dropout, seed=seed + 2),
                                                 nn.GATConv(8, 3, concat=False, seed=seed + 3)))


def all_layers(model):
    yield model
    for _, child in model.children():
        yield from all_layers(child)


# ---------------------------------------------------------------------- modes
def test_new_modules_evaluate_and_train_eval_set_every_layer():
    model = gat_model()
    assert not any(layer.training for layer in all_layers(model))  # eval at construction (see docs)
    assert model.train() is model
    assert all(layer.training for layer in all_layers(model))
    assert model.eval() is model
    assert not any(layer.training for layer in all_layers(model))
    with pytest.raises(TypeError, match="mode"):
        model.train("yes")


def test_forward_follows_the_mode_and_training_argument_overrides_it():
    data = small_data()
    x, g = data.x, data.graph
    model = gat_model()
    evaluated = model.forward(x, g)
    np.testing.assert_array_equal(model.forward(x, g), evaluated)  # eval: deterministic
    model.train()
    a, b = model.forward(x, g), model.forward(x, g)
    assert not np.allclose(a, b) and not np.allclose(a, evaluated)  # dropout draws afresh
    np.testing.assert_array_equal(model.forward(x, g, training=False), evaluated)  # override
    assert all(layer.training for layer in all_layers(model))  # an override does not change the mode
    model.eval()
    assert not np.allclose(model.forward(x, g, training=True), evaluated)


def test_training_mode_forward_equals_training_true_forward():
    """The mode and the argument give the same computation (same dropout draws, same gradients)."""
    data = small_data()
    by_mode, by_arg = gat_model(seed=3), gat_model(seed=3)
    by_mode.train()
    y1, y2 = by_mode.forward(data.x, data.graph), by_arg.forward(data.x, data.graph, training=True)
    np.testing.assert_array_equal(y1, y2)
    # an eval forward in between does not take the place of the training one in backward
    by_mode.forward(data.x, data.graph, training=False)
    by_mode.backward(np.ones_like(y1))
    by_arg.backward(np.ones_like(y2))
    for (n1, l1, k1), (n2, l2, k2) in zip(by_mode.named_parameters(), by_arg.named_parameters()):
        np.testing.assert_array_equal(l1.grads[k1], l2.grads[k2], err_msg=n1)


def test_layers_follow_their_own_mode_inside_a_container():
    data = small_data()
    model = gat_model()
    model.train()
    model[0].eval()                              # no input dropout, the rest in training
    x = data.x
    out = model[0].forward(x, data.graph)
    np.testing.assert_array_equal(out, x)
    assert not np.allclose(model.forward(x, data.graph), model.forward(x, data.graph))


# ---------------------------------------------------------------------- parameters
def test_parameters_iterates_the_live_arrays_of_nested_models():
    model = gat_model()
    params = model.parameters()
    arrays = list(params)
    named = list(model.named_parameters())
    assert len(params) == len(arrays) == len(named) == 8
    assert all(a is layer.params[key] for a, (_, layer, key) in zip(arrays, named))
    assert [n for n, _, _ in named][:4] == ["1.W", "1.att_src", "1.att_dst", "1.bias"]
    assert named[4][0] == "3.1.W"  # nested: "<index>.<index>.<name>"
    assert sum(a.size for a in params) == model.num_parameters()
    assert len(list(params)) == 8  # iterable again, unlike a generator


def test_optimizer_takes_model_parameters():
    data = small_data()
    a, b = gat_model(seed=1), gat_model(seed=1)
    opt_a, opt_b = optim.Adam(a, lr=0.01), optim.Adam(b.parameters(), lr=0.01)
    for model, opt in ((a, opt_a), (b, opt_b)):
        model.train()
        for _ in range(3):
            _, d = nn.softmax_cross_entropy(model.forward(data.x, data.graph), data.y, data.train_mask)
            model.backward(d)
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa, pb)
    assert set(opt_b.state_dict()["state"]) == {n for n, _, _ in b.named_parameters()}


# ---------------------------------------------------------------------- state_dict
def test_state_dict_holds_copies_and_keep_vars_the_live_arrays():
    model = gat_model()
    saved = model.state_dict()
    live = model.state_dict(keep_vars=True)
    assert list(saved) == [n for n, _, _ in model.named_parameters()]
    for name, layer, key in model.named_parameters():
        assert saved[name] is not layer.params[key] and live[name] is layer.params[key]
        np.testing.assert_array_equal(saved[name], layer.params[key])
        assert saved[name].dtype == layer.params[key].dtype
    before = {k: v.copy() for k, v in saved.items()}
    for p in model.parameters():
        p += 1.0  # training goes on, in place
    for k, v in saved.items():
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_round_trip_in_place_and_casts():
    a, b = gat_model(seed=0), gat_model(seed=5)
    shared = b[1].params["W"]
    res = b.load_state_dict({k: v.astype(np.float64) for k, v in a.state_dict().items()})
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert b[1].params["W"] is shared  # copied into the array: sharing survives
    for (n, la, ka), (_, lb, kb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(la.params[ka], lb.params[kb])
        assert lb.params[kb].dtype == np.float32
    data = small_data()
    np.testing.assert_array_equal(a.forward(data.x, data.graph), b.forward(data.x, data.graph))


def test_load_state_dict_refuses_mismatches_and_changes_nothing():
    a, b = gat_model(seed=0), gat_model(seed=5)
    good = a.state_dict()
    before = b.state_dict()

    def unchanged():
        for k, v in b.state_dict().items():
            np.testing.assert_array_equal(v, before[k])

    missing = dict(good)
    del missing["1.att_src"]
    with pytest.raises(ValueError, match=r"missing \['1.att_src'\]"):
        b.load_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected.*'9.W'"):
        b.load_state_dict({**good, "9.W": np.zeros(3)})
    with pytest.raises(ValueError, match=r"'1.W'.*shape \(6, 9\).*\(6, 8\)"):
        b.load_state_dict({**good, "1.W": np.zeros((6, 9), np.float32)})
    with pytest.raises(TypeError, match="'1.bias'.*int64"):
        b.load_state_dict({**good, "1.bias": np.zeros(8, np.int64)})
    with pytest.raises(TypeError, match="'1.bias'.*list"):
        b.load_state_dict({**good, "1.bias": [0.0] * 8})
    with pytest.raises(TypeError, match="mapping"):
        b.load_state_dict([("1.W", good["1.W"])])
    unchanged()
    # strict=False loads what both have and reports the rest
    partial = {"1.W": good["1.W"], "extra": np.zeros(1)}
    res = b.load_state_dict(partial, strict=False)
    assert res.unexpected_keys == ["extra"] and "1.att_src" in res.missing_keys and "1.W" not in res.missing_keys
    np.testing.assert_array_equal(b[1].params["W"], good["1.W"])
    np.testing.assert_array_equal(b[1].params["att_src"], before["1.att_src"])


def test_load_state_dict_replaces_a_read_only_parameter():
    a, b = nn.Linear(3, 2, seed=0), nn.Linear(3, 2, seed=1)
    b.params["W"].flags.writeable = False
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(b.params["W"], a.params["W"])


def test_zero_grad_clears_nested_gradients():
    data = small_data()
    model = gat_model()
    y = model.forward(data.x, data.graph, training=True)
    model.backward(np.ones_like(y))
    assert all(layer.grads for layer in all_layers(model) if layer.params)
    model.zero_grad()
    assert not any(layer.grads for layer in all_layers(model))


# ---------------------------------------------------------------------- the CuPy path (fake CuPy)
def test_state_dict_on_the_cupy_path(fake_xp):
    model = nn.Sequential(nn.Linear(4, 3, seed=0), nn.ELU(), nn.Linear(3, 2, seed=1, dtype=np.float64))
    host = model.state_dict()
    model.to("cupy")
    assert model.device == "cupy"
    saved = model.state_dict()
    assert all(isinstance(v, DeviceArray) for v in saved.values())  # the model's own array library
    assert all(v is not layer.params[key] for v, (_, layer, key) in zip(saved.values(), model.named_parameters()))
    for k, v in saved.items():
        np.testing.assert_array_equal(v.get(), host[k])
    # host arrays load into the device model: moved and cast, in place
    other = {k: np.full(v.shape, 2.5) for k, v in host.items()}
    w = model[0].params["W"]
    model.load_state_dict(other)
    assert model[0].params["W"] is w and array_kind(w) == "cupy"
    assert model[2].params["W"].dtype == np.float64 and model[0].params["W"].dtype == np.float32
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.get(), other[k])
    # device arrays load into a host model
    cpu = nn.Sequential(nn.Linear(4, 3, seed=5), nn.ELU(), nn.Linear(3, 2, seed=6, dtype=np.float64))
    cpu.load_state_dict(model.state_dict())
    for k, v in cpu.state_dict().items():
        assert isinstance(v, np.ndarray)
        np.testing.assert_array_equal(v, other[k])
    with pytest.raises(ValueError, match="shape"):
        model.load_state_dict({**model.state_dict(), "0.W": fake_xp.zeros((4, 4), dtype=np.float32)})


def test_deepcopy_keeps_the_mode():
    model = gat_model().train()
    clone = copy.deepcopy(model)
    assert all(layer.training for layer in all_layers(clone))
