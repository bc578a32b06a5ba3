"""`sparsegat train` and sparsegat.datasets: data files, arguments, errors, and short training runs."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from sparsegat import cli, datasets, nn, optim, train


def run_cli(capsys, *args):
    rc = train.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def write_dataset(path, n=60, classes=3, sparse=True, seed=0, **overrides):
    """A small valid data file in the layout of docs/data.md; ``overrides`` replace or (None) drop keys."""
    ds = datasets.synthetic(num_nodes=n, num_classes=classes, num_features=6, flag_features=1, train_per_class=3,
                            num_val=10, num_test=20, distractors=0.0, seed=seed)
    g = ds.graph
    arrays = dict(indptr=np.asarray(g.indptr, np.int64), indices=np.asarray(g.indices, np.int64),
                  y=ds.y, train_mask=ds.train_mask, val_mask=ds.val_mask, test_mask=ds.test_mask)
    x = np.abs(ds.x)
    if sparse:
        xs = sp.csr_matrix(x * (x > 0.8))
        arrays.update(x_indptr=xs.indptr.astype(np.int64), x_indices=xs.indices.astype(np.int64),
                      x_data=xs.data, x_shape=np.array(xs.shape, np.int64))
    else:
        arrays["x"] = x
    for k, v in overrides.items():
        if v is None:
            arrays.pop(k, None)
        else:
            arrays[k] = v
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------------- datasets
def test_synthetic_dataset_is_deterministic_and_well_formed():
    a, b = datasets.synthetic(seed=3), datasets.synthetic(seed=3)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert np.array_equal(np.asarray(a.graph.indices), np.asarray(b.graph.indices))
    assert not np.array_equal(datasets.synthetic(seed=4).y, a.y)
    assert a.graph.shape == (a.num_nodes, a.num_nodes)
    A = a.graph.to_scipy()
    assert (A != A.T).nnz == 0 and A.diagonal().sum() == 0  # symmetric, no self-loops
    masks = a.train_mask.astype(int) + a.val_mask + a.test_mask
    assert masks.max() == 1
    assert np.bincount(a.y[a.train_mask]).tolist() == [20] * a.num_classes
    assert a.num_nodes == 2400 and a.num_features == 16 and int(a.x[:, -1].sum()) == 2 * 800
    assert (a.val_mask.sum(), a.test_mask.sum()) == (500, 1000)
    assert a.x.dtype == np.float32 and not a.features_sparse
    assert "synthetic" in a.describe()
    with pytest.raises(ValueError, match="too small"):
        datasets.synthetic(num_nodes=100)


def test_row_normalize():
    x = np.array([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]], np.float32)
    out = datasets.row_normalize(x)
    np.testing.assert_allclose(out, [[0.25, 0.75], [0, 0], [0.5, 0.5]])
    assert out.dtype == np.float32
    xs = datasets.row_normalize(sp.csr_matrix(x))
    assert sp.issparse(xs) and xs.dtype == np.float32
    np.testing.assert_allclose(xs.toarray(), out)


@pytest.mark.parametrize("sparse", [True, False])
def test_load_npz_round_trip(tmp_path, sparse):
    path = write_dataset(tmp_path / "d.npz", sparse=sparse)
    ds = datasets.load_npz(path)
    assert ds.num_nodes == 60 and ds.num_classes == 3 and ds.features_sparse == sparse
    assert ds.name == "d" and ds.x.dtype == np.float32


BAD_FILES = [
    (dict(y=None), "missing arrays y"),
    (dict(x_data=None), "missing arrays x"),
    (dict(indptr=np.zeros(5, np.int64)), "indptr"),
    (dict(indices=np.full(10, 999, np.int64), indptr=np.r_[0, np.full(60, 10)].astype(np.int64)), "indices"),
    (dict(y=np.r_[-1, np.zeros(59, np.int64)]), "labels"),
    (dict(y=np.zeros(60)), "'y'"),
    (dict(train_mask=np.zeros(60, np.int64)), "train_mask"),
    (dict(test_mask=np.zeros(60, bool)), "selects no node"),
    (dict(x_shape=np.array([3, 6])), "x_shape"),
    (dict(x_indices=np.zeros(3, np.int64)), "feature CSR"),
    (dict(y=np.array(["a"] * 60, dtype=object)), "object"),
]


@pytest.mark.parametrize("overrides,message", BAD_FILES)
def test_load_npz_rejects_bad_files(tmp_path, overrides, message):
    path = write_dataset(tmp_path / "bad.npz", **overrides)
    with pytest.raises(datasets.DatasetError, match=message):
        datasets.load_npz(path)


def test_load_npz_rejects_non_archives(tmp_path):
    with pytest.raises(FileNotFoundError):
        datasets.load_npz(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(datasets.DatasetError, match="not a readable"):
        datasets.load_npz(tmp_path / "text.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(datasets.DatasetError, match="single array"):
        datasets.load_npz(tmp_path / "one.npy")
    with pytest.raises(datasets.DatasetError, match="directory"):
        datasets.load_npz(tmp_path)


def test_cora_file(cora_path):
    ds = datasets.load_npz(cora_path)
    assert (ds.num_nodes, ds.num_features, ds.num_classes, ds.graph.nnz) == (2708, 1433, 7, 10556)
    assert ds.features_sparse
    assert (ds.train_mask.sum(), ds.val_mask.sum(), ds.test_mask.sum()) == (140, 500, 1000)
    assert ds.majority_accuracy() == pytest.approx(0.319)


# ---------------------------------------------------------------------- the command line
@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "--epochs"),
    (["--dropout", "1.0"], "--dropout"),
    (["--lr", "-1"], "--lr"),
    (["--heads", "0"], "--heads"),
    (["--score", "nope"], "invalid choice"),
    (["--bogus"], "unrecognized"),
    (["--epochs", "ten"], "invalid int"),
    (["--score", "cosine", "--output-heads", "2"], "--output-heads"),
])
def test_bad_arguments(capsys, args, message):
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert "usage: sparsegat train" in err


def test_help(capsys):
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0 and "--data" in out and "--json" in out


def test_bad_files_give_clear_errors(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "--data", str(tmp_path / "missing.npz"))
    assert rc == 1 and "missing.npz" in err and "Traceback" not in err
    (tmp_path / "text.npz").write_text("not numpy")
    rc, out, err = run_cli(capsys, "--data", str(tmp_path / "text.npz"))
    assert rc == 1 and "not a readable .npz" in err
    write_dataset(tmp_path / "obj.npz", y=np.array([None] * 60, dtype=object))
    rc, out, err = run_cli(capsys, "--data", str(tmp_path / "obj.npz"))
    assert rc == 1 and "object" in err
    write_dataset(tmp_path / "nokeys.npz", indptr=None)
    rc, out, err = run_cli(capsys, "--data", str(tmp_path / "nokeys.npz"))
    assert rc == 1 and "missing arrays indptr" in err


def test_unavailable_backend_is_a_clear_error(capsys, tmp_path):
    import importlib.util

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("cupy is installed")
    rc, out, err = run_cli(capsys, "--backend", "cupy", "--epochs", "1")
    assert rc == 1 and "cupy" in err and "Traceback" not in err


def test_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sparsegat", "train", "--data", str(tmp_path / "x.npz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "x.npz" in proc.stderr


def test_small_file_json_and_save(capsys, tmp_path):
    path = write_dataset(tmp_path / "d.npz")
    save = tmp_path / "best.npz"
    rc, out, err = run_cli(capsys, "--data", str(path), "--epochs", "5", "--heads", "2", "--hidden", "3",
                           "--backend", "numpy", "--seed", "1", "--save", str(save), "--json", "--log-every", "2")
    assert rc == 0
    res = last_json(out)
    for key in ("test_accuracy", "val_accuracy", "train_seconds", "epochs", "best_epoch"):
        assert key in res
    assert res["epochs"] == 5 and res["backend"] == "numpy" and 1 <= res["best_epoch"] <= 5
    assert "epoch    2/5" in err and "epoch    5/5" in err  # progress on stderr
    assert "test accuracy" in out
    model = train.build_model("additive", 6, 3, hidden=3, heads=2)
    nn.load_params(model, save)
    # through the top-level command too, with another score
    rc = cli.main(["train", "--data", str(path), "--epochs", "2", "--score", "cosine", "--heads", "2",
                   "--hidden", "2", "--log-every", "0", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and last_json(out)["score"] == "cosine" and err == ""


@pytest.mark.parametrize("score", ["gatv2", "dot", "scaled_dot", "euclidean"])
def test_every_score_trains(capsys, tmp_path, score):
    path = write_dataset(tmp_path / "d.npz", sparse=False)
    rc, out, _ = run_cli(capsys, "--data", str(path), "--epochs", "3", "--score", score, "--heads", "2",
                         "--hidden", "2", "--json", "--log-every", "0")
    assert rc == 0 and last_json(out)["epochs"] == 3


def test_uniform_attention_freezes_attention(capsys, tmp_path):
    path = write_dataset(tmp_path / "d.npz")
    rc, out, _ = run_cli(capsys, "--data", str(path), "--epochs", "3", "--uniform-attention", "--json",
                         "--log-every", "0", "--save", str(tmp_path / "u.npz"))
    assert rc == 0 and last_json(out)["uniform_attention"] is True
    with np.load(tmp_path / "u.npz") as f:
        assert not f["1.att_src"].any() and not f["4.att_dst"].any()


# ---------------------------------------------------------------------- training for real
def test_synthetic_default_run_learns_and_attention_helps(capsys):
    """The README's main job, `sparsegat train` with no arguments, and its uniform-attention twin."""
    rc, out, err = run_cli(capsys, "--json", "--log-every", "0")
    assert rc == 0
    gat = last_json(out)
    assert gat["data"] == "synthetic" and gat["epochs"] == 300
    assert gat["test_accuracy"] > gat["majority_test_accuracy"] + 0.35, gat
    rc, out, err = run_cli(capsys, "--json", "--log-every", "0", "--uniform-attention")
    uniform = last_json(out)
    # attention measurably helps: 0.691 against 0.580 on seed 0 when this was written
    assert gat["test_accuracy"] > uniform["test_accuracy"] + 0.05, (gat, uniform)
    # ... because it learned to look away from the distractors (32% of the weight against 54%)
    assert gat["distractor_attention"] < gat["distractor_share"] - 0.1, gat
    assert uniform["distractor_attention"] == pytest.approx(uniform["distractor_share"], rel=1e-4)
    assert "distractor neighbours" in out


