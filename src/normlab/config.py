"""Training runs described by a small config file (TOML or JSON), for ``normlab train`` and ``normlab eval``.

A config has four tables; everything but ``[model]`` has defaults::

    [model]                      # either an MLP by its sizes ...
    hidden = [128, 64]
    normalizer = "batchnorm"     # batchnorm | layernorm | groupnorm | rmsnorm | none
    activation = "relu"          # relu | sigmoid | tanh | gelu
    dropout = 0.0

    # ... or explicit layers, each a normlab.nn class and its constructor arguments:
    # [[model.layers]]
    # class = "Conv2d"
    # in_channels = 1
    # out_channels = 8
    # kernel_size = 3

    [optimizer]
    name = "Adam"                # SGD | Adam | AdamW | RMSProp (RMSprop) | AdaGrad (Adagrad)
    lr = 0.001                   # any other key is a constructor argument (momentum, weight_decay, ...)

    [training]
    epochs = 5
    batch_size = 32
    seed = 0
    checkpoint_every = 1         # epochs between checkpoints

    [data]
    dataset = "mnist"            # mnist | iris
    split = "sample"             # sample (bundled) | full (downloaded)

The MLP form reads flat inputs (784 pixels for MNIST); explicit layers read images (N, 1, 28, 28) and must
flatten themselves.  Every problem is a :class:`ConfigError` naming the key; an unknown key (a typo) is an
error with the closest valid name, never silently ignored.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from normlab import nn, optim
from normlab.data import Labeled, Standardizer, flatten, load_iris, load_mnist, scale_01

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NORMALIZERS = ("batchnorm", "layernorm", "groupnorm", "rmsnorm", "none")
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}
OPTIMIZERS = {
    "SGD": optim.SGD,
    "Adam": optim.Adam,
    "AdamW": optim.AdamW,
    "RMSprop": optim.RMSprop,
    "Adagrad": optim.Adagrad,
    "RMSProp": optim.RMSProp,  # the README's spellings (the class names) are accepted too
    "AdaGrad": optim.AdaGrad,
}
TABLES = {"model", "optimizer", "training", "data"}
# the keys each table accepts (the optimizer's and the layers' are their constructor arguments)
MLP_KEYS = ("hidden", "normalizer", "activation", "dropout")
TRAINING_KEYS = ("epochs", "batch_size", "seed", "checkpoint_every")
DATA_KEYS = ("dataset", "split")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


@dataclass
class TrainConfig:
    model: dict[str, Any]
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "Adam", "lr": 1e-3})
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    source: str = "<config>"

    @property
    def epochs(self) -> int:
        return int(self.training.get("epochs", 5))

    @property
    def batch_size(self) -> int:
        return int(self.training.get("batch_size", 32))

    @property
    def seed(self) -> int:
        return int(self.training.get("seed", 0))

    @property
    def checkpoint_every(self) -> int:
        return int(self.training.get("checkpoint_every", 1))

    @property
    def flat_input(self) -> bool:
        return "layers" not in self.model

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "training": self.training,
            "data": self.data,
        }


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a TOML (``.toml``) or JSON config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ConfigError(f"{path}: not valid {kind}: {e}") from None
    return parse_config(raw, str(path))


def parse_config(raw: Any, source: str = "<config>") -> TrainConfig:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{source}: {message}")

    if not isinstance(raw, dict):
        raise fail("expected a table of tables (model, optimizer, training, data)")
    unknown = set(raw) - TABLES
    if unknown:
        raise fail(f"unknown table(s) {sorted(unknown)}; expected {sorted(TABLES)}")
    if "model" not in raw:
        raise fail("missing the [model] table")
    for table in TABLES & set(raw):
        if not isinstance(raw[table], dict):
            raise fail(f"[{table}] must be a table, got {type(raw[table]).__name__}")
    _check_keys(raw, fail)
    cfg = TrainConfig(
        model=dict(raw["model"]),
        optimizer=dict(raw.get("optimizer", {"name": "Adam", "lr": 1e-3})),
        training=dict(raw.get("training", {})),
        data=dict(raw.get("data", {})),
        source=source,
    )
    _check_model(cfg.model, fail)
    _check_optimizer(cfg.optimizer, fail)
    for key in ("epochs", "batch_size", "checkpoint_every"):
        value = cfg.training.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(f"training.{key}: expected a positive integer, got {value!r}")
    seed = cfg.training.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise fail(f"training.seed: expected an integer >= 0, got {seed!r}")
    if "folder" in cfg.data:  # an image folder: its own keys (normlab.data.folder_config)
        return _check_folder(cfg, source, fail)
    dataset, split = cfg.data.get("dataset", "mnist"), cfg.data.get("split", "sample")
    if dataset not in ("mnist", "iris"):
        raise fail(f"data.dataset: expected 'mnist' or 'iris', got {dataset!r}")
    if split not in ("sample", "full"):
        raise fail(f"data.split: expected 'sample' or 'full', got {split!r}")
    if dataset == "iris" and not cfg.flat_input:
        raise fail(
            "data.dataset: iris has 4 features, use the MLP form of [model] (hidden = [...])"
        )
    return cfg


def _check_folder(cfg: TrainConfig, source: str, fail) -> TrainConfig:
    from normlab.data.folder_config import check_folder_table

    base = Path(source).parent if source != "<config>" else None
    try:
        cfg.data = check_folder_table(cfg.data, base)
    except ValueError as e:
        raise fail(str(e)) from None
    if cfg.flat_input:
        raise fail("data.folder: images are (N, C, H, W); describe the model with [[model.layers]]")
    return cfg


def _check_model(model: dict[str, Any], fail) -> None:
    if "layers" in model:
        layers = model["layers"]
        if not isinstance(layers, list) or not layers:
            raise fail("model.layers: expected a non-empty list of layer tables")
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict) or not isinstance(layer.get("class"), str):
                raise fail(
                    f"model.layers[{i}]: expected a table with a 'class' name, got {layer!r}"
                )
        return
    hidden = model.get("hidden")
    if not isinstance(hidden, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
    ):
        raise fail(f"model.hidden: expected a list of positive integers, got {hidden!r}")
    if model.get("normalizer", "batchnorm") not in NORMALIZERS:
        raise fail(
            f"model.normalizer: expected one of {NORMALIZERS}, got {model.get('normalizer')!r}"
        )
    if (
        not isinstance(model.get("activation", "relu"), str)
        or model.get("activation", "relu") not in ACTIVATIONS
    ):
        raise fail(
            f"model.activation: expected one of {sorted(ACTIVATIONS)}, got {model.get('activation')!r}"
        )
    dropout = model.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise fail(f"model.dropout: expected a number in [0, 1), got {dropout!r}")


# --------------------------------------------------------------------------------------- keys
def _unknown_keys(table: str, given: Any, valid: Any, fail) -> None:
    """Refuse keys of ``given`` not in ``valid``, each with the closest valid name."""
    valid = sorted(valid)
    unknown = [k for k in given if k not in valid]
    if not unknown:
        return
    described = [f"{table}.{key}{_did_you_mean(str(key), valid)}" for key in unknown]
    raise fail(
        f"unknown key(s) {', '.join(described)}; {table} accepts {', '.join(valid) or 'no keys'}"
    )


def _did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean `X`?)`` for the choice closest to ``word`` (ignoring case; ties go to the first in
    sorted order, so ``BatchNorm`` suggests ``BatchNorm1d``), or ``""`` when none is close."""

    def similarity(choice: str) -> float:
        return difflib.SequenceMatcher(None, word.lower(), choice.lower()).ratio()

    scored = [(similarity(c), c) for c in sorted(choices)]
    best = max((score for score, _ in scored), default=0.0)
    if best < 0.5:
        return ""
    return f" (did you mean `{next(c for score, c in scored if score == best)}`?)"


