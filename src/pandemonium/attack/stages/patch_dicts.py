"""Dicts of patches: how a stage runs when a pipeline carries several named patches.

:class:`PatchDictForwarding` is the part of :class:`~pandemonium.attack.stages.base.PipelineBase`
that handles a ``{key: batch}`` input for a stage that does not take the whole dict itself
(``handles_dicts = False``): each selected key (``keys``, default all) is sampled and applied on its
own, its sampled names prefixed with ``"<key>/"``; electricmayhem's ``_forward_single`` is called once
per selected key. Unknown keys are one :class:`~pandemonium.attack.stages.contract.StageError` naming
them and the available keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from pandemonium.attack.stages.contract import KEY_SEPARATOR, StageError

__all__ = ["PatchDictForwarding"]


class PatchDictForwarding:
    """Mixin of :class:`~pandemonium.attack.stages.base.PipelineBase`: forwarding a dict of patches.

    Relies on the base's ``keys``, ``params``, ``_last_params``, ``_resolve_params``, ``_layout``,
    ``_split_output`` and ``_forward_single``.
    """

    def _forward_per_patch(self, x, control, evaluate, params, kwargs) -> tuple[Any, dict[str, Any]]:
        given = dict(params) if params is not None else {}
        if isinstance(x, Tensor):
            return self._split_output(
                self._forward_single(x, control=control, evaluate=evaluate, params=given, **kwargs), kwargs
            )
        if not isinstance(x, Mapping):
            raise StageError(f"stage {self.name!r}: expected a tensor or a dict of tensors, got {type(x).__name__}")
        selected = list(self.params.get("keys") or self.keys or list(x))
        missing = [k for k in selected if k not in x]
        if missing:
            raise StageError(
                f"stage {self.name!r}: keys {missing} not in the input dict; available patch keys: {sorted(x)}"
            )
        out = dict(x)
        for key in x:
            if key in selected:
                result = self._forward_single(
                    x[key], control=control, evaluate=evaluate, params=given, key=key, **kwargs
                )
                out[key], kwargs = self._split_output(result, kwargs)
        return out, kwargs

    def _selected_keys(self, x: Mapping[str, Any]) -> list[str]:
        self._check_keys(x)
        return list(self.keys) if self.keys is not None else list(x.keys())

    def _check_keys(self, x: Mapping[str, Any]) -> None:
        if self.keys is None:
            return
        missing = [k for k in self.keys if k not in x]
        if missing:
            raise StageError(
                f"stage {self.name!r}: keys {missing} not in the input dict; available patch keys: "
                f"{sorted(x.keys())}"
            )

    def _forward_dict(self, x, control, evaluate, params, kwargs):
        selected = self._selected_keys(x)
        out = dict(x)
        merged_last: dict[str, Tensor] = {}
        if params is not None:
            unknown = [k for k in params if k.split(KEY_SEPARATOR, 1)[0] not in selected]
            if unknown:
                raise StageError(
                    f"stage {self.name!r}: params keys {unknown} do not start with a selected patch key "
                    f"({selected}) followed by {KEY_SEPARATOR!r}"
                )
        last = self._last_params
        for key in selected:
            value = x[key]
            if not isinstance(value, Tensor):
                raise StageError(
                    f"stage {self.name!r}: input[{key!r}] must be a tensor, got {type(value).__name__}"
                )
            prefix = key + KEY_SEPARATOR
            sub_params = None
            if params is not None:
                sub_params = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
            sub_last = None
            if control and params is None and last is not None:
                sub_last = {k[len(prefix) :]: v for k, v in last.items() if k.startswith(prefix)}
                if not sub_last and self._layout(value.shape, value.device, evaluate):
                    raise self._no_previous_sample_error()  # the previous call had no patch `key`
            sampled = self._resolve_params(value.shape, value, control, evaluate, sub_params, sub_last)
            merged_last.update({prefix + k: v for k, v in sampled.items()})
            result = self.apply(value, sampled, control=control, evaluate=evaluate, **kwargs)
            out[key], kwargs = self._split_output(result, kwargs)
        self._last_params = merged_last
        self._last_batch_size = int(x[selected[0]].shape[0]) if selected else None
        return out, kwargs