def test_cora_short_run(capsys, cora_path):
    rc, out, err = run_cli(capsys, "--data", str(cora_path), "--epochs", "100", "--json", "--log-every", "0")
    assert rc == 0
    res = last_json(out)
    assert res["majority_test_accuracy"] == pytest.approx(0.319)
    assert res["test_accuracy"] > 0.75, res


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt tuning applies to glibc only")
def test_keep_freed_memory_is_accepted_by_glibc():
    """glibc accepts all three malloc settings (mallopt returns 1 for each)."""
    from sparsegat._tuning import keep_freed_memory

    assert keep_freed_memory() is True


# ---------------------------------------------------------------------- process tuning
def test_quiet_openmp_workers_respects_user_settings():
    from sparsegat._tuning import quiet_openmp_workers

    env: dict[str, str] = {}
    assert quiet_openmp_workers(env) is True
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "30000"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert quiet_openmp_workers(env) is False and env == {"OMP_WAIT_POLICY": "ACTIVE"}
    env = {"GOMP_SPINCOUNT": "5"}
    assert quiet_openmp_workers(env) is True and env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "5"}


def test_limit_blas_threads_uses_threadpoolctl():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from sparsegat._tuning import limit_blas_threads

    def blas_threads():
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]

    if not blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can control")
    with threadpoolctl.threadpool_limits(limits=None):  # restores the original limits on exit
        assert limit_blas_threads(1) is True
        assert blas_threads() and set(blas_threads()) == {1}


