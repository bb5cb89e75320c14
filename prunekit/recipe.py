"""Typed recipes: one YAML file describes a whole pruning pipeline.

A recipe names the model, the data, which tensors may be pruned, the default training
settings, and an ordered list of stages. Each stage is a one-key mapping whose key is a
registered stage type (`train`, `prune`, `rewind`, `repeat`, ...) and whose value holds
that stage's settings. Unknown keys and bad values are rejected with the key path, the
allowed values and a did-you-mean. YAML is read with the safe loader only.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prunekit import validate
from prunekit.data.augment import AugmentConfig
from prunekit.errors import ConfigError, did_you_mean, short
from prunekit.limits import check_plan_size
from prunekit.recipe_text import apply_overrides, read_recipe_yaml  # noqa: F401 (re-exported)
from prunekit.registry import Registry


def _known(value: str, registry: Registry) -> str:
    """Validator helper: `value` must be a registered name (error lists choices, did-you-mean)."""
    if value not in registry:
        raise ValueError(f"unknown {registry.kind} '{value}'.{did_you_mean(value, registry.names())} "
                         f"Allowed: {', '.join(registry.names())}")
    return value


def _check_structure_options(section):
    """Validator helper: build the granularity once so bad structure options fail at recipe load."""
    from prunekit.structure import create_structure
    create_structure(section.structure, reduce=section.reduce, **section.structure_options)
    return section


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, defaults are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelConfig(Section):
    name: str = "lenet5"
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the model factory")
    checkpoint: str | None = Field(None, description="state_dict file (e.g. a torchvision .pth) loaded into the model")
    factory: str | None = Field(None, description="'package.module:function' returning an nn.Module (runs that code)")

    @model_validator(mode="after")
    def _factory_names_the_model(self):
        from prunekit.models.external import check_factory_spec
        if self.factory is not None:
            check_factory_spec(self.factory)
            if "name" not in self.model_fields_set:
                self.name = self.factory
        return self


class DataConfig(Section):
    name: str = "embedded"
    data_dir: str | None = None
    download: bool = False
    batch_size: int = Field(128, gt=0, description="global batch size")
    eval_batch_size: int = Field(1000, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)
    augment: AugmentConfig | None = Field(None, description="training-batch augmentation (scoring data is never augmented)")
    streaming: Literal["auto", True, False] = Field("auto", description="read batches from disk with worker "
                                                    "processes instead of holding the set in memory (imagefolder; "
                                                    "with true also fashion-mnist, mnist, cifar10, cifar100); auto: "
                                                    "stream an imagefolder whose decoded train split exceeds 2 GiB")
    workers: int = Field(2, ge=0, description="streaming: decoding worker processes (0 decodes in the training process)")
    scoring_pool: int = Field(1024, ge=1, description="streaming: class-balanced train images held in memory for "
                                                      "scoring criteria and greedy selection")


class PrunableConfig(Section):
    types: list[str] = Field(default_factory=lambda: ["conv", "linear"])
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    first_layer: Literal["prune", "dense"] = "prune"
    last_layer: Literal["prune", "dense"] = "prune"


class ScoringAxes(Section):
    """Validators shared by every section that scores and masks: names must be registered."""

    @field_validator("criterion", check_fields=False)
    @classmethod
    def _known_criterion(cls, v: str) -> str:
        from prunekit.criteria import CRITERIA
        return _known(v, CRITERIA)

    @field_validator("allocation", check_fields=False)
    @classmethod
    def _known_allocation(cls, v: str) -> str:
        from prunekit.allocate import ALLOCATIONS
        return _known(v, ALLOCATIONS)

    @field_validator("structure", check_fields=False)
    @classmethod
    def _known_structure(cls, v: str) -> str:
        from prunekit.structure import STRUCTURES
        return _known(v, STRUCTURES)

    _structure_options = model_validator(mode="after")(_check_structure_options)


COLLAPSE_HELP = ("keep every output unit's best group (channel granularity: every layer's best channel) so no layer "
                 "is emptied; default (null): on for structured global allocation, off otherwise")
NORMALIZE_HELP = ("divide each layer's group scores by their mean |score| before ranking (layer) or not (none); "
                  "auto: layer for every structure but weight")
OUTPUT_HELP = "keep: channel pruning never removes a row (class) of the output layer; prune: it may"


class SparsifyConfig(ScoringAxes):
    """Mask updates during a train stage: gradual pruning (then frozen) or SET/RigL drop-and-regrow."""

    method: Literal["gradual", "set", "rigl"] = "gradual"
    sparsity: float = Field(0.9, ge=0, lt=1, description="target (gradual) or constant (set/rigl) sparsity")
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="gradual: sparsity at start_epoch (s0)")
    start_epoch: float = Field(0.0, ge=0, description="first mask update (epochs into the stage)")
    end_epoch: float | None = Field(None, ge=0, description="last mask update; the mask is frozen after it. "
                                    "Default: 75% of the stage's epochs")
    every: int = Field(100, ge=1, description="optimizer steps between mask updates (f)")
    power: float = Field(3.0, gt=0, description="gradual: exponent of the polynomial schedule (3 = cubic)")
    criterion: str = Field("magnitude", description="gradual: scoring criterion")
    options: dict[str, Any] = Field(default_factory=dict, description="criterion options")
    structure: str = "weight"
    structure_options: dict[str, Any] = Field(default_factory=dict)
    reduce: Literal["sum", "mean", "l2"] = "sum"
    allocation: str = Field("global", description="gradual: global/uniform/erk; set/rigl: allocation of the initial random mask")
    prevent_collapse: bool | None = Field(None, description=COLLAPSE_HELP)
    normalize: Literal["auto", "layer", "none"] = Field("auto", description=NORMALIZE_HELP)
    output_layer: Literal["keep", "prune"] = Field("keep", description=OUTPUT_HELP)
    drop_fraction: float = Field(0.3, gt=0, le=1, description="set/rigl: fraction of live weights dropped at step 0, cosine-decayed")
    grad_batch_size: int = Field(256, gt=0, description="rigl: samples in the batch whose dense gradient ranks regrowth")


class TrainConfig(Section):
    epochs: int = Field(8, ge=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["constant", "step", "cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[int] = Field(default_factory=list, description="epochs where the step schedule multiplies lr by gamma")
    gamma: float = Field(0.1, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    amp: bool | Literal["auto"] = Field(
        False, description="bfloat16 autocast for forward/backward (weights stay fp32); auto: on where the "
        "device has native bf16 (see prunekit/execution.py)")
    channels_last: bool | Literal["auto"] = Field(
        False, description="NHWC model and inputs while training (opt-in, see prunekit/execution.py); "
        "auto: on for networks with 2-D convs in one process")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the forward pass (eager fallback on failure); auto: on for CUDA only")
    eval_every: int = Field(1, ge=1, description="evaluate on the test set every N epochs (the last epoch always)")
    sparsify: SparsifyConfig | None = Field(None, description="mask updates during training (gradual / set / rigl)")
    checkpoint_every: int | None = Field(None, ge=1, description="also checkpoint every N optimizer steps inside an "
                                         "epoch (resume continues mid-epoch without replaying data)")


class PruneConfig(ScoringAxes):
    criterion: str = "magnitude"
    options: dict[str, Any] = Field(default_factory=dict, description="criterion options")
    sparsity: float = Field(0.9, description="fraction of prunable weights removed, in [0, 1)")
    allocation: str = "global"
    structure: str = "weight"
    structure_options: dict[str, Any] = Field(default_factory=dict, description="granularity options, e.g. {n: 2, m: 4}")
    reduce: Literal["sum", "mean", "l2"] = "sum"
    iterations: int | None = Field(None, ge=1, description="exponential schedule steps; default: the criterion's own")
    prevent_collapse: bool | None = Field(None, description=COLLAPSE_HELP)
    normalize: Literal["auto", "layer", "none"] = Field("auto", description=NORMALIZE_HELP)
    output_layer: Literal["keep", "prune"] = Field("keep", description=OUTPUT_HELP)

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{v} is outside [0, 1); give a fraction such as 0.9 for 90%")
        return v


class RobustnessConfig(Section):
    """Adversarial (FGSM, PGD L-inf) and Gaussian-noise accuracy, reported in the summary."""

    eps: list[float] = Field(default_factory=lambda: [0.1], description="L-inf radii (normalized units unless pixel_std is set)")
    steps: int = Field(10, ge=1, description="PGD iterations")
    step_size: float | None = Field(None, gt=0, description="PGD step; default 2.5 * eps / steps")
    random_start: bool = True
    noise_sigmas: list[float] = Field(default_factory=lambda: [0.1], description="Gaussian noise std (same units as eps)")
    pixel_std: float | None = Field(None, gt=0, description="if set, eps and sigmas are in [0, 1] pixel units and are "
                                    "divided by this dataset std (e.g. 0.353 for Fashion-MNIST)")
    limit: int | None = Field(None, ge=1, description="evaluate on the first N test samples only")


class EvaluateConfig(Section):
    robustness: RobustnessConfig | None = None


class RewindConfig(Section):
    """Reset weights (keeping masks): to their initial values, or to the snapshot the first train
    stage saved after `epoch` epochs (lottery ticket with late rewinding, Frankle et al. 2020)."""

    to: Literal["init", "epoch"] = "init"
    epoch: int | None = Field(None, ge=1, description="with to: epoch, the epoch of the first train stage to rewind to")

    @model_validator(mode="after")
    def _epoch_given(self):
        if self.to == "epoch" and self.epoch is None:
            raise ValueError("rewind to: epoch needs `epoch: k` (k >= 1), the epoch of the first train stage")
        if self.to == "init" and self.epoch is not None:
            raise ValueError(f"rewind epoch: {self.epoch} is only used with to: epoch; drop it or set to: epoch")
        return self


class Recipe(Section):
    name: str | None = Field(None, description="run name; default: MODEL-CRITERION (or MODEL-dense)")
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"
    baseline: bool = Field(True, description="also train the dense model with the same settings and compare")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prunable: PrunableConfig = Field(default_factory=PrunableConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    # The default job: GraSP at initialization to 98% sparsity (where the PaI methods
    # differ: magnitude and random collapse near there on LeNet-5), then train.
    stages: list[Any] = Field(default_factory=lambda: [{"prune": {"criterion": "grasp", "sparsity": 0.98}},
                                                       {"train": {}}])


#: stage type -> settings model. A stage type's runner lives in pipeline.py's STAGE_RUNNERS.
STAGE_CONFIGS: Registry[type[Section]] = Registry("stage type")
STAGE_CONFIGS.register("train")(TrainConfig)
STAGE_CONFIGS.register("prune")(PruneConfig)
STAGE_CONFIGS.register("rewind")(RewindConfig)


class RepeatConfig(Section):
    times: int = Field(ge=1)
    stages: list[Any]


STAGE_CONFIGS.register("repeat")(RepeatConfig)


def prune_stage_settings(stages: list) -> list[dict[str, Any]]:
    """Every prune stage's (mutable) settings dict in a raw stage list, `repeat` bodies included.

    Bare names (`- prune`) and empty settings are normalized in place so callers can set keys.
    """
    found = []
    for i, stage in enumerate(stages):
        if isinstance(stage, str):
            stage = stages[i] = {stage: {}}
        (kind, settings), = stage.items()
        if settings is None:
            settings = stage[kind] = {}
        if kind == "prune":
            found.append(settings)
        elif kind == "repeat":
            found.extend(prune_stage_settings(settings.setdefault("stages", [])))
    return found


def load_stage_plugins() -> None:
    """Import the stage-type modules in prunekit.stages (they register themselves)."""
    import prunekit.pipeline  # noqa: F401  (defines STAGE_RUNNERS the plugins register into)
    import prunekit.stages  # noqa: F401


def parse_stages(stages: list[Any], where: str, recipe: "Recipe") -> list[dict[str, Any]]:
    """Check a list of `{type: settings}` stages (recursing into `repeat`); return them normalized."""
    load_stage_plugins()
    out = []
    for i, stage in enumerate(stages):
        here = f"{where}[{i}]"
        if isinstance(stage, str):
            stage = {stage: {}}
        if not isinstance(stage, dict) or len(stage) != 1:
            raise ConfigError(f"{here}: a stage is a mapping with one key, the stage type "
                              f"({', '.join(STAGE_CONFIGS.names())}); got {short(stage)}.")
        (kind, settings), = stage.items()
        if kind not in STAGE_CONFIGS:
            raise ConfigError(f"{here}: unknown stage type {short(kind)}.{did_you_mean(kind, STAGE_CONFIGS.names())} "
                              f"Allowed: {', '.join(STAGE_CONFIGS.names())}.")
        settings = dict(settings or {})
        checked = stage_settings(recipe, kind, settings, here)
        if kind == "repeat":
            settings["stages"] = parse_stages(checked.stages, f"{here}.repeat.stages", recipe)
        out.append({kind: settings})
    return out


def stage_settings(recipe: Recipe, kind: str, settings: dict[str, Any], where: str = "stage") -> Section:
    """Validated settings object for one stage (train stages inherit `recipe.train`)."""
    if kind == "train":
        merged = {**recipe.train.model_dump(), **settings}
        return _validate(TrainConfig, merged, f"{where}.train")
    return _validate(STAGE_CONFIGS.get(kind), settings, f"{where}.{kind}")


def _validate(model: type[Section], data: dict[str, Any], where: str) -> Section:
    validate.check_no_bool_numbers(data, model, where)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, where)) from None


def format_validation_error(e: ValidationError, model: type[BaseModel] = None, prefix: str = "") -> str:
    """Render pydantic errors as `key.path: problem` lines with allowed keys and a did-you-mean."""
    lines = []
    for err in e.errors():
        path = ".".join(str(p) if len(str(p)) <= 60 else str(p)[:57] + "..."
                        for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and model is not None:
            owner = _owner_model(model, err["loc"][:-1])
            if owner is not None:
                allowed = list(owner.model_fields)
                msg = f"unknown key.{did_you_mean(str(err['loc'][-1]), allowed)} Allowed keys: {', '.join(allowed)}"
        elif "input" in err and err["type"] != "missing":
            msg += f" (got {short(err['input'])})"
        lines.append(f"{path}: {msg}")
    return "invalid recipe:\n  " + "\n  ".join(lines)


def _owner_model(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """Follow a pydantic error location down nested sections to the section that owns the key."""
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        # an optional section (`X | None`) owns its keys like a required one
        ann = next((a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def load_recipe(path: str | Path) -> Recipe:
    """Read a YAML recipe with the safe loader and validate it."""
    return recipe_from_dict(read_recipe_yaml(path))


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Validate a plain dict as a Recipe (stages included), with helpful errors."""
    validate.check_recipe_shape(data)
    validate.check_no_bool_numbers(data, Recipe, "")
    check_plan_size(data.get("stages"))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, Recipe)) from None
    recipe.stages = parse_stages(recipe.stages, "stages", recipe)
    if recipe.name is None:
        recipe.name = f"{recipe.model.name}-{_first_criterion(recipe.stages) or 'dense'}"
    check_recipe_values(recipe)
    return recipe