def _constructor_keys(cls: type, skip: tuple[str, ...] = ()) -> set[str] | None:
    """The keyword arguments ``cls(...)`` accepts (``None``: any, it takes ``**kwargs``)."""
    keys = set()
    for p in inspect.signature(cls).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip:
            keys.add(p.name)
    return keys


def _check_keys(raw: dict[str, Any], fail) -> None:
    """Every key of every table is one the table accepts (values are checked afterwards)."""
    model = raw["model"]
    if "layers" in model:
        _unknown_keys("model", model, ("layers",), fail)
        layers = model["layers"]
        for i, layer in enumerate(layers if isinstance(layers, list) else []):
            if not isinstance(layer, dict) or not isinstance(layer.get("class"), str):
                continue  # reported by _check_model
            classes = {
                k: v for k, v in nn.registered_modules().items() if not issubclass(v, nn.Sequential)
            }
            cls = classes.get(layer["class"])
            if cls is None:
                raise fail(
                    f"model.layers[{i}]: unknown layer class {layer['class']!r}"
                    f"{_did_you_mean(layer['class'], classes)}; "
                    f"expected one of {', '.join(sorted(classes))}"
                )
            keys = _constructor_keys(cls, skip=("rng",))
            if keys is not None:
                _unknown_keys(f"model.layers[{i}]", layer, keys | {"class"}, fail)
    else:
        _unknown_keys("model", model, MLP_KEYS, fail)
    optimizer = raw.get("optimizer", {})
    name = optimizer.get("name", "Adam")
    if isinstance(name, str) and name in OPTIMIZERS:
        keys = _constructor_keys(OPTIMIZERS[name], skip=("params",))
        if keys is not None:
            _unknown_keys("optimizer", optimizer, keys | {"name"}, fail)
    _unknown_keys("training", raw.get("training", {}), TRAINING_KEYS, fail)
    data = raw.get("data", {})
    if not (isinstance(data, dict) and "folder" in data):  # an image folder's keys: folder_config's
        _unknown_keys("data", data, DATA_KEYS, fail)


