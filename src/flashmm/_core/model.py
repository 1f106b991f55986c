"""Direction model: inference kernel and the versioned model file.

The model is a multinomial logistic regression over standardized features with three
classes, bearish / neutral / bullish (direction -1, 0, +1), plus a linear head for the
expected mid move in bps over ``horizon_ms``. Inference is ``@njit(cache=True)`` over
preallocated arrays; :class:`Model` holds those arrays and reads and writes the JSON file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import msgspec
import numba
import numpy as np

from flashmm._core.features import FEATURE_NAMES, N_FEATURES

CLASS_LABELS: tuple[str, ...] = ("bearish", "neutral", "bullish")
N_CLASSES = 3

# ``out`` layout of the inference kernels.
P_BEARISH = 0
P_NEUTRAL = 1
P_BULLISH = 2
OUT_DIRECTION = 3
OUT_CONFIDENCE = 4
OUT_MOVE_BPS = 5
N_OUT = 6

MODEL_FORMAT = "flashmm-model"
SCHEMA_VERSION = 1
DEFAULT_HORIZON_MS = 200


@numba.njit(cache=True)
def predict_into(
    x: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    weights: np.ndarray,
    intercepts: np.ndarray,
    move_weights: np.ndarray,
    move_intercept: float,
    scratch: np.ndarray,
    out: np.ndarray,
) -> None:
    """Predict one feature vector ``x`` (F,) into ``out`` (N_OUT,).

    ``scratch`` (F,) receives the standardized features z = (x - mean) / std. A std <= 0
    marks a constant feature and counts as 1. A NaN or infinite feature counts as its
    mean (z = 0): one missing input (say a return before enough history) must not turn
    the whole prediction into NaN, and z = 0 is the input the model knows least about.

    Direction is the argmax class; a tie resolves towards neutral, so a uniform
    prediction says "no view" rather than "bearish".
    """
    n = x.shape[0]
    l0 = intercepts[0]
    l1 = intercepts[1]
    l2 = intercepts[2]
    mv = move_intercept
    for i in range(n):
        xi = x[i]
        s = std[i]
        if not (s > 0.0):
            s = 1.0
        z = (xi - mean[i]) / s if math.isfinite(xi) else 0.0
        scratch[i] = z
        l0 += weights[0, i] * z
        l1 += weights[1, i] * z
        l2 += weights[2, i] * z
        mv += move_weights[i] * z
    # Softmax shifted by the largest logit: exp never overflows and the sum is >= 1.
    m = max(l0, max(l1, l2))
    e0 = math.exp(l0 - m)
    e1 = math.exp(l1 - m)
    e2 = math.exp(l2 - m)
    inv = 1.0 / (e0 + e1 + e2)
    p0 = e0 * inv
    p1 = e1 * inv
    p2 = e2 * inv
    out[P_BEARISH] = p0
    out[P_NEUTRAL] = p1
    out[P_BULLISH] = p2
    if p2 > p1 and p2 > p0:
        out[OUT_DIRECTION] = 1.0
        out[OUT_CONFIDENCE] = p2
    elif p0 > p1 and p0 > p2:
        out[OUT_DIRECTION] = -1.0
        out[OUT_CONFIDENCE] = p0
    else:
        out[OUT_DIRECTION] = 0.0
        out[OUT_CONFIDENCE] = max(p1, max(p0, p2))
    out[OUT_MOVE_BPS] = mv


@numba.njit(cache=True)
def predict_batch(
    X: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    weights: np.ndarray,
    intercepts: np.ndarray,
    move_weights: np.ndarray,
    move_intercept: float,
    scratch: np.ndarray,
    out: np.ndarray,
) -> None:
    """Predict every row of ``X`` (n, F) into ``out`` (n, N_OUT)."""
    for r in range(X.shape[0]):
        predict_into(
            X[r], mean, std, weights, intercepts, move_weights, move_intercept, scratch, out[r]
        )


# --------------------------------------------------------------------------- model file


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and the field."""


class _Header(msgspec.Struct):
    """The fields read before anything else, so a newer schema gets a clear message."""

    format: Any = None
    schema_version: Any = None


class ModelFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The JSON model file, schema version 1."""

    format: Literal["flashmm-model"] = MODEL_FORMAT
    schema_version: int = SCHEMA_VERSION
    model_version: str
    horizon_ms: int = DEFAULT_HORIZON_MS
    feature_names: list[str]
    mean: list[float]
    std: list[float]
    weights: list[list[float]]
    intercepts: list[float]
    move_weights: list[float]
    move_intercept: float
    neutral_band_bps: float
    metadata: dict[str, str | float | int] = msgspec.field(default_factory=dict)


def default_model_path() -> Path:
    """The model file shipped with the package."""
    return Path(__file__).parent.parent / "models" / "default.json"


def _feature_names_problem(names: list[str]) -> str | None:
    expected = list(FEATURE_NAMES)
    if names == expected:
        return None
    missing = [n for n in expected if n not in names]
    unexpected = [n for n in names if n not in expected]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if unexpected:
        parts.append(f"unexpected {unexpected}")
    if not parts:
        if len(names) != len(expected):
            dupes = sorted({n for n in names if names.count(n) > 1})
            parts.append(f"duplicated {dupes}")
        else:
            first = next(i for i, (a, b) in enumerate(zip(names, expected, strict=True)) if a != b)
            parts.append(
                f"order differs: position {first} is {names[first]!r}, expected {expected[first]!r}"
            )
    return "; ".join(parts) + f" (expected exactly {expected})"


def _array(source: str, field: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelFileError(
            f"{source}: field {field!r}: not a rectangular array of numbers"
        ) from None
    if arr.shape != shape:
        raise ModelFileError(f"{source}: field {field!r}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ModelFileError(f"{source}: field {field!r}: contains NaN or infinite values")
    # ascontiguousarray would turn a scalar into shape (1,).
    return np.ascontiguousarray(arr) if arr.ndim else arr


class Model:
    """A loaded model: contiguous float64 arrays plus its own scratch and output buffers.

    The engine calls :func:`predict_into` with these arrays; :meth:`predict` is the same
    call for tools and tests.
    """

    def __init__(
        self,
        *,
        mean: Any,
        std: Any,
        weights: Any,
        intercepts: Any,
        move_weights: Any,
        move_intercept: float,
        horizon_ms: int = DEFAULT_HORIZON_MS,
        neutral_band_bps: float = 0.0,
        model_version: str = "unversioned",
        metadata: dict[str, str | float | int] | None = None,
        source: str = "<model>",
    ) -> None:
        f = N_FEATURES
        self.mean: np.ndarray = _array(source, "mean", mean, (f,))
        self.std: np.ndarray = _array(source, "std", std, (f,))
        if np.any(self.std < 0.0):
            bad = np.flatnonzero(self.std < 0.0).tolist()
            raise ModelFileError(
                f"{source}: field 'std': negative standard deviation at index {bad}"
            )
        self.weights: np.ndarray = _array(source, "weights", weights, (N_CLASSES, f))
        self.intercepts: np.ndarray = _array(source, "intercepts", intercepts, (N_CLASSES,))
        self.move_weights: np.ndarray = _array(source, "move_weights", move_weights, (f,))
        mi = _array(source, "move_intercept", move_intercept, ())
        self.move_intercept: float = float(mi)
        if (
            isinstance(horizon_ms, bool)
            or not isinstance(horizon_ms, int | np.integer)
            or horizon_ms <= 0
        ):
            raise ModelFileError(
                f"{source}: field 'horizon_ms': must be a positive integer, got {horizon_ms!r}"
            )
        self.horizon_ms: int = int(horizon_ms)
        nb = float(_array(source, "neutral_band_bps", neutral_band_bps, ()))
        if nb < 0.0:
            raise ModelFileError(f"{source}: field 'neutral_band_bps': must be >= 0, got {nb}")
        self.neutral_band_bps: float = nb
        if not isinstance(model_version, str) or not model_version:
            raise ModelFileError(f"{source}: field 'model_version': must be a non-empty string")
        self.model_version: str = model_version
        self.metadata: dict[str, str | float | int] = dict(metadata or {})
        self.scratch: np.ndarray = np.zeros(f, dtype=np.float64)
        self.out: np.ndarray = np.zeros(N_OUT, dtype=np.float64)

    # ------------------------------------------------------------------ construction

    @classmethod
    def zeros(cls, horizon_ms: int = DEFAULT_HORIZON_MS) -> Model:
        """A model with no view: uniform probabilities, neutral, zero expected move."""
        f = N_FEATURES
        return cls(
            mean=np.zeros(f),
            std=np.ones(f),
            weights=np.zeros((N_CLASSES, f)),
            intercepts=np.zeros(N_CLASSES),
            move_weights=np.zeros(f),
            move_intercept=0.0,
            horizon_ms=horizon_ms,
            model_version="zeros",
        )

    @classmethod
    def from_file(cls, mf: ModelFile, source: str = "<model file>") -> Model:
        """Validate a decoded :class:`ModelFile` and build the model."""
        if mf.format != MODEL_FORMAT:
            raise ModelFileError(
                f"{source}: field 'format': expected {MODEL_FORMAT!r}, got {mf.format!r}"
            )
        if mf.schema_version != SCHEMA_VERSION:
            raise ModelFileError(
                f"{source}: field 'schema_version': unsupported schema version "
                f"{mf.schema_version!r}; this FlashMM reads version {SCHEMA_VERSION}"
            )
        problem = _feature_names_problem(list(mf.feature_names))
        if problem is not None:
            raise ModelFileError(f"{source}: field 'feature_names': {problem}")
        return cls(
            mean=mf.mean,
            std=mf.std,
            weights=mf.weights,
            intercepts=mf.intercepts,
            move_weights=mf.move_weights,
            move_intercept=mf.move_intercept,
            horizon_ms=mf.horizon_ms,
            neutral_band_bps=mf.neutral_band_bps,
            model_version=mf.model_version,
            metadata=mf.metadata,
            source=source,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Model:
        """Read and validate a model file; any problem raises :class:`ModelFileError`."""
        source = str(path)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ModelFileError(f"{source}: cannot read model file: {exc.strerror}") from None
        try:
            header = msgspec.json.decode(data, type=_Header)
        except msgspec.DecodeError as exc:
            raise ModelFileError(f"{source}: not a valid model file: {exc}") from None
        if header.format != MODEL_FORMAT:
            got = "nothing" if header.format is None else repr(header.format)
            raise ModelFileError(f"{source}: field 'format': expected {MODEL_FORMAT!r}, got {got}")
        if header.schema_version != SCHEMA_VERSION or isinstance(header.schema_version, bool):
            raise ModelFileError(
                f"{source}: field 'schema_version': unsupported schema version "
                f"{header.schema_version!r}; this FlashMM reads version {SCHEMA_VERSION}"
            )
        try:
            mf = msgspec.json.decode(data, type=ModelFile)
        except msgspec.DecodeError as exc:
            # msgspec names the offending field as a JSON path, e.g. "at `$.weights[1]`".
            raise ModelFileError(f"{source}: invalid model file: {exc}") from None
        return cls.from_file(mf, source=source)

    @classmethod
    def load_default(cls) -> Model:
        """Load the model file shipped with the package."""
        return cls.load(default_model_path())

    # ------------------------------------------------------------------ output

    def to_file(self) -> ModelFile:
        return ModelFile(
            model_version=self.model_version,
            horizon_ms=self.horizon_ms,
            feature_names=list(FEATURE_NAMES),
            mean=self.mean.tolist(),
            std=self.std.tolist(),
            weights=self.weights.tolist(),
            intercepts=self.intercepts.tolist(),
            move_weights=self.move_weights.tolist(),
            move_intercept=self.move_intercept,
            neutral_band_bps=self.neutral_band_bps,
            metadata=dict(self.metadata),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model file atomically (a reader never sees half a file)."""
        target = Path(path)
        text = msgspec.json.format(msgspec.json.encode(self.to_file()), indent=2)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            tmp.write_bytes(text + b"\n")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ inference

    def predict(self, x: Any) -> np.ndarray:
        """Predict one feature vector; returns ``self.out`` (overwritten by the next call)."""
        xa = np.ascontiguousarray(x, dtype=np.float64)
        if xa.shape != (N_FEATURES,):
            raise ValueError(f"expected {N_FEATURES} features, got shape {xa.shape}")
        predict_into(
            xa,
            self.mean,
            self.std,
            self.weights,
            self.intercepts,
            self.move_weights,
            self.move_intercept,
            self.scratch,
            self.out,
        )
        return self.out

    def predict_batch(self, X: Any) -> np.ndarray:
        """Predict every row of ``X`` (n, F); returns a new (n, N_OUT) array."""
        xa = np.ascontiguousarray(X, dtype=np.float64)
        if xa.ndim != 2 or xa.shape[1] != N_FEATURES:
            raise ValueError(f"expected shape (n, {N_FEATURES}), got {xa.shape}")
        out = np.zeros((xa.shape[0], N_OUT), dtype=np.float64)
        predict_batch(
            xa,
            self.mean,
            self.std,
            self.weights,
            self.intercepts,
            self.move_weights,
            self.move_intercept,
            self.scratch,
            out,
        )
        return out

    def __repr__(self) -> str:
        return f"Model(version={self.model_version!r}, horizon_ms={self.horizon_ms})"
