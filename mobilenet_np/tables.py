"""Tables about a network, as records and as text: the per-layer summary (op, stride, shapes,
SAME padding, params, MACs: the table docs/architecture.md shows and tests/test_spec.py checks
against SPEC.md) and the per-layer profile that ``MobileNet.profile`` measures."""

from __future__ import annotations

from . import spec


def layer_table(arch: spec.Architecture, input_hw: tuple[int, int]) -> list[dict]:
    rows = []
    for g in spec.geometry(arch, input_hw):
        layer = g.layer
        rows.append({
            "scope": layer.scope, "op": layer.kind, "kernel": layer.kernel, "stride": layer.stride,
            "in_shape": (*g.in_hw, layer.in_depth), "out_shape": (*g.out_hw, layer.out_depth),
            "pad": g.pad, "relu6": layer.relu6, "residual": layer.adds_residual,
            "params": layer.params, "macs": g.macs, "endpoints": layer.endpoints,
        })
    return rows


def format_table(arch: spec.Architecture, input_hw: tuple[int, int], num_classes: int = 0) -> str:
    rows = layer_table(arch, input_hw)
    header = f"{'#':>3}  {'scope':<28} {'op':<9} {'k':>1} {'s':>1}  {'in':>13}  {'out':>13}  {'pad t,b,l,r':<11} {'act':<10} {'params':>9} {'MACs':>12}"
    lines = [f"{arch.scope} depth multiplier {arch.depth_multiplier:g}, input {input_hw[0]}x{input_hw[1]}", header,
             "-" * len(header)]
    for i, r in enumerate(rows):
        act = ("relu6" if r["relu6"] else "linear") + ("+res" if r["residual"] else "")
        shape_in = "x".join(map(str, r["in_shape"]))
        shape_out = "x".join(map(str, r["out_shape"]))
        pad = ",".join(map(str, r["pad"]))
        lines.append(f"{i:>3}  {r['scope']:<28} {r['op']:<9} {r['kernel']:>1} {r['stride']:>1}  {shape_in:>13}  "
                     f"{shape_out:>13}  {pad:<11} {act:<10} {r['params']:>9,} {r['macs']:>12,}")
    macs = sum(r["macs"] for r in rows)
    params = sum(r["params"] for r in rows)
    lines.append("-" * len(header))
    lines.append(f"backbone: {params:,} conv weights, {macs:,} MACs; features: {arch.num_features}")
    if num_classes:
        lines.append(f"logits: {arch.num_features * num_classes:,} MACs, "
                     f"{arch.num_features * num_classes + num_classes:,} weights + biases ({num_classes} classes)")
    return "\n".join(lines)


def format_profile(rows: list[dict]) -> str:
    """The per-layer profile as text, with each op kind's share of the time."""
    total = sum(r["ms"] for r in rows)
    lines = [f"{'scope':<28} {'op':<9} {'out shape':>18} {'MACs':>12} {'ms':>8} {'GMAC/s':>7} {'share':>6}"]
    for r in rows:
        shape = "x".join(map(str, r["out_shape"]))
        lines.append(f"{r['scope']:<28} {r['op']:<9} {shape:>18} {r['macs']:>12,} {r['ms']:>8.3f} "
                     f"{r['gmacs']:>7.1f} {r['ms'] / total:>6.1%}")
    by_op: dict[str, list[float]] = {}
    for r in rows:
        by_op.setdefault(r["op"], [0.0, 0.0])
        by_op[r["op"]][0] += r["ms"]
        by_op[r["op"]][1] += r["macs"]
    macs = sum(r["macs"] for r in rows)
    lines.append(f"total {total:.3f} ms, {macs / total / 1e6:.1f} GMAC/s; by op: " + ", ".join(
        f"{op} {ms:.3f} ms ({ms / total:.0%}, {m / ms / 1e6 if ms else 0:.1f} GMAC/s)" for op, (ms, m) in by_op.items()))
    return "\n".join(lines)