def _check_optimizer(options: dict[str, Any], fail) -> None:
    """The optimizer's name, and its arguments as its constructor checks them (on a scratch parameter)."""
    name = options.get("name", "Adam")
    if not isinstance(name, str) or name not in OPTIMIZERS:
        hint = _did_you_mean(name, OPTIMIZERS) if isinstance(name, str) else ""
        raise fail(
            f"optimizer.name: unknown optimizer {name!r}{hint}; expected one of {sorted(OPTIMIZERS)}"
        )
    kwargs = {k: v for k, v in options.items() if k != "name"}

    def refusal(**given: Any) -> str | None:
        try:
            OPTIMIZERS[name]([nn.Parameter(np.zeros(1))], **given)
        except (TypeError, ValueError) as e:
            return str(e)
        return None

    problem = refusal(**kwargs)
    if problem is not None:
        # name the argument: the first one refused on its own (the optimizer's message may not say which)
        culprit = next((k for k in kwargs if refusal(**{k: kwargs[k]}) is not None), None)
        where = f"optimizer.{culprit}" if culprit else f"optimizer ({', '.join(kwargs)})"
        raise fail(f"[optimizer] {name}: {where}: {problem}")


# --------------------------------------------------------------------------------------- building
def build_model(cfg: TrainConfig, n_inputs: int, n_classes: int) -> nn.Sequential:
    """The model the config describes, initialised from ``training.seed``."""
    rng = np.random.default_rng(cfg.seed)
    if not cfg.flat_input:
        layers = []
        for i, spec in enumerate(cfg.model["layers"]):
            kwargs = {k: v for k, v in spec.items() if k != "class"}
            if spec["class"] in ("Linear", "Conv2d"):
                kwargs.setdefault("rng", rng)
            try:
                layers.append(getattr(nn, spec["class"])(**kwargs))
            except AttributeError:
                raise ConfigError(
                    f"{cfg.source}: model.layers[{i}]: unknown layer class {spec['class']!r}"
                ) from None
            except (TypeError, ValueError) as e:
                raise ConfigError(
                    f"{cfg.source}: model.layers[{i}] ({spec['class']}): {e}"
                ) from None
        return nn.Sequential(*layers)
    return mlp(
        [n_inputs, *cfg.model["hidden"], n_classes],
        norm=cfg.model.get("normalizer", "batchnorm"),
        activation=cfg.model.get("activation", "relu"),
        dropout=float(cfg.model.get("dropout", 0.0)),
        rng=rng,
    )


# short spellings the lab uses for the two normalizers it compares
NORM_ALIASES = {"bn": "batchnorm", "ln": "layernorm"}


