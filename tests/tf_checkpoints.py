"""Test helper: write genuine TensorFlow V2 checkpoints with TensorFlow itself.

The reader in ``weights_tools.tensor_bundle`` must never import TensorFlow; the tests
use this module to produce reference files and reference values instead.  TensorFlow
is imported inside the functions, so importing this module is cheap and safe on a
machine without TensorFlow (the tests guard with ``pytest.importorskip``).

It deliberately does not build TF-Slim graphs: ``slim_like_tensors`` only mimics the
*names* and dtypes such checkpoints hold (weights plus EMA and RMSProp slots plus a
``global_step``).
"""

from __future__ import annotations

import os
import shutil

import numpy as np


def _tf():
    import tensorflow as tf  # noqa: PLC0415 - deliberately lazy, see module docstring

    return tf


def _save_v2(tf, prefix: str, tensors: dict[str, np.ndarray]) -> None:
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[name]) for name in names],
    )


def write_checkpoint(prefix: str | os.PathLike, tensors: dict[str, np.ndarray], num_shards: int = 1) -> str:
    """Write ``tensors`` as a TF V2 checkpoint at ``prefix`` and return the prefix.

    With ``num_shards > 1`` the tensors are dealt round-robin (in name order) into
    ``num_shards`` parts, each part is saved with SaveV2 under the ``<prefix>_temp/part``
    sharded names that ``tf.compat.v1.train.Saver(sharded=True)`` uses, and the parts
    are merged with MergeV2Checkpoints, so the result has
    ``<prefix>.data-0000k-of-0000N`` files exactly as TensorFlow's own saver leaves them.
    The result is checked by reading it back with ``tf.train.load_checkpoint``.
    """
    tf = _tf()
    prefix = os.fspath(prefix)
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)  # SaveV2 creates no directories
    if num_shards < 1 or num_shards > max(1, len(tensors)):
        raise ValueError(f"num_shards must be in [1, {max(1, len(tensors))}], got {num_shards}")
    if num_shards == 1:
        _save_v2(tf, prefix, tensors)
    else:
        names = sorted(tensors)
        temp_base = prefix + "_temp/part"
        os.makedirs(prefix + "_temp", exist_ok=True)
        part_prefixes = []
        for shard in range(num_shards):
            part = tf.raw_ops.ShardedFilename(basename=temp_base, shard=shard, num_shards=num_shards)
            part = part.numpy().decode()
            _save_v2(tf, part, {name: tensors[name] for name in names[shard::num_shards]})
            part_prefixes.append(part)
        tf.raw_ops.MergeV2Checkpoints(
            checkpoint_prefixes=part_prefixes, destination_prefix=prefix, delete_old_dirs=True
        )
        shutil.rmtree(prefix + "_temp", ignore_errors=True)

    reader = tf.train.load_checkpoint(prefix)
    stored = reader.get_variable_to_shape_map()
    if set(stored) != set(tensors):
        raise AssertionError(f"TensorFlow wrote {sorted(stored)}, expected {sorted(tensors)}")
    for k in range(num_shards):
        shard_path = f"{prefix}.data-{k:05d}-of-{num_shards:05d}"
        if not os.path.exists(shard_path):
            raise AssertionError(f"TensorFlow did not write {shard_path}")
    return prefix


def _module_with_variables(tf, variables: dict[str, np.ndarray]):
    module = tf.Module()
    for name, value in variables.items():
        setattr(module, name, tf.Variable(value))
    return module


def write_object_checkpoint(prefix: str | os.PathLike, variables: dict[str, np.ndarray]) -> str:
    """A TF2 object-based checkpoint (``tf.train.Checkpoint.write``) of a module holding
    ``variables`` (names must be Python identifiers); returns the prefix written."""
    tf = _tf()
    return tf.train.Checkpoint(model=_module_with_variables(tf, variables)).write(os.fspath(prefix))


def write_saved_model(directory: str | os.PathLike, variables: dict[str, np.ndarray]) -> str:
    """A TF2 SavedModel of a module holding ``variables``; returns the directory."""
    tf = _tf()
    tf.saved_model.save(_module_with_variables(tf, variables), os.fspath(directory))
    return os.fspath(directory)


def write_checkpoint_state(directory: str | os.PathLike, model_checkpoint_path: str) -> None:
    """Write the text ``checkpoint`` state file that names the latest checkpoint."""
    _tf().compat.v1.train.update_checkpoint_state(os.fspath(directory), model_checkpoint_path)


def load_with_tensorflow(prefix: str) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint at ``prefix``, as TensorFlow reads it."""
    reader = _tf().train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def slim_like_tensors(rng: np.random.Generator, names_and_shapes) -> dict[str, np.ndarray]:
    """Float32 variables named like a TF-Slim model, plus the training leftovers.

    For each ``(name, shape)`` this adds the variable itself and the three slots a
    TF-Slim training run stores next to it (``<name>/ExponentialMovingAverage``,
    ``<name>/RMSProp``, ``<name>/RMSProp_1``), and one int64 scalar ``global_step``.
    """
    out: dict[str, np.ndarray] = {}
    for name, shape in names_and_shapes:
        for suffix in ("", "/ExponentialMovingAverage", "/RMSProp", "/RMSProp_1"):
            out[name + suffix] = rng.standard_normal(shape).astype(np.float32)
    out["global_step"] = np.array(int(rng.integers(1, 10**9)), dtype=np.int64)
    return out
