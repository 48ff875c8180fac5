"""The optimizer base class: parameter groups, per-parameter state, ``zero_grad`` and state dicts.

An optimizer sees only :class:`~normlab.nn.Parameter` objects (never buffers such as running statistics).
``params`` is an iterable of Parameters, or a list of dicts (*parameter groups*), each with a ``"params"`` list
and any hyper-parameter to override for that group, exactly as in ``torch.optim``::

    optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=0.1)

``step()`` updates every parameter that has a gradient and ``requires_grad``, in place.  Parameters whose
``.grad`` is ``None`` are skipped and their state is left alone.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from normlab.backend import copy_array, like, namespace, to_host
from normlab.nn.module import Module, Parameter, _is_array
from normlab.nn.out_of_memory import annotate


class OptimizerStateError(ValueError):
    """A state dict that does not fit this optimizer; the optimizer was left unchanged."""


class Optimizer:
    """Base class.  Subclasses set ``state_keys`` (the arrays kept per parameter) and implement
    ``_check_group`` (hyper-parameter validation) and ``_update`` (one parameter's update rule)."""

    state_keys: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        if isinstance(params, Module):
            raise TypeError(
                f"{type(self).__name__}: pass model.parameters() (or parameter groups), not the model itself"
            )
        if isinstance(params, Parameter):
            raise TypeError(
                f"{type(self).__name__}: params must be an iterable of Parameters, got one Parameter"
            )
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Parameter, dict[str, Any]] = {}
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(groups[0], Mapping):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # ------------------------------------------------------------------------------- groups
    def add_param_group(self, group: Mapping[str, Any]) -> None:
        """Add a group of parameters, with hyper-parameters not given in ``group`` taken from the defaults."""
        name = type(self).__name__
        if not isinstance(group, Mapping) or "params" not in group:
            raise TypeError(
                f"{name}: a parameter group must be a dict with a 'params' entry, got {group!r:.100}"
            )
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{name}: params[{i}] is a {type(p).__name__}, not a normlab Parameter"
                )
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or seen & {id(p) for p in params}:
            raise ValueError(f"{name}: a parameter appears more than once across parameter groups")
        full = {
            **self.defaults,
            **{k: v for k, v in group.items() if k != "params"},
            "params": params,
        }
        self._check_group(full)
        self.param_groups.append(full)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ``ValueError`` for an invalid hyper-parameter of ``group``."""

    # ------------------------------------------------------------------------------- stepping
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter (``None`` by default, as PyTorch; zeros otherwise)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p.grad is None or not p.requires_grad:
                    continue
                try:
                    if isinstance(p.grad, np.ndarray):
                        grad = p.grad.astype(p.data.dtype, copy=False)
                    else:  # an array of another namespace (on a device): the standard's astype
                        grad = namespace(p.grad).astype(p.grad, p.data.dtype, copy=False)
                    self._update(p, grad, self.state.setdefault(p, {}), group)
                except MemoryError as err:
                    where = f"{type(self).__name__}.step, parameter {i} of group {g}"
                    raise annotate(err, where, "the update", (p.data,)) from err

    def _update(
        self, p: Parameter, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------- state
    def _indexed_params(self) -> list[Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {name: value}}, "param_groups": [{hyper-parameters, "params": [indices]}]}``.

        Parameters are numbered in group order, as ``torch.optim`` does, so the dict does not depend on object
        identity.  Arrays are copies.
        """
        index = {id(p): i for i, p in enumerate(self._indexed_params())}
        state = {
            index[id(p)]: {k: (copy_array(v) if _is_array(v) else v) for k, v in s.items()}
            for p, s in self.state.items()
            if id(p) in index
        }
        groups = [
            {
                **copy.deepcopy({k: v for k, v in g.items() if k != "params"}),
                "params": [index[id(p)] for p in g["params"]],
            }
            for g in self.param_groups
        ]
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyper-parameters and per-parameter state saved by :meth:`state_dict`.

        All-or-nothing: the group layout, every state entry's name, shape and type are checked first; on any
        error an :class:`OptimizerStateError` is raised and the optimizer is left exactly as it was.
        """
        self._apply_load(*self._prepare_load(state_dict))

    def _apply_load(
        self, groups: list[dict[str, Any]], state: dict[Parameter, dict[str, Any]]
    ) -> None:
        """Install what :meth:`_prepare_load` validated (cannot fail)."""
        for group, saved in zip(self.param_groups, groups, strict=True):
            params = group["params"]
            group.clear()
            group.update(saved, params=params)
        self.state = state

    def _prepare_load(
        self, state_dict: Mapping[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[Parameter, dict[str, Any]]]:
        """Validate ``state_dict`` against this optimizer and return (group hyper-parameters, state) to apply."""
        name = type(self).__name__

        def fail(message: str) -> OptimizerStateError:
            return OptimizerStateError(f"{name}.load_state_dict: {message} (nothing was changed)")

        if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "param_groups"}:
            raise fail("expected a dict with exactly the keys 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups):
            count = len(saved_groups) if isinstance(saved_groups, list) else "?"
            raise fail(
                f"the saved state has {count} parameter group(s), this optimizer {len(self.param_groups)}"
            )
        params = self._indexed_params()
        groups: list[dict[str, Any]] = []
        start = 0
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise fail(f"parameter group {gi} is not a dict with 'params'")
            expected = list(range(start, start + len(group["params"])))
            if list(saved["params"]) != expected:
                raise fail(
                    f"parameter group {gi} holds {len(saved['params'])} parameter(s), this optimizer's "
                    f"{len(group['params'])}"
                )
            start += len(expected)
            hyper = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            missing = set(self.defaults) - set(hyper)
            if missing:
                raise fail(f"parameter group {gi} lacks hyper-parameter(s) {sorted(missing)}")
            try:
                self._check_group({**hyper, "params": group["params"]})
            except (TypeError, ValueError) as exc:
                raise fail(f"parameter group {gi}: {exc}") from exc
            if "betas" in hyper:  # JSON turns tuples into lists
                hyper["betas"] = tuple(hyper["betas"])
            groups.append(hyper)

        if not isinstance(saved_state, Mapping):
            raise fail("'state' must be a dict from parameter index to state")
        state: dict[Parameter, dict[str, Any]] = {}
        for key, entry in saved_state.items():
            index = int(key) if isinstance(key, (int, str)) and str(key).isdigit() else -1
            if not 0 <= index < len(params):
                raise fail(f"state for parameter index {key!r}, which does not exist")
            if not isinstance(entry, Mapping):
                raise fail(f"state of parameter {index} is not a dict")
            p = params[index]
            unknown = set(entry) - set(self.state_keys) - {"step"}
            if unknown:
                raise fail(f"state of parameter {index} has unknown entries {sorted(unknown)}")
            restored: dict[str, Any] = {}
            for k, v in entry.items():
                if k == "step":
                    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
                        raise fail(
                            f"state of parameter {index}: 'step' must be a non-negative int, got {v!r}"
                        )
                    restored[k] = int(v)
                    continue
                arr = to_host(v) if _is_array(v) else np.asarray(v)
                if arr.shape != p.shape or arr.dtype.kind != "f":
                    raise fail(
                        f"state '{k}' of parameter {index}: expected a float array of shape {p.shape}, got "
                        f"{arr.dtype} array of shape {arr.shape}"
                    )
                # on the parameter's device, in its dtype, whichever device the state was saved from
                if isinstance(p.data, np.ndarray):
                    restored[k] = arr.astype(p.dtype, copy=True)
                else:
                    xp = namespace(p.data)
                    restored[k] = xp.astype(like(arr, p.data), p.data.dtype, copy=True)
            state[p] = restored
        return groups, state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} parameter(s), {hyper}")
        return "\n".join([*lines, ")"])


def check_non_negative(group: Mapping[str, Any], *names: str) -> None:
    """Raise ``ValueError`` unless each named hyper-parameter of ``group`` is a real number >= 0."""
    for name in names:
        value = group[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
            raise ValueError(f"invalid {name}: {value!r} (expected a number >= 0)")


def check_fraction(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` (a hyper-parameter called ``name``) lies in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"invalid {name}: {value!r} (expected 0 <= {name} < 1)")
