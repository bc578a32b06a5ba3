"""nn.save_params / nn.load_params: round trips, strictness, and refusal of pickled arrays."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

import sparsegat as sg
from sparsegat import nn


def make(seed: int):
    return nn.Sequential(nn.Dropout(0.5), nn.GATConv(5, 3, heads=2, residual=True, seed=seed), nn.ELU(),
                         nn.GATv2Conv(6, 4, heads=1, concat=False, seed=seed + 1),
                         nn.GraphAttention(4, 2, heads=1, score="cosine", residual=False, seed=seed + 2))


def test_round_trip(tmp_path):
    a, b = make(0), make(10)
    path = tmp_path / "params.npz"
    nn.save_params(a, path)
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(a.state_dict())
    assert nn.load_params(b, path) is b
    for name, arr in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[name], arr)
        assert b.state_dict()[name].dtype == arr.dtype
    # the loaded model computes what the saved one does
    g = sg.CSRGraph.from_scipy(sp.random(7, 7, density=0.4, random_state=0))
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_array_equal(a.forward(x, g), b.forward(x, g))


def test_path_without_suffix_and_dtype_conversion(tmp_path):
    a = nn.Linear(3, 2, dtype=np.float64, seed=0)
    nn.save_params(a, tmp_path / "p")  # numpy appends .npz
    b = nn.Linear(3, 2, dtype=np.float32, seed=1)
    nn.load_params(b, tmp_path / "p.npz")
    assert b.params["W"].dtype == np.float32
    np.testing.assert_allclose(b.params["W"], a.params["W"], rtol=1e-6)


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, W=np.array([{"a": 1}, None], dtype=object), b=np.zeros(2))
    with pytest.raises(ValueError, match="object|pickl"):
        nn.load_params(nn.Linear(3, 2, seed=0), path)
    model = nn.Linear(3, 2, seed=0)
    model.params["W"] = np.empty((3, 2), dtype=object)
    with pytest.raises(ValueError, match="numeric"):
        nn.save_params(model, tmp_path / "out.npz")


def test_mismatches_are_errors_and_change_nothing(tmp_path):
    path = tmp_path / "p.npz"
    nn.save_params(nn.Linear(3, 2, seed=0), path)
    other = nn.Linear(4, 2, seed=1)
    before = other.params["W"].copy()
    with pytest.raises(ValueError, match="shape"):
        nn.load_params(other, path)
    np.testing.assert_array_equal(other.params["W"], before)
    with pytest.raises(ValueError, match="missing"):
        nn.load_params(nn.Linear(3, 2, bias=False, seed=0), path)
    with pytest.raises(ValueError, match="missing"):
        nn.load_params(nn.Sequential(nn.Linear(3, 2, seed=0)), path)
    loose = nn.Linear(3, 2, bias=False, seed=0)
    nn.load_params(loose, path, strict=False)  # unexpected 'b' ignored
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array|not a parameter file"):
        nn.load_params(loose, tmp_path / "single.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a parameter file"):
        nn.load_params(loose, tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        nn.load_params(loose, tmp_path / "missing.npz")
    with pytest.raises(TypeError):
        nn.save_params({"W": np.zeros(2)}, path)
    assert zipfile.is_zipfile(path)


def test_module_to_numpy_is_identity_and_bad_device():
    m = make(0)
    assert m.to("numpy") is m and m.device == "numpy"
    with pytest.raises(ValueError):
        m.to("gpu")
