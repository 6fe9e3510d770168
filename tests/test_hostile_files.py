"""Issue 13: hostile and broken weight files.  Every file is generated inside the test.

Security (paths out of the TF.js folder, HDF5 data from other files, FIFOs), shapes checked
before any data is read, only the project's own one-line errors, and values (NaN, negative
variance or epsilon, integer kernels) refused alike by convert, verify and load.
"""

import json
import os
import signal
import struct
import time
import tracemalloc
from contextlib import contextmanager

import h5py
import numpy as np
import pytest
from generated_sources import SMALL, write_keras_h5, write_tfjs, write_weights_file

import mobilenet_np as mnp
from mobilenet_np import spec, weights_file
from mobilenet_np.errors import ArchitectureError, CorruptFileError, UnsupportedFormatError, WeightsError
from weights_tools.cli import main as weights_tools_main
from weights_tools.convert import convert, open_source


@contextmanager
def time_limit(seconds: int):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _manifest(model_json):
    return json.loads(model_json.read_text())


def _save(model_json, model):
    model_json.write_text(json.dumps(model))


# --- security: TF.js paths --------------------------------------------------------------------

@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked_folder"])
def test_tfjs_shard_paths_stay_in_the_model_folder(tmp_path, rng, how):
    model_json = write_tfjs(tmp_path / "model", rng)
    shard = tmp_path / "model" / "group1-shard1of1.bin"
    secret = tmp_path / "outside" / "secret.bin"
    secret.parent.mkdir()
    os.replace(shard, secret)                       # the right bytes, but outside the folder
    model = _manifest(model_json)
    if how == "dotdot":
        model["weightsManifest"][0]["paths"] = ["../outside/secret.bin"]
    elif how == "absolute":
        model["weightsManifest"][0]["paths"] = [str(secret)]
    elif how == "symlink":
        shard.symlink_to(secret)
    else:
        (tmp_path / "model" / "sub").symlink_to(secret.parent)
        model["weightsManifest"][0]["paths"] = ["sub/secret.bin"]
    _save(model_json, model)
    with pytest.raises(CorruptFileError, match="model.json: weight shard .*leaves the model folder"):
        open_source(model_json)


def test_tfjs_shard_in_a_subfolder_is_fine(tmp_path, rng):
    model_json = write_tfjs(tmp_path / "model", rng, shard="shards/group1-shard1of1.bin")
    assert len(open_source(model_json).tensors) == 54


# --- security: HDF5 storage outside the file -------------------------------------------------

def _rewrite_dataset(path, name, how, tmp_path):
    """Replace dataset ``name`` by one with the same shape whose bytes live elsewhere."""
    with h5py.File(path, "r+") as f:
        value = f[name][()]
        del f[name]
        if how == "external":
            raw = tmp_path / "elsewhere.bin"
            raw.write_bytes(value.astype("<f4").tobytes())
            f.create_dataset(name, shape=value.shape, dtype="<f4", external=[(str(raw), 0, value.nbytes)])
        else:
            other = tmp_path / "source.h5"
            with h5py.File(other, "w") as g:
                g["x"] = value
            layout = h5py.VirtualLayout(shape=value.shape, dtype="<f4")
            layout[...] = h5py.VirtualSource(str(other), "x", shape=value.shape)
            f.create_virtual_dataset(name, layout)


@pytest.mark.parametrize("how", ["external", "virtual"])
def test_weights_file_with_data_outside_the_file_is_refused(tmp_path, rng, how):
    path = write_weights_file(tmp_path / "w.h5", rng)
    _rewrite_dataset(path, "MobilenetV1/Conv2d_0/weights", how, tmp_path)
    with pytest.raises(UnsupportedFormatError, match=r"w.h5: dataset /MobilenetV1/Conv2d_0/weights is not stored in the file"):
        weights_file.read(path)