def check_recipe_values(recipe: Recipe) -> None:
    """Checks pydantic cannot express: seed range, device present, names usable in paths, options typed."""
    from prunekit.criteria import CRITERIA
    from prunekit.data import DATASETS, load_dataset
    from prunekit.models import MODELS

    validate.check_seed(recipe.seed)
    validate.check_device(recipe.device)
    validate.check_name(recipe.name)
    validate.check_path_text(recipe.output_dir, "output_dir")
    if recipe.data.data_dir is not None:
        validate.check_path_text(recipe.data.data_dir, "data.data_dir")
    if recipe.model.factory is None:  # a user's factory checks its own keyword arguments when called
        validate.check_options(MODELS.get(recipe.model.name), recipe.model.options, "model.options",
                               reserved=("in_channels", "num_classes", "image_size"))
    limits_ = {k: v for k, v in recipe.data.options.items() if k in ("limit_train", "limit_test", "limit_seed")}
    validate.check_options(load_dataset, limits_, "data.options")
    rest = {k: v for k, v in recipe.data.options.items() if k not in limits_}
    validate.check_options(DATASETS.get(recipe.data.name), rest, "data.options", reserved=("data_dir", "download"))
    for settings in prune_stage_settings(copy.deepcopy(recipe.stages)):
        criterion = settings.get("criterion", PruneConfig.model_fields["criterion"].default)
        if criterion in CRITERIA:
            validate.check_options(CRITERIA.get(criterion), settings.get("options") or {}, "prune.options")


def _first_criterion(stages: list[dict[str, Any]]) -> str | None:
    """The criterion of the first prune stage (searching inside `repeat`), for default names."""
    for stage in stages:
        (kind, settings), = stage.items()
        if kind == "prune":
            return settings.get("criterion", PruneConfig.model_fields["criterion"].default)
        if kind == "repeat" and (found := _first_criterion(settings["stages"])):
            return found
    return None


def resolve_stages(recipe: Recipe, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stages with every default filled in (train stages show their merged settings)."""
    out = []
    for stage in stages:
        (kind, settings), = stage.items()
        full = stage_settings(recipe, kind, settings).model_dump(mode="json")
        if kind == "repeat":
            full["stages"] = resolve_stages(recipe, settings["stages"])
        out.append({kind: full})
    return out


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (what a run directory stores): every default spelled out."""
    data = recipe.model_dump(mode="json")
    data["stages"] = resolve_stages(recipe, recipe.stages)
    return yaml.safe_dump(data, sort_keys=False)
