"""Restoring the newest readable checkpoint of a model directory, and clearing what a killed save left behind.

A checkpoint can be damaged after it was written (a truncated or bit-flipped data file, a corrupt or lost
index, a variable missing from the index). `restore_newest_readable` tries the checkpoints that the directory's
`checkpoint` state lists, newest first, restores the first one that holds every variable of the objects, and
says in one line which ones it skipped and which one it used. It never deletes a damaged checkpoint: training
moves it into `unreadable/` (where the next save of that step, or the pruning of old checkpoints, cannot
overwrite or delete it) and rewrites the state to end at the checkpoint it used; evaluation, sampling and export
leave the files untouched.

A kill during a save leaves a `ckpt-N_temp/` directory (TensorFlow writes the data there before it moves it into
place and updates the state file): `remove_partial_saves` deletes those.
"""

import glob
import os

import tensorflow as tf

from apps import errors, gin_experiment

UNREADABLE = "unreadable"

# What restoring a damaged checkpoint raises: truncated data (IndexError "Read less bytes than requested"),
# checksum mismatches and corrupt indexes (OpError), missing files (NotFoundError, an OpError), a variable of
# another shape or one missing from the index (ValueError, AssertionError from the completeness check).
RESTORE_ERRORS = (tf.errors.OpError, ValueError, IndexError, AssertionError, OSError)


class UnreadableCheckpointError(Exception):
    """No checkpoint listed in the directory's state can be restored; the message is one line."""


def remove_partial_saves(directory):
    """Deletes the `*_temp` directories of saves that a kill interrupted; returns their names."""
    removed = []
    for path in sorted(tf.io.gfile.glob(os.path.join(glob.escape(directory), "*_temp"))):
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
            removed.append(os.path.basename(path))
    return removed


def listed_checkpoints(directory, state=None):
    """The checkpoint prefixes of the directory's state file (or of `state`, read from it), oldest first ([]
    when there is none)."""
    if state is None:
        state = tf.train.get_checkpoint_state(directory)
    if state is None:
        return []
    paths = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
        paths.append(state.model_checkpoint_path)
    return [path if os.path.isabs(path) or "://" in path else os.path.join(directory, path) for path in paths]


def _end_state_at(directory, path):
    """Rewrites the state file to list the checkpoints up to `path`, with their timestamps (which decide when
    tf.train.CheckpointManager prunes them), and `path` as the latest."""
    state = tf.train.get_checkpoint_state(directory)
    listed = listed_checkpoints(directory, state)
    kept = listed[:listed.index(path) + 1]
    stamps = dict(zip(listed, state.all_model_checkpoint_timestamps))
    tf.compat.v1.train.update_checkpoint_state(
        directory, path, all_model_checkpoint_paths=kept,
        all_model_checkpoint_timestamps=[stamps[p] for p in kept] if all(p in stamps for p in kept) else None,
        last_preserved_timestamp=state.last_preserved_timestamp)


def _listing(failures):
    return "; ".join(f"{path} ({reason})" for path, reason in failures)


def _reason(error):
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text.split("}} ", 1)[-1]  # drop TensorFlow's "{{function_node ...}}" prefix


def restore_newest_readable(checkpoint, directory, move_aside=False, log=print):
    """Restores into `checkpoint` (a tf.train.Checkpoint) the newest listed checkpoint of `directory` that is
    readable and holds every variable of its objects; returns its path, or None when none is listed.

    move_aside: move the unreadable checkpoints newer than the one used into `directory/unreadable/` and end
      the state file at the one used (training does this before it saves again).
    Raises UnreadableCheckpointError, naming every checkpoint and why it failed, when none can be restored.
    """
    candidates = listed_checkpoints(directory)
    failures = []
    for path in reversed(candidates):
        try:
            checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        except RESTORE_ERRORS as error:
            failures.append((path, _reason(error)))
            continue
        if failures:
            skipped = _listing(failures)
            if move_aside:
                _move_aside([bad for bad, _ in failures], directory)
                _end_state_at(directory, path)
                skipped += f", moved into {os.path.join(directory, UNREADABLE)}"
            log(f"warning: unreadable checkpoint {skipped}; using {path}", flush=True)
        return path
    if failures:
        raise UnreadableCheckpointError(f"no readable checkpoint in {directory}: {_listing(failures)}")
    return None


def _move_aside(prefixes, directory):
    """Moves every file of each checkpoint prefix into `directory/unreadable/`, never overwriting one there."""
    target = os.path.join(directory, UNREADABLE)
    tf.io.gfile.makedirs(target)
    for prefix in prefixes:
        for path in tf.io.gfile.glob(glob.escape(prefix) + ".*"):
            name = os.path.basename(path)
            destination, copy = os.path.join(target, name), 1
            while tf.io.gfile.exists(destination):
                copy += 1
                destination = os.path.join(target, f"{name}.{copy}")
            tf.io.gfile.rename(path, destination)


def untracked_variables(model):
    """Model variables that tf.train.Checkpoint cannot reach through the object graph.

    Keras 3 hides from TensorFlow what layers keep in Python lists (e.g. the seed-generator state of every
    `Dropout`), so these would silently not be saved; `model_objects` saves them by position instead.
    """
    reachable = {id(t) for t in tf.train.TrackableView(model).descendants()}
    return tuple(v for v in model.variables if id(v) not in reachable)


def model_objects(model):
    """What a checkpoint holds of a model: its object graph plus the variables the graph misses."""
    untracked = untracked_variables(model)
    return dict(model=model, model_untracked=untracked) if untracked else dict(model=model)


def make_checkpoint(model, optimizer, step, iterator):
    objects = dict(model_objects(model), optimizer=optimizer, step=step)
    if iterator is not None:
        objects["iterator"] = iterator
    return tf.train.Checkpoint(**objects)


def restore(checkpoint, directory, move_aside=False):
    """Restores the newest readable checkpoint of `directory` (see apps.checkpoints); returns its path, or
    None when there is none. `UserError` when none can be restored (damaged, or of a model of another shape)."""
    try:
        return restore_newest_readable(checkpoint, directory, move_aside=move_aside)
    except UnreadableCheckpointError as error:
        raise errors.UserError(f"{error}; if they hold another model, use another --model_dir or the gin config it was "
                               f"trained with.") from error


def write_atomically(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_trained_model(model_dir):
    """Rebuilds the model from `model_dir/operative_config.gin` and restores its latest checkpoint."""
    config = os.path.join(model_dir, "operative_config.gin")
    if not os.path.exists(config):
        raise errors.UserError(f"{config} does not exist; train a model in {model_dir} first.")
    experiment = gin_experiment.parse_config([config], [])
    model, _ = gin_experiment.build_model(experiment)
    checkpoint = tf.train.Checkpoint(**model_objects(model))
    if restore(checkpoint, os.path.join(model_dir, "checkpoints")) is None:
        raise errors.UserError(f"no checkpoint in {model_dir}/checkpoints.")
    return model, experiment