def mlp(
    sizes: Sequence[int],
    *,
    norm: str | None = None,
    activation: str = "relu",
    dropout: float = 0.0,
    weight_std: float | None = None,
    rng: np.random.Generator,
) -> nn.Sequential:
    """The MLP ``sizes[0] -> ... -> sizes[-1]`` (the one builder of ``normlab train`` and the lab): each hidden
    layer is Linear [-> norm] -> activation [-> Dropout], the last is a Linear.

    ``norm`` is one of :data:`NORMALIZERS` (``None`` = ``"none"``; ``"bn"``/``"ln"`` spell batchnorm/layernorm);
    ``activation`` a key of :data:`ACTIVATIONS`.  ``rng`` draws, layer by layer, the Linear's default init,
    then (with ``weight_std``) its weight again from N(0, std^2) with a zero bias, then the seed of its
    Dropout: the order fixes every number a seeded run produces.
    """
    kind = NORM_ALIASES.get(norm, norm) if norm is not None else "none"
    if kind not in NORMALIZERS:
        raise ValueError(f"mlp: unknown norm {norm!r}; expected one of {NORMALIZERS}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"mlp: unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(n_in, n_out, rng=rng)
        if weight_std is not None:
            linear.weight.data = nn.init.normal((n_out, n_in), rng, std=weight_std)
            linear.bias.data = np.zeros(n_out, np.float32)
        layers.append(linear)
        if i == len(sizes) - 2:
            break
        if kind == "batchnorm":
            layers.append(nn.BatchNorm1d(n_out))
        elif kind == "layernorm":
            layers.append(nn.LayerNorm(n_out))
        elif kind == "rmsnorm":
            layers.append(nn.RMSNorm(n_out))
        elif kind == "groupnorm":
            layers.append(nn.GroupNorm(_groups(n_out), n_out))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout, seed=int(rng.integers(2**31))))
    return nn.Sequential(*layers)


def _groups(width: int) -> int:
    """A group count for GroupNorm over ``width`` features: 8 groups or fewer, dividing ``width``, >= 2 wide."""
    return next(g for g in (8, 4, 2, 1) if width % g == 0 and width // g >= 2)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> optim.Optimizer:
    options = {k: v for k, v in cfg.optimizer.items() if k != "name"}
    try:
        return OPTIMIZERS[cfg.optimizer.get("name", "Adam")](model.parameters(), **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cfg.source}: [optimizer]: {e}") from None


@dataclass
class Dataset:
    train: Labeled
    val: Labeled
    test: Labeled
    n_inputs: int
    n_classes: int


def load_data(cfg: TrainConfig) -> Dataset:
    """The data the config names, as the model reads it (flat vectors or images), float32."""
    if "folder" in cfg.data:
        # train: a streaming DataLoader (Labeled(loader, None)); val, test: decoded arrays
        from normlab.data.folder_config import folder_data

        part = folder_data(cfg.data, cfg.seed, cfg.batch_size)
        return Dataset(part.train, part.val, part.test, part.n_inputs, part.n_classes)
    if cfg.data.get("dataset", "mnist") == "iris":
        iris = load_iris()
        order = np.random.default_rng(cfg.seed).permutation(len(iris.y))
        x, y = iris.x[order].astype(np.float32), iris.y[order]
        parts = (slice(0, 90), slice(90, 120), slice(120, 150))  # 60 / 20 / 20 %
        scaler = Standardizer().fit(x[parts[0]])
        train, val, test = (Labeled(scaler.transform(x[p]).astype(np.float32), y[p]) for p in parts)
        return Dataset(train, val, test, 4, 3)
    splits = load_mnist(cfg.data.get("split", "sample"))
    return Dataset(*(as_model_input(part, cfg.flat_input) for part in splits), 784, 10)


def as_model_input(part: Labeled, flat: bool) -> Labeled:
    x = scale_01(part.x)
    return Labeled(np.ascontiguousarray(flatten(x) if flat else x[:, None]), part.y)


def reads_flat_input(model: nn.Module) -> bool:
    """Whether a model built by :func:`build_model` reads flat vectors (its first layer is Linear)."""
    first = next(iter(model.children()), model)
    return isinstance(first, nn.Linear)
