"""Endpoint names: the TF-Slim endpoints a model publishes, the layer scopes that name them too,
and the endpoint that ends each output stride.

TF-Slim publishes V1's endpoints under the layer scopes (``Conv2d_5_pointwise``) but V2's
under block numbers: ``layer_1`` is the stem ``Conv``, block ``expanded_conv`` is ``layer_2``,
``expanded_conv_k`` is ``layer_{k+2}`` (with ``/expansion_output``, ``/depthwise_output`` and
``/output`` for its expand, depthwise and project convolutions) and ``Conv_1`` is ``layer_19``
(SPEC.md pitfall 26).  ``summary()`` lists layers by scope, so the scopes are accepted as
aliases: ``expanded_conv_3/project`` is ``layer_5/output``, ``expanded_conv_3`` is ``layer_5``.
Deliberately not here: computing anything (``model.py``).
"""

from __future__ import annotations

from . import spec

#: Output strides a feature pyramid takes maps at (timm's ``out_indices`` 1-4, and the stem's 2).
OUTPUT_STRIDES = (2, 4, 8, 16, 32)


def scope_aliases(arch: spec.Architecture) -> dict[str, str]:
    """Layer scope -> the endpoint its output is published as; for V2 also block -> block output."""
    aliases = {}
    for layer in arch.layers:
        if layer.scope not in layer.endpoints:
            aliases[layer.scope] = layer.endpoints[0]
        block, _, part = layer.scope.partition("/")
        if part == "project":
            aliases[block] = layer.endpoints[-1]
    return aliases


def resolve(arch: spec.Architecture, names, available: list[str]) -> dict[str, str]:
    """Requested name -> endpoint name, in request order; raises a KeyError listing the valid
    names (and close ones) when one is unknown."""
    aliases = scope_aliases(arch)
    out, unknown = {}, []
    for name in names:
        target = name if name in available else aliases.get(name)
        if target is None or target not in available:
            unknown.append(name)
        else:
            out[name] = target
    if unknown:
        import difflib
        close = sorted({c for n in unknown for c in difflib.get_close_matches(n, [*available, *aliases], 3)})
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise KeyError(f"unknown endpoint(s) {unknown}; {hint}available: {', '.join(available)} "
                       f"(the layer scopes of summary() also work)")
    return out


def stride_endpoints(arch: spec.Architecture, strides=(4, 8, 16, 32)) -> list[str]:
    """For each output stride, the last block output at that stride (the map a detection or
    segmentation head takes): V1's pointwise layers, V2's ``layer_N`` block outputs."""
    last_at: dict[int, str] = {}
    stride = 1
    for layer in arch.layers:
        stride *= layer.stride
        main = [e for e in layer.endpoints if "/" not in e]
        if main:
            last_at[stride] = main[-1]
    bad = [s for s in strides if s not in last_at]
    if bad:
        raise ValueError(f"output strides {bad} do not exist; {arch.name} has {', '.join(map(str, sorted(last_at)))}")
    return [last_at[s] for s in strides]
