"""Direction model: inference maths, edge cases and the model file format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import flashmm
from flashmm._core.features import FEATURE_NAMES, N_FEATURES
from flashmm._core.model import (
    N_OUT,
    OUT_CONFIDENCE,
    OUT_DIRECTION,
    OUT_MOVE_BPS,
    P_BEARISH,
    P_BULLISH,
    P_NEUTRAL,
    Model,
    ModelFile,
    ModelFileError,
    default_model_path,
    predict_batch,
    predict_into,
)

NF = N_FEATURES


def reference_predict(x, mean, std, weights, intercepts, move_weights, move_intercept):
    """The model written out in plain Python, independent of the kernel."""
    z = []
    for i in range(len(x)):
        s = std[i] if std[i] > 0 else 1.0
        z.append((x[i] - mean[i]) / s if math.isfinite(x[i]) else 0.0)
    logits = [intercepts[k] + sum(weights[k][i] * z[i] for i in range(len(z))) for k in range(3)]
    m = max(logits)
    e = [math.exp(v - m) for v in logits]
    p = [v / sum(e) for v in e]
    move = move_intercept + sum(move_weights[i] * z[i] for i in range(len(z)))
    return p, z, move


def sample_model() -> Model:
    rng = np.random.default_rng(7)
    return Model(
        mean=rng.normal(size=NF),
        std=rng.uniform(0.5, 2.0, size=NF),
        weights=rng.normal(size=(3, NF)),
        intercepts=[0.1, 0.5, -0.2],
        move_weights=rng.normal(size=NF),
        move_intercept=0.25,
        horizon_ms=250,
        neutral_band_bps=0.5,
        model_version="2024.01-test",
        metadata={"training_rows": 12345, "accuracy": 0.58, "data": "synthetic"},
    )


def model_dict(**changes) -> dict:
    d = {
        "format": "flashmm-model",
        "schema_version": 1,
        "model_version": "t1",
        "horizon_ms": 200,
        "feature_names": list(FEATURE_NAMES),
        "mean": [0.0] * NF,
        "std": [1.0] * NF,
        "weights": [[0.0] * NF for _ in range(3)],
        "intercepts": [0.0, 0.0, 0.0],
        "move_weights": [0.0] * NF,
        "move_intercept": 0.0,
        "neutral_band_bps": 0.5,
        "metadata": {},
    }
    d.update(changes)
    return d


def write(tmp_path: Path, data: dict | str, name: str = "model.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_output_layout() -> None:
    assert (P_BEARISH, P_NEUTRAL, P_BULLISH) == (0, 1, 2)
    indices = {P_BEARISH, P_NEUTRAL, P_BULLISH, OUT_DIRECTION, OUT_CONFIDENCE, OUT_MOVE_BPS}
    assert indices == set(range(N_OUT))
    assert N_OUT == 6


def test_predict_hand_checked_small_case() -> None:
    # Two informative features, the rest zero-weighted.
    x = np.zeros(NF)
    x[0], x[1] = 3.0, -1.0
    mean = np.zeros(NF)
    mean[0] = 1.0
    std = np.ones(NF)
    std[0] = 2.0  # z0 = (3 - 1) / 2 = 1, z1 = -1
    w = np.zeros((3, NF))
    w[0, 0], w[2, 0], w[2, 1] = -1.0, 1.0, -0.5  # logits: -1, 0, 1.5
    mw = np.zeros(NF)
    mw[0], mw[1] = 2.0, 1.0  # move = 0.5 + 2 - 1 = 1.5
    m = Model(
        mean=mean, std=std, weights=w, intercepts=[0, 0, 0], move_weights=mw, move_intercept=0.5
    )
    out = m.predict(x)
    e = [math.exp(-1.0), 1.0, math.exp(1.5)]
    assert out[:3] == pytest.approx([v / sum(e) for v in e])
    assert out[OUT_DIRECTION] == 1.0
    assert out[OUT_CONFIDENCE] == pytest.approx(e[2] / sum(e))
    assert out[OUT_MOVE_BPS] == pytest.approx(1.5)
    assert m.scratch[:2].tolist() == [1.0, -1.0]
    assert out is m.out


def test_predict_matches_reference_on_random_inputs() -> None:
    m = sample_model()
    rng = np.random.default_rng(11)
    for _ in range(20):
        x = rng.normal(scale=3.0, size=NF)
        p, z, move = reference_predict(
            x, m.mean, m.std, m.weights, m.intercepts, m.move_weights, m.move_intercept
        )
        out = m.predict(x)
        assert out[:3] == pytest.approx(p, rel=1e-12, abs=1e-15)
        assert out[OUT_DIRECTION] == float(int(np.argmax(p)) - 1)
        assert out[OUT_CONFIDENCE] == pytest.approx(max(p))
        assert out[OUT_MOVE_BPS] == pytest.approx(move)
        assert m.scratch == pytest.approx(z)


def test_non_positive_std_counts_as_one() -> None:
    # The file format rejects negative std, the kernel still treats <= 0 as a constant feature.
    mean = np.full(NF, 2.0)
    std = np.ones(NF)
    std[0], std[1] = 0.0, -3.0
    w = np.zeros((3, NF))
    w[2, 0], w[2, 1] = 1.0, 1.0
    scratch = np.zeros(NF)
    out = np.zeros(N_OUT)
    x = np.full(NF, 2.0)
    x[0], x[1] = 5.0, 1.0
    predict_into(x, mean, std, w, np.zeros(3), np.zeros(NF), 0.0, scratch, out)
    assert scratch[:2].tolist() == [3.0, -1.0]
    e = [1.0, 1.0, math.exp(2.0)]
    assert out[P_BULLISH] == pytest.approx(e[2] / sum(e))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_feature_counts_as_mean(bad: float) -> None:
    m = sample_model()
    x = np.linspace(-1, 1, NF)
    x_mean = x.copy()
    x_mean[3] = m.mean[3]
    x_bad = x.copy()
    x_bad[3] = bad
    expected = m.predict(x_mean).copy()
    got = m.predict(x_bad)
    assert np.all(np.isfinite(got))
    assert np.array_equal(got, expected)
    assert m.scratch[3] == 0.0


def test_all_features_nan_gives_the_intercept_prediction() -> None:
    m = sample_model()
    out = m.predict(np.full(NF, np.nan))
    e = [math.exp(v) for v in m.intercepts]
    assert out[:3] == pytest.approx([v / sum(e) for v in e])
    assert out[OUT_MOVE_BPS] == pytest.approx(m.move_intercept)


def test_softmax_with_huge_logits() -> None:
    m = Model.zeros()
    m.intercepts[:] = [1000.0, 0.0, -1000.0]  # exp(1000) overflows without the shift
    out = m.predict(np.zeros(NF))
    assert out[:3].tolist() == [1.0, 0.0, 0.0]
    assert out[OUT_DIRECTION] == -1.0
    assert out[OUT_CONFIDENCE] == 1.0
    # Huge through the weights as well: logits 1e6, 1e6 - 1, -1e6.
    m.intercepts[:] = 0.0
    m.weights[0, 0], m.weights[1, 0], m.weights[2, 0] = 1e3, 1e3, -1e3
    m.intercepts[1] = -1.0
    x = np.zeros(NF)
    x[0] = 1e3
    out = m.predict(x)
    assert np.all(np.isfinite(out))
    assert out[P_BEARISH] == pytest.approx(1 / (1 + math.exp(-1)))
    assert out[P_NEUTRAL] == pytest.approx(math.exp(-1) / (1 + math.exp(-1)))
    assert out[P_BULLISH] == 0.0
    assert out[:3].sum() == pytest.approx(1.0)


def test_ties_resolve_to_neutral() -> None:
    m = Model.zeros()
    m.intercepts[:] = [800.0, -5.0, 800.0]  # bearish == bullish
    out = m.predict(np.zeros(NF))
    assert out[OUT_DIRECTION] == 0.0
    assert out[OUT_CONFIDENCE] == pytest.approx(0.5)
    m.intercepts[:] = [3.0, 3.0, 0.0]  # bearish == neutral
    assert m.predict(np.zeros(NF))[OUT_DIRECTION] == 0.0


def test_zeros_model_is_uniform() -> None:
    m = Model.zeros(horizon_ms=500)
    out = m.predict(np.arange(NF, dtype=float))
    assert out[:3] == pytest.approx([1 / 3] * 3)
    assert out[OUT_DIRECTION] == 0.0
    assert out[OUT_CONFIDENCE] == pytest.approx(1 / 3)
    assert out[OUT_MOVE_BPS] == 0.0
    assert m.horizon_ms == 500


def test_predict_batch_matches_single_predictions() -> None:
    m = sample_model()
    X = np.random.default_rng(3).normal(size=(50, NF))
    X[5, 2] = np.nan
    got = m.predict_batch(X)
    assert got.shape == (50, N_OUT)
    for r in range(50):
        assert np.array_equal(got[r], m.predict(X[r]))
    assert m.predict_batch(np.zeros((0, NF))).shape == (0, N_OUT)
    # The kernel itself, on caller-owned buffers.
    out = np.zeros((50, N_OUT))
    predict_batch(
        X,
        m.mean,
        m.std,
        m.weights,
        m.intercepts,
        m.move_weights,
        m.move_intercept,
        np.zeros(NF),
        out,
    )
    assert np.array_equal(out, got)


def test_predict_rejects_wrong_shapes() -> None:
    m = Model.zeros()
    with pytest.raises(ValueError, match="features"):
        m.predict(np.zeros(NF - 1))
    with pytest.raises(ValueError, match="shape"):
        m.predict_batch(np.zeros(NF))


# --------------------------------------------------------------------------- model file


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    m = sample_model()
    path = tmp_path / "m.json"
    m.save(path)
    loaded = Model.load(path)
    for name in ("mean", "std", "weights", "intercepts", "move_weights"):
        assert np.array_equal(getattr(loaded, name), getattr(m, name)), name
    assert loaded.move_intercept == m.move_intercept
    assert loaded.horizon_ms == 250
    assert loaded.neutral_band_bps == 0.5
    assert loaded.model_version == "2024.01-test"
    assert loaded.metadata == {"training_rows": 12345, "accuracy": 0.58, "data": "synthetic"}
    assert type(loaded.metadata["training_rows"]) is int
    X = np.random.default_rng(5).normal(size=(30, NF))
    assert np.array_equal(loaded.predict_batch(X), m.predict_batch(X))
    # Written atomically: nothing but the file itself is left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    doc = json.loads(path.read_text())
    assert doc["format"] == "flashmm-model"
    assert doc["schema_version"] == 1
    assert doc["feature_names"] == list(FEATURE_NAMES)


def test_to_file_from_file_round_trip() -> None:
    m = sample_model()
    mf = m.to_file()
    assert isinstance(mf, ModelFile)
    again = Model.from_file(mf)
    assert np.array_equal(again.weights, m.weights)
    assert again.to_file() == mf


def test_arrays_are_contiguous_float64() -> None:
    m = Model(
        mean=list(range(NF)),
        std=[1] * NF,
        weights=np.asfortranarray(np.ones((3, NF), dtype=np.float32)),
        intercepts=[0, 0, 0],
        move_weights=[0] * NF,
        move_intercept=0,
    )
    for arr in (m.mean, m.std, m.weights, m.intercepts, m.move_weights):
        assert arr.dtype == np.float64
        assert arr.flags.c_contiguous


def test_default_model_path() -> None:
    assert default_model_path() == Path(flashmm.__file__).parent / "models" / "default.json"


def test_packaged_default_model_is_real_and_reports_held_out_accuracy() -> None:
    m = Model.load_default()
    assert m.horizon_ms == 200
    assert np.any(m.weights != 0.0)  # fitted, not the uniform placeholder
    for key in ("test_accuracy", "test_majority_baseline", "test_log_loss", "test_samples"):
        assert key in m.metadata
    # held-out log loss beats the class prior: the model knows something
    assert m.metadata["test_log_loss"] < m.metadata["test_log_loss_prior"]
    p = m.predict(np.zeros(NF))
    assert p.shape == (N_OUT,)
    assert p[:3].sum() == pytest.approx(1.0)


# Every way a file can be wrong: (contents, the words the message must contain).
BAD_FILES = {
    "bad-json": ('{"format": "flashmm-model", ', "not a valid model file"),
    "not-an-object": ("[1, 2, 3]", "object"),
    "wrong-format": (model_dict(format="other-model"), "format"),
    "missing-format": ({k: v for k, v in model_dict().items() if k != "format"}, "format"),
    "schema-2": (model_dict(schema_version=2), "schema_version"),
    "schema-string": (model_dict(schema_version="1"), "schema_version"),
    "schema-bool": (model_dict(schema_version=True), "schema_version"),
    "missing-field": (
        {k: v for k, v in model_dict().items() if k != "move_intercept"},
        "move_intercept",
    ),
    "unknown-field": (model_dict(wieghts=[]), "wieghts"),
    "feature-missing": (model_dict(feature_names=list(FEATURE_NAMES)[:-1]), "feature_names"),
    "feature-unexpected": (
        model_dict(feature_names=[*list(FEATURE_NAMES)[:-1], "rsi_14"]),
        "rsi_14",
    ),
    "feature-order": (
        model_dict(feature_names=[FEATURE_NAMES[1], FEATURE_NAMES[0], *FEATURE_NAMES[2:]]),
        "order differs",
    ),
    "feature-duplicate": (
        model_dict(feature_names=[*FEATURE_NAMES, FEATURE_NAMES[0]]),
        "duplicated",
    ),
    "mean-short": (model_dict(mean=[0.0] * (NF - 1)), "mean"),
    "std-negative": (model_dict(std=[-1.0] + [1.0] * (NF - 1)), "std"),
    "weights-two-rows": (model_dict(weights=[[0.0] * NF] * 2), "weights"),
    "weights-ragged": (model_dict(weights=[[0.0] * NF, [0.0] * NF, [0.0]]), "weights"),
    "intercepts-four": (model_dict(intercepts=[0.0] * 4), "intercepts"),
    "move-weights-long": (model_dict(move_weights=[0.0] * (NF + 1)), "move_weights"),
    "weight-null": (
        model_dict(weights=[[0.0] * NF, [None] + [0.0] * (NF - 1), [0.0] * NF]),
        "weights",
    ),
    # JSON has no NaN or inf; an out-of-range literal is the nearest a file gets to one.
    "move-intercept-overflow": (
        json.dumps(model_dict()).replace('"move_intercept": 0.0', '"move_intercept": 1e999'),
        "move_intercept",
    ),
    "move-intercept-string": (model_dict(move_intercept="big"), "move_intercept"),
    "horizon-zero": (model_dict(horizon_ms=0), "horizon_ms"),
    "horizon-float": (model_dict(horizon_ms=200.5), "horizon_ms"),
    "band-negative": (model_dict(neutral_band_bps=-1.0), "neutral_band_bps"),
    "model-version-empty": (model_dict(model_version=""), "model_version"),
    "metadata-list": (model_dict(metadata={"x": [1, 2]}), "metadata"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_model_files_raise_model_file_error(tmp_path: Path, case: str) -> None:
    contents, words = BAD_FILES[case]
    path = write(tmp_path, contents)
    with pytest.raises(ModelFileError) as info:
        Model.load(path)
    msg = str(info.value)
    assert str(path) in msg
    assert words in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ModelFileError, match=r"nope\.json.*cannot read"):
        Model.load(path)
    with pytest.raises(ModelFileError, match="cannot read"):
        Model.load(tmp_path)  # a directory


def test_non_finite_values_in_memory_are_rejected() -> None:
    mf = Model.zeros().to_file()
    mf.weights[1][4] = math.inf
    with pytest.raises(ModelFileError, match=r"'weights'.*NaN or infinite"):
        Model.from_file(mf, source="mem.json")
    mf = Model.zeros().to_file()
    mf.move_intercept = math.nan
    with pytest.raises(ModelFileError, match=r"mem\.json: field 'move_intercept'"):
        Model.from_file(mf, source="mem.json")


def test_model_file_error_is_a_value_error() -> None:
    assert issubclass(ModelFileError, ValueError)


def test_valid_minimal_file_loads(tmp_path: Path) -> None:
    d = model_dict()
    del d["metadata"], d["horizon_ms"]  # both optional
    m = Model.load(write(tmp_path, d))
    assert m.horizon_ms == 200
    assert m.metadata == {}