def test_tuning_without_threadpoolctl_is_a_noop_with_a_note(monkeypatch, capsys, tmp_path):
    from sparsegat import _tuning

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import threadpoolctl raises ImportError
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert _tuning.limit_blas_threads(1) is False
    tuning = _tuning.tune_process(blas_threads=1)
    assert tuning.blas_threads is None and tuning.openmp_passive is False
    assert tuning.notes == (_tuning.NO_THREADPOOLCTL,) and "threadpoolctl is not installed" in tuning.notes[0]
    assert _tuning.tune_process(blas_threads=0).notes == ()  # not asked for: nothing to say
    # the command still trains, and says why the BLAS threads were left alone
    path = write_dataset(tmp_path / "d.npz")
    rc, out, err = run_cli(capsys, "--data", str(path), "--epochs", "1", "--backend", "numpy", "--log-every", "0")
    assert rc == 0 and "threadpoolctl is not installed" in err and "test accuracy" in out


# ---------------------------------------------------------------------- fit()
def small_problem(seed=0):
    data = datasets.synthetic(num_nodes=300, num_classes=3, num_features=8, flag_features=1, train_per_class=10,
                              num_val=60, num_test=120, distractors=0.0, signal=2.0, seed=seed)
    model = train.build_model("additive", data.num_features, data.num_classes, hidden=4, heads=2, dropout=0.2,
                              seed=seed, backend="numpy")
    return data, model, optim.Adam(model, lr=0.01, weight_decay=5e-4)


