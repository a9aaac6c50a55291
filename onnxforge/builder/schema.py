"""The shape of a spec document, as pydantic models.

These models check each field on its own (types, ranges, names, unknown keys). Checks that
need the whole network -- shapes flowing from layer to layer, weights matching them -- live
in ``builder.spec``, which turns a validated document into a ``Spec``.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from onnxforge.builder.activations import ACTIVATIONS, GELU_APPROXIMATIONS
from onnxforge.builder.errors import did_you_mean
from onnxforge.builder.layout import VARIANTS as VARIANTS  # the one list, re-exported

INIT_SCHEMES = (
    "glorot_uniform",
    "glorot_normal",
    "xavier_uniform",
    "xavier_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "normal",
    "uniform",
    "zeros",
)

# Other libraries' names (and spellings) for ours, keyed lowercase with '_' for '-' and ' ':
# a spec copied from Keras or PyTorch gets "did you mean" instead of only a list.
ACTIVATION_ALIASES = {
    "swish": ("silu",),
    "linear": ("identity",),
    "none": ("identity",),
    "logistic": ("sigmoid",),
    "leakyrelu": ("leaky_relu",),
    "lrelu": ("leaky_relu",),
    "logsoftmax": ("log_softmax",),
    "hardsigmoid": ("hard_sigmoid",),
}
INIT_ALIASES = {
    "kaiming": ("he_normal", "he_uniform"),
    "kaiming_normal": ("he_normal",),
    "kaiming_uniform": ("he_uniform",),
    "msra": ("he_normal",),
    "gaussian": ("normal",),
    "random_normal": ("normal",),
    "random_uniform": ("uniform",),
}

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
TENSOR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"
LAYER_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# What each pattern means, for error messages.
PATTERN_HELP = {
    MODEL_NAME_PATTERN: "1-64 lowercase letters, digits, '-' or '_', not starting with '-' or '_'",
    TENSOR_NAME_PATTERN: "1-64 letters, digits, '_', '.', ':' or '-', not starting with a digit",
    LAYER_NAME_PATTERN: "1-64 letters, digits, '-' or '_'",
}
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
TensorName = Annotated[str, Field(pattern=TENSOR_NAME_PATTERN)]


def _int_to_str(value: Any) -> Any:
    # YAML reads `name: 1` as an integer; layer names are strings like PyTorch's "0", "1".
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


LayerName = Annotated[str, BeforeValidator(_int_to_str), Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
PositiveInt = Annotated[int, Field(gt=0)]
MAX_DIM = 2**31 - 1  # ONNX Runtime and the protocol count elements in 32 bits in places
Dim = Annotated[int, Field(gt=0, le=MAX_DIM)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1)]


class StrictModel(BaseModel):
    """Frozen, strictly typed, and loud about unknown keys (usually typos)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in allowed:
                    close = difflib.get_close_matches(str(key), allowed, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise PydanticCustomError(
                        "spec_unknown_field",
                        "unknown field '{field}'{hint}; allowed: {allowed}",
                        {"field": str(key), "hint": hint, "allowed": ", ".join(allowed)},
                    )
        return data


class Activation(StrictModel):
    """An activation by name, with the parameters that activation takes."""

    name: str
    alpha: FiniteFloat | None = None
    beta: FiniteFloat | None = None
    gamma: FiniteFloat | None = None
    approximate: str | None = None

    @model_validator(mode="after")
    def _known_with_known_parameters(self) -> Activation:
        if self.name not in ACTIVATIONS:
            raise PydanticCustomError(
                "spec_unknown_activation",
                "unknown activation '{name}'{hint}; known: {known}",
                {
                    "name": self.name,
                    "hint": did_you_mean(self.name, list(ACTIVATIONS), ACTIVATION_ALIASES),
                    "known": ", ".join(ACTIVATIONS),
                },
            )
        takes = ACTIVATIONS[self.name]
        for param in ("alpha", "beta", "gamma", "approximate"):
            if getattr(self, param) is not None and param not in takes:
                accepted = ", ".join(takes) or "none"
                raise PydanticCustomError(
                    "spec_activation_parameter",
                    "activation '{name}' takes no parameter '{param}' (it takes: {accepted})",
                    {"name": self.name, "param": param, "accepted": accepted},
                )
        if self.approximate is not None and self.approximate not in GELU_APPROXIMATIONS:
            raise PydanticCustomError(
                "spec_gelu_approximate",
                "gelu approximate must be one of {known}, got '{got}'",
                {"known": ", ".join(GELU_APPROXIMATIONS), "got": self.approximate},
            )
        return self

    @property
    def params(self) -> dict[str, float | str]:
        """Every parameter of this activation, defaults filled in."""
        given = {key: getattr(self, key) for key in ACTIVATIONS[self.name]}
        return {
            key: default if given[key] is None else given[key]
            for key, default in ACTIVATIONS[self.name].items()
        }


def _activation_from_name(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


ActivationField = Annotated[Activation, BeforeValidator(_activation_from_name)]
IDENTITY = Activation(name="identity")


class DenseLayer(StrictModel):
    type: Literal["dense"]
    name: LayerName | None = None
    units: Dim
    activation: ActivationField = IDENTITY
    init: Literal[INIT_SCHEMES] = "glorot_uniform"  # type: ignore[valid-type]
    use_bias: bool = True  # false: no bias parameter (PyTorch bias=False, Keras use_bias=False)

    @field_validator("init", mode="before")
    @classmethod
    def _known_init(cls, value: Any) -> Any:
        # A name the Literal would refuse, refused here with a suggestion (other types: by it).
        if isinstance(value, str) and value not in INIT_SCHEMES:
            listed = ", ".join(repr(name) for name in INIT_SCHEMES[:-1])
            raise PydanticCustomError(
                "spec_unknown_init",
                "must be {listed} or '{last}', got '{got}'{hint}",
                {
                    "listed": listed,
                    "last": INIT_SCHEMES[-1],
                    "got": value,
                    "hint": did_you_mean(value, INIT_SCHEMES, INIT_ALIASES),
                },
            )
        return value


class ActivationLayer(StrictModel):
    type: Literal["activation"]
    name: LayerName | None = None
    activation: ActivationField


class BatchNormLayer(StrictModel):
    type: Literal["batchnorm"]
    name: LayerName | None = None
    epsilon: PositiveFloat = 1e-5
    affine: bool = True  # false: no scale and bias parameters (PyTorch affine=False)


class LayerNormLayer(StrictModel):
    type: Literal["layernorm"]
    name: LayerName | None = None
    epsilon: PositiveFloat = 1e-5
    affine: bool = True  # false: no scale and bias (PyTorch elementwise_affine=False)
    use_bias: bool = True  # false: a scale but no bias (PyTorch bias=False)


class DropoutLayer(StrictModel):
    type: Literal["dropout"]
    name: LayerName | None = None
    rate: Annotated[float, Field(ge=0, lt=1)] = 0.5


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else value


class NormalizeLayer(StrictModel):
    type: Literal["normalize"]
    name: LayerName | None = None
    # One number for every feature, or one per feature; a number is read as a 1-item list.
    mean: Annotated[list[FiniteFloat], BeforeValidator(_listed), Field(min_length=1)] = [0.0]
    std: Annotated[list[PositiveFloat], BeforeValidator(_listed), Field(min_length=1)] = [1.0]


class FlattenLayer(StrictModel):
    type: Literal["flatten"]
    name: LayerName | None = None


LayerConfig = Annotated[
    DenseLayer
    | ActivationLayer
    | BatchNormLayer
    | LayerNormLayer
    | DropoutLayer
    | NormalizeLayer
    | FlattenLayer,
    Field(discriminator="type"),
]
LAYER_TYPES = ("dense", "activation", "batchnorm", "layernorm", "dropout", "normalize", "flatten")


class NormalDistribution(StrictModel):
    mean: FiniteFloat = 0.0
    std: PositiveFloat = 1.0


class UniformDistribution(StrictModel):
    low: FiniteFloat = 0.0
    high: FiniteFloat = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> UniformDistribution:
        if not self.low < self.high:
            raise PydanticCustomError(
                "spec_uniform_bounds",
                "low must be below high, got low={low}, high={high}",
                {"low": self.low, "high": self.high},
            )
        return self


class Distribution(StrictModel):
    """Where verify and calibration draw samples from: exactly one of normal or uniform."""

    normal: NormalDistribution | None = None
    uniform: UniformDistribution | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        if (self.normal is None) == (self.uniform is None):
            raise PydanticCustomError(
                "spec_distribution_kind", "give exactly one of 'normal' or 'uniform'"
            )
        return self


class InputSpec(StrictModel):
    name: TensorName = "x"
    shape: Annotated[list[Dim], Field(min_length=1, max_length=8)]
    dtype: Literal["float32"] = "float32"
    distribution: Distribution = Distribution(normal=NormalDistribution())
    # A network cannot handle missing data: servers refuse NaN/Inf inputs unless this is true.
    allow_non_finite: bool = False


class OutputSpec(StrictModel):
    name: TensorName = "output"


class Budget(StrictModel):
    """Accuracy a quantized variant must keep against the fp32 reference."""

    max_abs: Annotated[float, Field(ge=0)] | None = None
    mean_abs: Annotated[float, Field(ge=0)] | None = None
    cosine: Probability | None = None
    argmax_agreement: Probability | None = None


def _policy_from_word(value: Any) -> Any:
    return {"all": True} if value == "all" else value


class VersionPolicy(StrictModel):
    """Which version folders a server serves (Triton's ``version_policy``): exactly one of
    ``latest: N`` (the N newest), ``all``, or ``specific: [1, 3]``."""

    latest: PositiveInt | None = None
    all: bool | None = None
    specific: Annotated[list[PositiveInt], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        given = [key for key in ("latest", "all", "specific") if getattr(self, key) is not None]
        if len(given) != 1 or self.all is False:
            raise PydanticCustomError(
                "spec_version_policy",
                "give exactly one of 'latest: N', 'all' or 'specific: [versions]'",
            )
        return self


class Serving(StrictModel):
    max_batch_size: Annotated[int, Field(ge=0)] = 64
    max_queue_delay_us: Annotated[int, Field(ge=0)] = 500
    instances: PositiveInt = 1
    # A rebuild that changes what a model computes writes a new version folder; the newest
    # `keep_versions` are kept on disk (plus any `specific` ones), the policy picks what serves.
    version_policy: Annotated[VersionPolicy, BeforeValidator(_policy_from_word)] = VersionPolicy(
        latest=1
    )
    keep_versions: PositiveInt = 2

    @model_validator(mode="after")
    def _keeps_what_it_serves(self) -> Serving:
        latest = self.version_policy.latest
        if latest is not None and latest > self.keep_versions:
            raise PydanticCustomError(
                "spec_keep_versions",
                "keep_versions ({keep}) must be at least version_policy latest ({latest})",
                {"keep": self.keep_versions, "latest": latest},
            )
        return self


class Quantization(StrictModel):
    """How int8 variants are made; command-line flags override these."""

    calibration: str | None = None  # .npy rows for int8-static, relative to the spec file
    # .npy rows every variant is measured on (never calibrated on), relative to the spec
    # file. Left out of the spec hash (exclude): it changes no file's computation.
    validation: Annotated[str | None, Field(exclude=True)] = None
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = False
    reduce_range: bool = False


Variant = Literal[VARIANTS]  # type: ignore[valid-type]


class Document(StrictModel):
    """A whole spec file."""

    name: ModelName
    description: str = ""
    input: InputSpec
    output: OutputSpec = OutputSpec()
    expose: list[LayerName] = []
    opset: Annotated[int, Field(ge=1)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    weights: str | None = None
    weight_layout: Literal["in_out", "out_in"] = "in_out"
    layers: Annotated[list[LayerConfig], Field(min_length=1)]
    variants: Annotated[list[Variant], Field(min_length=1)] = ["fp32"]
    budget: dict[Variant, Budget] = {}
    quantization: Quantization = Quantization()
    serving: Serving = Serving()

    @field_validator("variants")
    @classmethod
    def _distinct_variants(cls, variants: list[str]) -> list[str]:
        twice = sorted({variant for variant in variants if variants.count(variant) > 1})
        if twice:
            raise PydanticCustomError(
                "spec_duplicate_variant", "{twice} listed twice", {"twice": ", ".join(twice)}
            )
        return variants
