"""Tier 2: the architectures as data against SPEC.md: depth rules, shapes, padding, totals."""

import pytest

from mobilenet_np import spec


@pytest.mark.parametrize("value, expected", [
    (16.0, 16), (8.0, 8), (12.0, 16), (48.0, 48), (80.0, 80), (160.0, 160), (5.6, 8),
    (1280.0, 1280), (1792.0, 1792), (11.2, 16), (22.4, 24), (33.6, 32), (44.8, 48), (3.0, 8),
])
def test_make_divisible(value, expected):
    assert spec.make_divisible(value) == expected


def test_make_divisible_never_drops_more_than_10_percent():
    for v in range(1, 4000):
        got = spec.make_divisible(v / 7)
        assert got % 8 == 0 and got >= 8 and got >= 0.9 * (v / 7)


@pytest.mark.parametrize("nominal, multiplier, expected", [
    (32, 0.5, 16), (1024, 0.5, 512), (32, 0.25, 8), (64, 0.25, 16), (32, 0.1, 8), (1024, 0.75, 768),
    (100, 0.35, 35),  # truncation, no rounding to 8
])
def test_v1_depth(nominal, multiplier, expected):
    assert spec.v1_depth(nominal, multiplier) == expected


@pytest.mark.parametrize("multiplier, expected", [(0.35, 1280), (0.5, 1280), (0.75, 1280), (1.0, 1280),
                                                   (1.3, 1664), (1.4, 1792)])
def test_v2_last_layer_unscaled_below_one(multiplier, expected):
    assert spec.mobilenet_v2(multiplier).num_features == expected


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (160, 3, 2, (80, 0, 1)), (81, 3, 2, (41, 1, 1)), (80, 3, 1, (80, 1, 1)), (5, 1, 1, (5, 0, 0)),
    (33, 3, 2, (17, 1, 1)), (2, 3, 2, (1, 0, 1)),
])
def test_same_padding(size, kernel, stride, expected):
    assert spec.same_padding(size, kernel, stride) == expected


# SPEC.md section 3.2 / 4.1 / 6: the published-table figures our builder must reproduce.
@pytest.mark.parametrize("name, multiplier, size, macs, weights, tensors, features", [
    ("mobilenet_v1", 0.5, 160, 76_012_800, 807_648, 137, 512),
    ("mobilenet_v2", 0.5, 96, 17_605_440, 669_136, 262, 1280),
    ("mobilenet_v1", 1.0, 224, 567_716_352, 3_185_088, 137, 1024),   # slim docstring table
    ("mobilenet_v1", 0.75, 128, 106_002_432, 1_800_144, 137, 768),   # slim docstring table
])
def test_totals_match_spec(name, multiplier, size, macs, weights, tensors, features):
    arch = spec.build(name, multiplier)
    geo = spec.geometry(arch, (size, size))
    assert sum(g.macs for g in geo) == macs
    assert sum(layer.params for layer in arch.layers) == weights
    assert len(arch.variables(num_classes=1001)) == tensors
    assert arch.num_features == features


def test_v1_050_layer_table():
    arch = spec.mobilenet_v1(0.5)
    depths = [layer.out_depth for layer in arch.layers if layer.kind != "depthwise"]
    assert depths == [16, 32, 64, 64, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512]
    geo = spec.geometry(arch, (160, 160))
    assert [g.out_hw[0] for g in geo][::2] == [80, 80, 40, 40, 20, 20, 10, 10, 10, 10, 10, 10, 5, 5]
    # Every strided layer sees an even input at 160, so pads (0, 1) (SPEC 1.2).
    assert all(g.pad == (0, 1, 0, 1) for g in geo if g.layer.stride == 2)
    assert arch.variables()["MobilenetV1/Conv2d_13_pointwise/weights"] == (1, 1, 512, 512)


def test_v2_050_blocks():
    arch = spec.mobilenet_v2(0.5)
    scopes = [layer.scope for layer in arch.layers]
    assert "expanded_conv/expand" not in scopes                   # first block: no expand conv
    assert scopes[:3] == ["Conv", "expanded_conv/depthwise", "expanded_conv/project"]
    residual_blocks = [layer.scope.split("/")[0] for layer in arch.layers if layer.adds_residual]
    assert residual_blocks == [f"expanded_conv_{k}" for k in (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)]
    variables = arch.variables(1001)
    assert variables["MobilenetV2/Conv_1/weights"] == (1, 1, 160, 1280)
    assert variables["MobilenetV2/expanded_conv_1/expand/weights"] == (1, 1, 8, 48)
    assert variables["MobilenetV2/expanded_conv_16/project/weights"] == (1, 1, 480, 160)
    assert variables["MobilenetV2/Logits/Conv2d_1c_1x1/weights"] == (1, 1, 1280, 1001)
    projects = [layer for layer in arch.layers if layer.scope.endswith("project")]
    assert not any(layer.relu6 for layer in projects)             # linear bottleneck


def test_v2_endpoints():
    names = spec.mobilenet_v2(0.5).endpoint_names()
    assert names[0] == "layer_1" and "layer_19" in names and "layer_20" not in names
    assert "layer_2/expansion_output" not in names and "layer_3/expansion_output" in names
    assert "layer_18/output" in names and names[-3:] == ["global_pool", "Logits", "Predictions"]


def test_v1_endpoints():
    names = spec.mobilenet_v1(0.5).endpoint_names()
    assert len(names) == 27 + 3
    assert names[:3] == ["Conv2d_0", "Conv2d_1_depthwise", "Conv2d_1_pointwise"]


@pytest.mark.parametrize("size, final", [(128, 4), (160, 5), (224, 7), (256, 8), (33, 2), (32, 1)])
def test_v1_final_map(size, final):
    assert spec.geometry(spec.mobilenet_v1(0.5), (size, size))[-1].out_hw == (final, final)


def test_geometry_refuses_small_inputs():
    with pytest.raises(ValueError, match="minimum"):
        spec.geometry(spec.mobilenet_v1(0.5), (31, 64))


@pytest.mark.parametrize("name, multiplier, size", [("mobilenet_v1", 0.5, 160), ("mobilenet_v2", 0.5, 96)])
def test_docs_tables_are_what_the_code_computes(name, multiplier, size):
    from pathlib import Path

    from mobilenet_np.tables import format_table
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    assert format_table(spec.build(name, multiplier), (size, size), 1001) in doc