def val_accuracy(model, data):
    return nn.accuracy(model.forward(data.x, data.graph, training=False), data.y, data.val_mask)


def test_fit_learns_a_small_synthetic_problem(capsys):
    data, model, opt = small_problem()
    res = train.fit(model, data, opt, epochs=60, log_every=20)
    assert isinstance(res, train.FitResult) and len(res.history) == 60 and not res.stopped_early
    assert [s.epoch for s in res.history] == list(range(1, 61)) and res.last is res.history[-1]
    assert res.best.val == max(s.val for s in res.history)
    assert res.best.epoch == min(s.epoch for s in res.history if s.val == res.best.val)  # the first best
    majority = data.majority_accuracy()
    assert res.best.test > majority + 0.3, (res.best, majority)
    assert res.history[-1].loss < res.history[0].loss
    assert res.seconds >= res.first_epoch_seconds > 0
    err = capsys.readouterr().err
    assert [line.split()[1] for line in err.splitlines()] == ["1/60", "20/60", "40/60", "60/60"]
    # the model holds the best state (copies: training further does not change the record)
    assert val_accuracy(model, data) == pytest.approx(res.best.val)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, res.best_state[name])
        assert value is not res.best_state[name]


def test_fit_early_stopping_restores_the_best_state():
    data, model, opt = small_problem()
    res = train.fit(model, data, opt, epochs=200, patience=5)
    assert res.stopped_early and len(res.history) == res.best.epoch + 5 < 200
    assert res.last.val <= res.best.val
    assert val_accuracy(model, data) == pytest.approx(res.best.val)
    # the same run without restoring ends in the last epoch's state, which differs from the best
    data2, model2, opt2 = small_problem()
    res2 = train.fit(model2, data2, opt2, epochs=200, patience=5, restore_best=False)
    assert res2.best_state is None and res2.history == res.history  # deterministic
    assert val_accuracy(model2, data2) == pytest.approx(res.last.val)
    assert any(not np.array_equal(v, res.best_state[k]) for k, v in model2.state_dict().items())


