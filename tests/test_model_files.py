"""Model files that describe themselves (nn.save_model / nn.load_model), hostile files, and
`sparsegat predict` on what `sparsegat train --save` wrote."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import sparsegat
from sparsegat import cli, datasets, nn, train
from sparsegat.nn.params import MODEL_RECORD_KEY
from sparsegat.predict import input_width, predict

from test_train import last_json, write_dataset


def small_graph_data():
    return datasets.synthetic(num_nodes=40, num_classes=3, num_features=6, flag_features=1, train_per_class=3,
                              num_val=8, num_test=10, distractors=0.0, seed=0)


MODELS = {
    "train_gat": lambda: train.build_model("additive", 6, 3, hidden=3, heads=2),
    "train_gatv2": lambda: train.build_model("gatv2", 6, 3, hidden=3, heads=2, output_heads=2),
    "train_cosine": lambda: train.build_model("cosine", 6, 3, hidden=3, heads=2, dtype=np.float64),
    "every_option": lambda: nn.Sequential(
        nn.Linear(6, 5, bias=False, seed=0), nn.ReLU(),
        nn.Sequential(nn.GATConv(5, 2, heads=3, concat=False, negative_slope=0.1, residual=True, bias=False,
                                 add_self_loops=False, seed=1),
                      nn.ELU(alpha=0.5)),
        nn.GATv2Conv(2, 4, heads=2, share_weights=True, residual=True, seed=2),
        nn.Dropout(0.25),
        nn.GraphAttention(8, 3, heads=2, score="euclidean", residual=False, tau=0.5, learn_tau=False, seed=3),
        nn.Linear(6, 3, seed=4)),
    "graph_attention_streams": lambda: nn.Sequential(
        nn.GraphAttention(6, 2, heads=2, score="dot", seed=0), nn.ELU(),
        nn.GraphAttention(4, 3, score="cosine", residual=False, seed=1)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_and_load_model_round_trip(tmp_path, name):
    data = small_graph_data()
    model = MODELS[name]()
    for p in model.parameters():  # not the initialisation: the file must carry the values
        p += 0.01
    path = tmp_path / "m.npz"
    nn.save_model(model, path, metadata={"note": "x", "n": [1, 2]})
    loaded = nn.load_model(path)
    assert repr(loaded) == repr(model)
    assert not loaded.training
    assert list(loaded.state_dict()) == list(model.state_dict())
    for (name_a, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name_a)
        assert a.dtype == b.dtype
    np.testing.assert_array_equal(model.forward(data.x, data.graph), loaded.forward(data.x, data.graph))
    assert nn.read_model_file(path).metadata == {"note": "x", "n": [1, 2]}
    assert nn.read_model_file(path).version == sparsegat.__version__
    # a model file is a parameter file too
    again = MODELS[name]()
    nn.load_params(again, path)
    np.testing.assert_array_equal(again.forward(data.x, data.graph), model.forward(data.x, data.graph))


def test_edge_features_and_pair_inputs_round_trip(tmp_path):
    layers = [nn.GATConv((5, 3), 4, heads=2, edge_dim=2, fill_value=[0.5, -1.0], seed=0),
              nn.GATv2Conv(5, 4, edge_dim=3, fill_value="add", seed=1), nn.GATConv(5, 4, edge_dim=1, fill_value=2.0)]
    for layer in layers:
        nn.save_model(layer, tmp_path / "l.npz")
        loaded = nn.load_model(tmp_path / "l.npz", backend="numpy")
        assert repr(loaded) == repr(layer) and loaded.backend == "numpy"
        assert loaded.in_dim == layer.in_dim and loaded.edge_dim == layer.edge_dim
        np.testing.assert_array_equal(np.asarray(loaded.fill_value), np.asarray(layer.fill_value))


def test_the_file_is_plain_arrays_and_json(tmp_path):
    model = MODELS["train_gat"]()
    nn.save_model(model, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        assert set(f.files) == set(model.state_dict()) | {MODEL_RECORD_KEY}
        record = json.loads(f[MODEL_RECORD_KEY].tobytes().decode("utf-8"))
    assert record["format"] == "sparsegat.model" and record["sparsegat_version"] == sparsegat.__version__
    layers = record["architecture"]["layers"]
    assert [layer["type"] for layer in layers] == ["Dropout", "GATConv", "ELU", "Dropout", "GATConv"]
    assert layers[1]["args"]["in_dim"] == 6 and layers[4]["args"]["concat"] is False


def test_layers_a_file_cannot_describe_are_refused(tmp_path):
    class MyConv(nn.GATConv):
        pass

    with pytest.raises(ValueError, match=r"model\[1\].*MyConv.*save_params"):
        nn.save_model(nn.Sequential(nn.ELU(), MyConv(3, 2)), tmp_path / "m.npz")
    with pytest.raises(TypeError, match="metadata"):
        nn.save_model(nn.ELU(), tmp_path / "m.npz", metadata={"x": object()})
    with pytest.raises(TypeError, match="metadata"):
        nn.save_model(nn.ELU(), tmp_path / "m.npz", metadata={"x": float("nan")})
    assert not (tmp_path / "m.npz").exists()


# ---------------------------------------------------------------------- hostile and malformed files
def write_file(path, record, arrays=None):
    """A model file with the given record (dict, or raw str/bytes) and arrays."""
    raw = record if isinstance(record, (str, bytes)) else json.dumps(record)
    raw = raw.encode("utf-8") if isinstance(raw, str) else raw
    np.savez(path, **(arrays or {}), **{MODEL_RECORD_KEY: np.frombuffer(raw, np.uint8)})
    return path


def valid_record_and_arrays():
    model = nn.Sequential(nn.Linear(4, 3, seed=0), nn.ELU())
    return ({"format": "sparsegat.model", "format_version": 1, "sparsegat_version": "0.1.0",
             "architecture": {"type": "Sequential", "layers": [
                 {"type": "Linear", "args": {"in_dim": 4, "out_dim": 3, "bias": True, "dtype": "float32"}},
                 {"type": "ELU", "args": {"alpha": 1.0}}]},
             "metadata": {}}, model.state_dict())


def test_the_valid_hand_written_file_loads(tmp_path):
    record, arrays = valid_record_and_arrays()
    model = nn.load_model(write_file(tmp_path / "ok.npz", record, arrays))
    np.testing.assert_array_equal(model[0].params["W"], arrays["0.W"])


def _mutated(change):
    record, arrays = valid_record_and_arrays()
    record = json.loads(json.dumps(record))
    out = change(record, arrays)  # a (record, arrays) pair, or None after changing them in place
    return out if isinstance(out, tuple) else (record, arrays)


HOSTILE = {
    "not_json": (lambda r, a: ("{'format': 'sparsegat.model'", a), "not valid JSON"),
    "not_utf8": (lambda r, a: (b"\xff\xfe{}", a), "not valid JSON"),
    "nan_constant": (lambda r, a: (json.dumps(r).replace('"alpha": 1.0', '"alpha": NaN'), a), "not valid JSON"),
    "wrong_format": (lambda r, a: r.update(format="pickle"), "not a 'sparsegat.model' record"),
    "newer_format": (lambda r, a: r.update(format_version=2), "format 2.*upgrade"),
    "record_a_list": (lambda r, a: ([r], a), "not a 'sparsegat.model' record"),
    "extra_field": (lambda r, a: r.update(code="print(1)"), "unknown fields.*code"),
    "unknown_type": (lambda r, a: r["architecture"]["layers"].append({"type": "os.system", "args": {}}),
                     r"model\[2\].*unknown layer type 'os.system'"),
    "dunder_type": (lambda r, a: r["architecture"].update(type="__import__"), "unknown layer type '__import__'"),
    "type_not_a_string": (lambda r, a: r["architecture"]["layers"][0].update(type=["Linear"]), "unknown layer type"),
    "unknown_argument": (lambda r, a: r["architecture"]["layers"][0]["args"].update(seed=3),
                         r"model\[0\] \(Linear\) args: unknown 'seed'"),
    "missing_argument": (lambda r, a: r["architecture"]["layers"][0]["args"].pop("bias"), "missing 'bias'"),
    "string_for_int": (lambda r, a: r["architecture"]["layers"][0]["args"].update(in_dim="4"),
                       r"model\[0\].in_dim must be an integer"),
    "bool_for_int": (lambda r, a: r["architecture"]["layers"][0]["args"].update(out_dim=True), "out_dim"),
    "bad_dtype": (lambda r, a: r["architecture"]["layers"][0]["args"].update(dtype="object"), "dtype"),
    "constructor_refuses": (lambda r, a: r["architecture"]["layers"][1]["args"].update(alpha=-1.0),
                            r"model\[1\] \(ELU\): alpha must be positive"),
    "huge_sizes": (lambda r, a: r["architecture"]["layers"][0]["args"].update(in_dim=10 ** 6, out_dim=10 ** 6),
                   "more than the 15 numbers the file holds"),
    "wrong_shape": (lambda r, a: a.update({"0.W": np.zeros((3, 4), np.float32)}), r"'0.W'.*shape \(3, 4\)"),
    "integer_array": (lambda r, a: a.update({"0.b": np.zeros(3, np.int64)}), "'0.b'.*int64"),
    "missing_array": (lambda r, a: a.pop("0.b"), r"missing \['0.b'\]"),
    "unexpected_array": (lambda r, a: a.update({"7.W": np.zeros(2, np.float32)}), r"unexpected \['7.W'\]"),
    "layers_not_a_list": (lambda r, a: r["architecture"].update(layers={"0": 1}), "layers must be a list"),
    "deep_nesting": (lambda r, a: r.update(architecture=_nested(40)), "nested more than 32"),
    "very_deep_json": (lambda r, a: ('{"format": ' + "[" * 100000 + "]" * 100000 + "}", a), "not valid JSON|not a"),
    "metadata_not_object": (lambda r, a: r.update(metadata=[1]), "metadata must be a JSON object"),
}


def _nested(depth):
    spec = {"type": "ELU", "args": {"alpha": 1.0}}
    for _ in range(depth):
        spec = {"type": "Sequential", "layers": [spec]}
    return spec


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_malformed_model_files_are_refused_with_value_error(tmp_path, case):
    change, message = HOSTILE[case]
    record, arrays = _mutated(change)
    path = write_file(tmp_path / f"{case}.npz", record, arrays)
    with pytest.raises(ValueError, match=message) as info:
        nn.load_model(path)
    assert str(path) in str(info.value)


def test_files_that_are_not_model_files(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3, seed=0))
    nn.save_params(model, tmp_path / "params.npz")
    with pytest.raises(ValueError, match="no architecture record.*load_params"):
        nn.load_model(tmp_path / "params.npz")
    np.savez(tmp_path / "obj.npz", **{MODEL_RECORD_KEY: np.array([{"type": "Linear"}], dtype=object)})
    with pytest.raises(ValueError, match="object array"):
        nn.load_model(tmp_path / "obj.npz")
    np.savez(tmp_path / "text.npz", **{MODEL_RECORD_KEY: np.array('{"format": "sparsegat.model"}')})
    with pytest.raises(ValueError, match="uint8"):
        nn.load_model(tmp_path / "text.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable .npz"):
        nn.load_model(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        nn.load_model(tmp_path / "missing.npz")
    nn.save_model(model, tmp_path / "model.npz")
    with pytest.raises(ValueError, match="backend must be"):
        nn.load_model(tmp_path / "model.npz", backend="gpu")


def test_a_hostile_file_executes_nothing(tmp_path, monkeypatch):
    """Type names and arguments that would run code if anything evaluated or imported them."""
    marker = tmp_path / "ran"
    payloads = [f"__import__('pathlib').Path({str(marker)!r}).touch()", "subprocess.Popen", "builtins.eval"]
    for i, payload in enumerate(payloads):
        record, arrays = valid_record_and_arrays()
        record["architecture"]["layers"][1] = {"type": payload, "args": {"cmd": payload}}
        with pytest.raises(ValueError, match="unknown layer type"):
            nn.load_model(write_file(tmp_path / f"h{i}.npz", record, arrays))
        record, arrays = valid_record_and_arrays()
        record["architecture"]["layers"][1]["args"]["alpha"] = payload
        with pytest.raises(ValueError, match="alpha must be a finite number"):
            nn.load_model(write_file(tmp_path / f"a{i}.npz", record, arrays))
    assert not marker.exists()


# ---------------------------------------------------------------------- predict
def test_predict_returns_classes_and_probabilities():
    data = small_graph_data()
    model = MODELS["train_gat"]().train()
    pred = predict(model, data.x, data.graph)
    assert model.training  # the mode is left as it was
    logits = model.forward(data.x, data.graph, training=False)
    np.testing.assert_array_equal(pred.classes, logits.argmax(axis=1))
    assert pred.classes.dtype == np.int64 and pred.probabilities.shape == (data.num_nodes, 3)
    np.testing.assert_allclose(pred.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(pred.probabilities.argmax(axis=1), pred.classes)
    assert input_width(model) == 6 and input_width(nn.ELU()) is None
    with pytest.raises(ValueError, match="logits"):
        predict(MODELS["graph_attention_streams"]()[0], data.x, data.graph)


def run_cli(capsys, *args):
    rc = cli.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_predict_command_on_the_file_of_train_save(capsys, tmp_path):
    data_file = write_dataset(tmp_path / "d.npz")   # non-negative sparse features: row-normalised by train
    model_file = tmp_path / "best.npz"
    rc, out, err = run_cli(capsys, "train", "--data", str(data_file), "--epochs", "8", "--heads", "2", "--hidden",
                           "3", "--backend", "numpy", "--save", str(model_file), "--json", "--log-every", "0")
    assert rc == 0, err
    trained = last_json(out)
    saved = nn.read_model_file(model_file)
    assert saved.metadata["row_normalize"] is True and saved.metadata["best_epoch"] == trained["best_epoch"]
    pred_file, prob_file = tmp_path / "pred.npy", tmp_path / "prob.npy"
    rc, out, err = run_cli(capsys, "predict", "--model", str(model_file), "--data", str(data_file), "--out",
                           str(pred_file), "--probabilities", str(prob_file), "--backend", "numpy", "--json")
    assert rc == 0, err
    res = last_json(out)
    # the saved model is the best epoch's: predict reproduces its accuracies
    assert res["accuracy"]["val"] == pytest.approx(trained["val_accuracy"])
    assert res["accuracy"]["test"] == pytest.approx(trained["test_accuracy"])
    assert res["row_normalized"] is True and "accuracy" in out
    classes, prob = np.load(pred_file), np.load(prob_file)
    data = datasets.load_npz(data_file)
    assert classes.shape == (data.num_nodes,) and prob.shape == (data.num_nodes, data.num_classes)
    expected = predict(saved.model, datasets.row_normalize(data.x), data.graph)
    np.testing.assert_array_equal(classes, expected.classes)
    np.testing.assert_allclose(prob, expected.probabilities, rtol=1e-6)


def test_predict_command_on_the_synthetic_graph(capsys, tmp_path):
    model_file = tmp_path / "m.npz"
    assert run_cli(capsys, "train", "--epochs", "3", "--heads", "2", "--hidden", "2", "--save", str(model_file),
                   "--log-every", "0", "--backend", "numpy")[0] == 0
    rc, out, err = run_cli(capsys, "predict", "--model", str(model_file), "--json", "--backend", "numpy")
    assert rc == 0, err
    res = last_json(out)
    assert res["data"] == "synthetic" and res["row_normalized"] is False and sum(res["predicted_counts"]) == 2400


def test_predict_command_refuses_a_model_of_other_data(capsys, tmp_path):
    model_file = tmp_path / "m.npz"
    nn.save_model(train.build_model("additive", 6, 3, hidden=2, heads=2), model_file)
    wide = write_dataset(tmp_path / "wide.npz", sparse=False, x=np.ones((60, 9)))
    rc, out, err = run_cli(capsys, "predict", "--model", str(model_file), "--data", str(wide))
    assert rc == 1 and "takes 6 input features" in err and "has 9" in err and "Traceback" not in err
    more_classes = write_dataset(tmp_path / "c.npz", classes=5)
    rc, out, err = run_cli(capsys, "predict", "--model", str(model_file), "--data", str(more_classes))
    assert rc == 1 and "predicts 3 classes" in err


def test_predict_command_errors(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "predict")
    assert rc == 2 and "--model" in err
    rc, out, err = run_cli(capsys, "predict", "--model", str(tmp_path / "none.npz"))
    assert rc == 1 and "none.npz" in err
    record, arrays = valid_record_and_arrays()
    record["architecture"]["type"] = "Evil"
    bad = write_file(tmp_path / "bad.npz", record, arrays)
    rc, out, err = run_cli(capsys, "predict", "--model", str(bad))
    assert rc == 1 and "unknown layer type 'Evil'" in err and "Traceback" not in err
    rc, out, err = run_cli(capsys, "predict", "--model", str(bad), "--seed", "-1")
    assert rc == 2
    rc, out, err = run_cli(capsys, "--help")
    assert rc == 0 and "predict" in out
    assert os.path.exists(bad)