@pytest.mark.parametrize("how", ["external", "virtual"])
def test_keras_h5_with_data_outside_the_file_is_refused(tmp_path, rng, how):
    path = write_keras_h5(tmp_path / "k.h5", rng)
    _rewrite_dataset(path, "model_weights/conv1/conv1/kernel:0", how, tmp_path)
    with pytest.raises(UnsupportedFormatError, match=r"k.h5: dataset .*conv1/kernel:0 is not stored in the file"):
        open_source(path)


def test_external_storage_on_a_fifo_does_not_hang(tmp_path, rng):
    path = write_weights_file(tmp_path / "w.h5", rng)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with h5py.File(path, "r+") as f:
        del f["MobilenetV1/Conv2d_0/weights"]
        f.create_dataset("MobilenetV1/Conv2d_0/weights", shape=(3, 3, 3, 8), dtype="<f4",
                         external=[(str(fifo), 0, 864)])
    with time_limit(20), pytest.raises(UnsupportedFormatError, match="not stored in the file"):
        weights_file.read(path)


@pytest.mark.parametrize("name", ["x.h5", "x.tflite", "model.json", "x.ckpt.index"])
def test_a_fifo_named_as_an_input_does_not_hang(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with time_limit(20), pytest.raises(WeightsError, match=f"{name}"):
        open_source(fifo)


def test_a_fifo_as_a_tfjs_shard_does_not_hang(tmp_path, rng):
    model_json = write_tfjs(tmp_path / "model", rng)
    shard = tmp_path / "model" / "group1-shard1of1.bin"
    shard.unlink()
    os.mkfifo(shard)
    with time_limit(20), pytest.raises(UnsupportedFormatError, match="group1-shard1of1.bin: is a FIFO"):
        open_source(model_json)


# --- shapes before data ---------------------------------------------------------------------

def _huge_dataset(f, name, shape):
    """A dataset declaring ``shape`` with one small chunk actually stored (a few bytes on disk)."""
    chunk = (1,) * (len(shape) - 1) + (8,)
    f.create_dataset(name, shape=shape, dtype="<f4", chunks=chunk)[(0,) * (len(shape) - 1) + (slice(0, 8),)] = 1


@pytest.mark.parametrize("shape", [(31000, 32000), (100000, 100000), (3, 3, 3, 2**40)])
def test_keras_huge_declared_kernel_is_refused_before_reading(tmp_path, rng, shape):
    path = write_keras_h5(tmp_path / "k.h5", rng)
    with h5py.File(path, "r+") as f:
        del f["model_weights/conv1/conv1/kernel:0"]
        _huge_dataset(f, "model_weights/conv1/conv1/kernel:0", shape)
    assert os.path.getsize(path) < 4 << 20
    start = time.perf_counter()
    with time_limit(60), pytest.raises(ArchitectureError, match=r"k.h5: .*Conv2d_0/weights has shape"):
        open_source(path)
    assert time.perf_counter() - start < 10         # it took 33 s when the data was read first
    tracemalloc.start()
    try:
        with pytest.raises(ArchitectureError):
            open_source(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_weights_file_huge_declared_dataset_is_refused_before_reading(tmp_path, rng):
    path = write_weights_file(tmp_path / "w.h5", rng)
    with h5py.File(path, "r+") as f:
        del f["MobilenetV1/Conv2d_1_pointwise/weights"]
        _huge_dataset(f, "MobilenetV1/Conv2d_1_pointwise/weights", (1, 1, 8, 2**34))
    # time_limit: the storage size of this chunked dataset walks 2^31 chunk slots (a hang).
    with time_limit(30), pytest.raises(ArchitectureError, match="w.h5: .*Conv2d_1_pointwise/weights has shape"):
        weights_file.read(path)


def test_tfjs_huge_declared_shape_is_refused(tmp_path, rng):
    model_json = write_tfjs(tmp_path / "model", rng)
    model = _manifest(model_json)
    model["weightsManifest"][0]["weights"][0]["shape"] = [0, 2**40, 2**40, 2**40]
    _save(model_json, model)
    with pytest.raises(ArchitectureError, match="model.json: weight .* declares shape"):
        open_source(model_json)


# --- attributes and values of weights files: verify and load agree ---------------------------

BAD_ATTRIBUTES = [
    ("depth_multiplier", 40.0), ("depth_multiplier", float("inf")), ("depth_multiplier", float("nan")),
    ("depth_multiplier", "0.25"), ("default_input_size", 96), ("default_input_size", "[96, 1e9]"),
    ("default_input_size", "[8, 8]"), ("labels_offset", "[0, 0]"), ("labels_offset", 7),
    ("num_classes", -3), ("num_classes", 1.5), ("batchnorm_epsilon", -1.0), ("batchnorm_epsilon", 0.0),
    ("batchnorm_epsilon", float("nan")), ("architecture", "mobilenet_v3"), ("source_files", "{}"),
    ("format_version", "1"), ("format_version", True), ("converter_version", b"\xff\xfe"),
]


def _verify_and_load(path, capsys):
    """(verify's exit status and one-line stderr, the error load raises or None)."""
    status = weights_tools_main(["verify", str(path)])
    err = capsys.readouterr().err
    try:
        mnp.load(str(path))
    except WeightsError as exc:
        return status, err, exc
    return status, err, None


@pytest.mark.parametrize("name, value", BAD_ATTRIBUTES)
def test_weights_file_bad_attribute_is_one_clear_error(tmp_path, rng, capsys, name, value):
    path = write_weights_file(tmp_path / "w.h5", rng)
    with h5py.File(path, "r+") as f:
        f.attrs[name] = np.void(value) if isinstance(value, bytes) else value
    status, err, load_error = _verify_and_load(path, capsys)
    assert status == 1 and err.count("\n") == 1 and "w.h5" in err and "Traceback" not in err
    assert load_error is not None and str(load_error) in err


@pytest.mark.parametrize("tensor, value", [
    ("MobilenetV1/Conv2d_3_depthwise/BatchNorm/moving_variance", -0.5),
    ("MobilenetV1/Conv2d_0/weights", np.nan), ("MobilenetV1/Conv2d_5_pointwise/BatchNorm/beta", np.inf)])
def test_weights_file_bad_values_are_refused_by_verify_and_load(tmp_path, rng, capsys, tensor, value):
    path = write_weights_file(tmp_path / "w.h5", rng)
    with h5py.File(path, "r+") as f:
        data = f[tensor][()]
        data.reshape(-1)[3] = value
        f[tensor][...] = data
    status, err, load_error = _verify_and_load(path, capsys)
    assert status == 1 and tensor in err and load_error is not None and tensor in str(load_error)


def test_integer_weights_file_dataset_is_refused(tmp_path, rng):
    path = write_weights_file(tmp_path / "w.h5", rng)
    with h5py.File(path, "r+") as f:
        del f["MobilenetV1/Conv2d_0/weights"]
        f["MobilenetV1/Conv2d_0/weights"] = np.ones((3, 3, 3, 8), np.int32)
    with pytest.raises(ArchitectureError, match="Conv2d_0/weights has dtype int32"):
        weights_file.read(path)


def test_write_refuses_what_read_would_refuse(tmp_path, rng):
    arch = spec.build(*SMALL)
    from generated_sources import random_tensors, weights_attrs
    tensors = random_tensors(arch, rng)
    tensors["MobilenetV1/Conv2d_1_depthwise/BatchNorm/moving_variance"][0] = -1
    with pytest.raises(CorruptFileError, match="negative variances"):
        weights_file.write(tmp_path / "w.h5", tensors, weights_attrs(arch))
    with pytest.raises(CorruptFileError, match="batchnorm_epsilon"):
        weights_file.write(tmp_path / "w.h5", random_tensors(arch, rng), {**weights_attrs(arch), "batchnorm_epsilon": -1})
    assert not list(tmp_path.iterdir())


def test_damaged_weights_file_structure_is_a_clear_error(tmp_path, rng, capsys):
    """Flipped bytes in HDF5 object headers make h5py raise RuntimeError/KeyError/OSError."""
    path = write_weights_file(tmp_path / "w.h5", rng)
    data = bytearray(path.read_bytes())
    # Damage every object header, B-tree, heap and symbol-table signature (old and new HDF5
    # layouts): opening or visiting the groups must fail cleanly.
    names = (b"OHDR", b"OCHK", b"TREE", b"HEAP", b"SNOD", b"BTHD", b"BTLF", b"FRHP", b"FHDB")
    signatures = [at for at in range(len(data) - 4) if data[at:at + 4] in names]
    assert signatures
    for at in signatures:
        data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    status = weights_tools_main(["verify", str(path)])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and "w.h5" in err


# --- converting: values --------------------------------------------------------------------

def test_tfjs_int32_kernel_is_refused(tmp_path, rng):
    model_json = write_tfjs(tmp_path / "model", rng)
    model = _manifest(model_json)
    model["weightsManifest"][0]["weights"][0]["dtype"] = "int32"
    _save(model_json, model)
    with pytest.raises(ArchitectureError, match="model.json: tensor MobilenetV1/Conv2d_0/weights has dtype int32"):
        convert(model_json, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("entry, problem", [
    ({"quantization": []}, "malformed weightsManifest entry"),
    ({"quantization": {"dtype": "float64"}}, "stored as 'float64'"),
    ({"shape": [True, 3, 3, 8]}, "bad name or shape"),
    ({"dtype": ["float32"]}, "dtype"),
    ({"name": 7}, "bad name or shape"),
])
def test_tfjs_malformed_manifest_entries_are_clear_errors(tmp_path, rng, entry, problem):
    model_json = write_tfjs(tmp_path / "model", rng)
    model = _manifest(model_json)
    model["weightsManifest"][0]["weights"][0].update(entry)
    _save(model_json, model)
    with pytest.raises(WeightsError, match=f"model.json: .*{problem}"):
        open_source(model_json)


def test_tfjs_deeply_nested_json_is_a_clear_error(tmp_path):
    model_json = tmp_path / "model.json"
    model_json.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CorruptFileError, match="model.json: not valid JSON"):
        open_source(model_json)


def test_tflite_weight_holding_nan_is_refused_at_convert(tmp_path, shared):
    """Overwrite the first float of the first conv kernel of a real float .tflite with NaN."""
    from weights_tools import tflite_schema
    original = shared("weights", "mobilenet_v1_025_160", "tflite_float", "mobilenet_v1_0.25_160.jevois.tflite")
    data = bytearray(original.read_bytes())
    model = tflite_schema.parse_model(bytes(data), "x")
    sub = model.subgraphs[0]
    conv = next(op for op in sub.operators if op.opcode == tflite_schema.CONV_2D)
    buffer = model.buffers[sub.tensors[conv.inputs[1]].buffer]
    start = bytes(data).find(bytes(buffer[:64]))
    data[start:start + 4] = struct.pack("<f", float("nan"))
    path = tmp_path / "nan.tflite"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="nan.tflite: tensor MobilenetV1/Conv2d_0/weights holds NaN"):
        convert(path, tmp_path / "out.h5")
    assert weights_tools_main(["convert", str(path), str(tmp_path / "out.h5")]) == 1
    assert not (tmp_path / "out.h5").exists()


def test_implausible_declared_input_size_is_not_recorded(tmp_path, rng):
    """A source declaring a 10^6-pixel input converts; the file records the default size."""
    model_json = write_tfjs(tmp_path / "model", rng)
    model = _manifest(model_json)
    model["modelTopology"]["node"][0]["attr"]["shape"]["shape"]["dim"][1:3] = [{"size": "1000000"}] * 2
    _save(model_json, model)
    convert(model_json, tmp_path / "out.h5")
    assert weights_file.read(tmp_path / "out.h5").attrs["default_input_size"] == [224, 224]


@pytest.mark.parametrize("where", ["const_shape", "dilations", "placeholder"])
def test_tfjs_infinite_numbers_in_the_graph_are_clear_errors(tmp_path, rng, where):
    """The fuzz campaign's OverflowError: int(float('inf')) on a JSON Infinity."""
    model_json = write_tfjs(tmp_path / "model", rng)
    model = _manifest(model_json)
    nodes = model["modelTopology"]["node"]
    if where == "const_shape":
        nodes[1]["attr"]["value"]["tensor"]["tensorShape"]["dim"][0]["size"] = float("inf")
    elif where == "dilations":
        nodes[3]["attr"]["dilations"]["list"]["i"][0] = float("inf")
    else:
        nodes[0]["attr"]["shape"]["shape"]["dim"][1]["size"] = float("inf")
    _save(model_json, model)
    if where == "placeholder":                      # an unreadable input size is just not recorded
        assert open_source(model_json).input_size is None
    else:
        with pytest.raises(CorruptFileError, match="model.json: attr .* is malformed"):
            open_source(model_json)


def test_weights_files_carry_checksums_so_a_flipped_value_is_refused(tmp_path, rng):
    """Written with Fletcher-32 per tensor: one flipped bit in a tensor's bytes is refused
    instead of read as another value."""
    path = write_weights_file(tmp_path / "w.h5", rng)
    name = "MobilenetV1/Conv2d_5_pointwise/weights"
    with h5py.File(path) as f:
        assert f[name].fletcher32
        offset = f[name].id.get_chunk_info(0).byte_offset
    original = path.read_bytes()
    for at in (offset + 100, offset + 4 * 1024):
        data = bytearray(original)
        data[at] ^= 0x10
        path.write_bytes(bytes(data))
        with pytest.raises(CorruptFileError, match="w.h5: damaged HDF5 file"):
            weights_file.read(path)


@pytest.mark.parametrize("damage", ["past_the_end", "overlap", "unallocated"])
def test_hdf5_data_addresses_that_make_no_sense_are_refused(tmp_path, rng, damage):
    """Keras files carry no checksums: a damaged data address must not read other bytes of
    the file (or the fill value) as weights."""
    path = write_keras_h5(tmp_path / "k.h5", rng)
    name = "model_weights/conv_pw_3/conv_pw_3/kernel:0"
    with h5py.File(path, "r+") as f:
        if damage == "unallocated":
            shape = f[name].shape
            del f[name]
            f.create_dataset(name, shape=shape, dtype="<f4")          # declared, never written
            offset = size = None
        else:
            offset, size = f[name].id.get_offset(), f[name].id.get_storage_size()
            other = f["model_weights/conv_pw_2/conv_pw_2/kernel:0"].id.get_offset()
    if damage != "unallocated":
        data = bytearray(path.read_bytes())
        new = len(data) - 16 if damage == "past_the_end" else other + 4
        at = bytes(data).find(offset.to_bytes(8, "little"))       # the address in the layout message
        assert at > 0 and size
        data[at:at + 8] = new.to_bytes(8, "little")
        path.write_bytes(bytes(data))
    # HDF5 itself refuses some addresses past the end when it opens the dataset.
    problem = {"past_the_end": "(lies past the end|invalid dataset size)", "overlap": "share bytes", "unallocated": "no data stored"}[damage]
    with pytest.raises(CorruptFileError, match=f"k.h5: .*{problem}"):
        open_source(path)


def test_a_damaged_float_type_is_refused(tmp_path, rng):
    """The fuzz campaign's one silent change in a checksummed weights file: a flipped byte in a
    datatype message (the exponent bias) scaled every value by 2^46, with the data intact."""
    path = write_weights_file(tmp_path / "w.h5", rng)
    name = "MobilenetV1/Conv2d_7_depthwise/BatchNorm/moving_variance"
    with h5py.File(path, "r+") as f:
        value = f[name][()]
        del f[name]
        odd = h5py.h5t.IEEE_F32LE.copy()
        odd.set_ebias(81)
        space = h5py.h5s.create_simple(value.shape)
        dataset = h5py.h5d.create(f.id, name.encode(), odd, space)    # the low-level API keeps the type
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, value)
    with pytest.raises(CorruptFileError, match=f"w.h5: dataset /{name} has a non-standard floating-point type"):
        weights_file.read(path)