def test_fit_freeze_and_arguments():
    data, model, opt = small_problem()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    train.fit(model, data, opt, epochs=3, freeze=["1.att_src", "4.W"], restore_best=False)
    after = model.state_dict()
    assert np.array_equal(after["1.att_src"], before["1.att_src"]) and np.array_equal(after["4.W"], before["4.W"])
    assert not np.array_equal(after["1.W"], before["1.W"])
    with pytest.raises(ValueError, match="epochs"):
        train.fit(model, data, opt, epochs=0)
    with pytest.raises(ValueError, match="patience"):
        train.fit(model, data, opt, patience=0)
    with pytest.raises(ValueError, match="nope"):
        train.fit(model, data, opt, freeze=["nope"])


def test_build_model_layout():
    model = train.build_model("gatv2", 10, 3, hidden=2, heads=2)
    assert [type(layer).__name__ for layer in model] == ["Dropout", "GATv2Conv", "ELU", "Dropout", "GATv2Conv"]
    assert all(name.split(".")[0] in ("1", "4") for name in model.state_dict())


# ---------------------------------------------------------------------- the selection rule, exactly
class Scripted(nn.Module):
    """A model whose evaluation forwards return scripted logits, one set per epoch; its single
    parameter ``w`` goes down by one per SGD(lr=1) step, so ``w == -epoch`` after each epoch."""

    def __init__(self, script, n):
        super().__init__(dtype=np.float64)
        self.params["w"] = np.zeros(1)
        self.script, self.n, self.evals = list(script), n, 0

    def forward(self, x, g=None, *, training=False):
        if training:
            self._save_for_backward(True, True)
            return np.zeros((self.n, 2))
        out = self.script[self.evals]
        self.evals += 1
        return out

    def _backward(self, saved, dy):
        self.grads["w"] = np.ones(1)
        return None


def scripted_run(val_correct, test_correct):
    """Data with 2 train, 4 val and 6 test nodes (all of class 0) and logits that get
    ``val_correct[e]`` val and ``test_correct[e]`` test nodes right at epoch ``e + 1``."""
    from types import SimpleNamespace

    n = 12
    train_idx, val_idx, test_idx = np.arange(2), np.arange(2, 6), np.arange(6, 12)
    script = []
    for v, t in zip(val_correct, test_correct):
        right = np.zeros(n, bool)
        right[:2] = True
        right[val_idx[:v]] = True
        right[test_idx[:t]] = True
        script.append(np.where(right[:, None], [[1.0, 0.0]], [[0.0, 1.0]]))
    data = SimpleNamespace(x=np.zeros((n, 1)), graph=None, y=np.zeros(n, np.int64), train_mask=train_idx,
                           val_mask=val_idx, test_mask=np.isin(np.arange(n), test_idx))
    model = Scripted(script, n)
    return model, data, optim.SGD(model, lr=1.0)


def test_fit_selects_the_first_epoch_of_best_validation_and_reports_its_test_accuracy():
    # val accuracy per epoch 0.25, 0.75, 0.5, 0.75, 0.75, 0.25: best is epoch 2 (the first 0.75),
    # whose test accuracy is 1/6 (epochs 4 and 5 tie on validation with test 4/6 and 5/6)
    val, test = [1, 3, 2, 3, 3, 1], [0, 1, 2, 4, 5, 6]
    model, data, opt = scripted_run(val, test)
    res = train.fit(model, data, opt, epochs=6)
    assert [s.val for s in res.history] == [v / 4 for v in val]
    assert [s.test for s in res.history] == [t / 6 for t in test]
    assert res.best.epoch == 2 and res.best.val == 0.75 and res.best.test == 1 / 6
    assert res.best is res.history[1] and res.last is res.history[5] and not res.stopped_early
    assert list(res.best_state) == ["w"] and res.best_state["w"].tolist() == [-2.0]
    assert model.params["w"].tolist() == [-2.0]  # restored: the state after epoch 2's step
    # patience counts from the first best epoch: 3 epochs without a better one stop at epoch 5
    model, data, opt = scripted_run(val, test)
    res = train.fit(model, data, opt, epochs=6, patience=3, restore_best=False)
    assert res.stopped_early and len(res.history) == 5 and res.best.epoch == 2
    assert res.best_state is None and model.params["w"].tolist() == [-5.0]


def test_fit_refuses_ambiguous_integer_split_masks():
    model, data, opt = scripted_run([1], [1])
    data.val_mask = np.isin(np.arange(12), [2, 3, 4, 5]).astype(np.int64)  # a 0/1 mask as integers
    with pytest.raises(TypeError, match="val_mask is an integer array of 12 zeros and ones"):
        train.fit(model, data, opt, epochs=1)
    data.val_mask = np.zeros(12, bool)
    with pytest.raises(ValueError, match="val_mask selects no node"):
        train.fit(model, data, opt, epochs=1)


def test_command_reports_the_best_epoch_of_fit(capsys, tmp_path, monkeypatch):
    """The summary of `sparsegat train` is the FitResult's best epoch (test accuracy at the first
    epoch of best validation accuracy) and its last epoch, figure for figure."""
    captured = []
    real_fit = train.fit

    def spy(*args, **kwargs):
        captured.append(real_fit(*args, **kwargs))
        return captured[-1]

    monkeypatch.setattr(train, "fit", spy)
    path = write_dataset(tmp_path / "d.npz")
    rc, out, _ = run_cli(capsys, "--data", str(path), "--epochs", "8", "--heads", "2", "--hidden", "3",
                         "--backend", "numpy", "--json", "--log-every", "0")
    assert rc == 0 and len(captured) == 1
    res, fitted = last_json(out), captured[0]
    best_val = max(s.val for s in fitted.history)
    first_best = next(s for s in fitted.history if s.val == best_val)
    assert fitted.best == first_best
    assert (res["best_epoch"], res["val_accuracy"], res["test_accuracy"]) == (first_best.epoch, first_best.val,
                                                                               first_best.test)
    last = fitted.history[-1]
    assert (res["final_val_accuracy"], res["final_test_accuracy"], res["final_train_loss"]) == (last.val, last.test,
                                                                                              last.loss)
    assert f"test accuracy {first_best.test:.3f} at the best validation epoch {first_best.epoch}" in out


def test_command_reports_best_and_last_epochs_as_fit_gives_them(capsys, tmp_path, monkeypatch):
    """With a history whose best and last epochs differ in every figure, the summary takes the
    test accuracy, validation accuracy and epoch from the best one and the final figures from the last."""
    history = [train.EpochStats(1, 1.5, 0.5, 0.40, 0.30), train.EpochStats(2, 1.2, 0.6, 0.70, 0.61),
               train.EpochStats(3, 1.1, 0.7, 0.70, 0.65), train.EpochStats(4, 0.9, 0.8, 0.55, 0.52)]

    def fake_fit(model, data, opt, **kwargs):
        return train.FitResult(history=history, best=history[1], seconds=0.5, first_epoch_seconds=0.2)

    monkeypatch.setattr(train, "fit", fake_fit)
    path = write_dataset(tmp_path / "d.npz")
    rc, out, _ = run_cli(capsys, "--data", str(path), "--epochs", "4", "--heads", "2", "--hidden", "3",
                         "--backend", "numpy", "--json", "--log-every", "0")
    assert rc == 0
    res = last_json(out)
    assert (res["best_epoch"], res["val_accuracy"], res["test_accuracy"]) == (2, 0.70, 0.61)
    assert (res["final_val_accuracy"], res["final_test_accuracy"], res["final_train_loss"]) == (0.55, 0.52, 0.9)
    assert "test accuracy 0.610 at the best validation epoch 2 (val 0.700); last epoch: val 0.550, test 0.520" in out
