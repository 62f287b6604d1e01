"""What the distribution tests run in a fresh process: TensorFlow must be given two logical CPU devices before
it starts, which pytest's own process (already running TensorFlow) cannot do.

    python -m tests.apps.distribute_runs mirrored '<json spec>'

prints `RESULT <json>` as its last line (see `mirrored`).
"""

import json
import sys

RESULT_TAG = "RESULT "


def two_cpu_devices():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def replica_gaps(variables):
    """{variable path: largest |difference| between its copies on the replicas}."""
    import numpy as np

    gaps = {}
    for variable in variables:
        copies = [np.asarray(copy) for copy in variable.value.values]
        gaps[variable.path] = max(float(np.max(np.abs(copy - copies[0]), initial=0.0)) for copy in copies)
    return gaps


def kmeans_update(strategy):
    """One OnlineKMeans training call on 2 replicas (each on half the batch), and one under recomputation (its
    forward pass and the recompute of a gradient), against one layer updated with the whole batch:
    {"gap_to_single", "recomputed_gap_to_single": largest |difference| of any state, "replica_gaps": {...}}."""
    import numpy as np
    import tensorflow as tf

    from common import recompute
    from apps import distribute
    from common.kmeans import OnlineKMeans
    from common.layers.normalization import layer_norm

    x = layer_norm(tf.random.stateless_normal((4, 2, 6, 8), seed=(3, 4)))
    single = OnlineKMeans(2, 3, decay=0.5, seed=5)
    single.build(x.shape)
    with strategy.scope():
        mirrored, recomputed = OnlineKMeans(2, 3, decay=0.5, seed=5), OnlineKMeans(2, 3, decay=0.5, seed=5)
        mirrored.build(x.shape)
        recomputed.build(x.shape)
    for source, *targets in zip(single.weights, mirrored.weights, recomputed.weights):
        for target in targets:
            target.assign(source)
    single(x, training=True)
    tf.function(lambda batch: strategy.run(lambda share: mirrored(distribute.replica_share(share), training=True),
                                           args=(batch,)))(x)

    def recomputed_step(batch):
        """A gradient through `recompute.remat`, which calls the layer again in the recompute."""
        share = distribute.replica_share(batch)
        with tf.GradientTape() as tape:
            tape.watch(share)
            branch = recompute.remat(lambda y: tf.cast(recomputed(y, training=True), y.dtype)[..., None] * y)
            out = branch(share)
        return tape.gradient(out, share)

    tf.function(lambda batch: strategy.run(recomputed_step, args=(batch,)))(x)

    def gap_to_single(layer):
        return max(float(np.max(np.abs(np.asarray(copy) - np.asarray(want))))
                   for want, got in zip(single.weights, layer.weights) for copy in got.value.values)

    moved = float(np.max(np.abs(np.asarray(single.ema_count))))
    return {"gap_to_single": gap_to_single(mirrored), "recomputed_gap_to_single": gap_to_single(recomputed),
            "ema_count_max": moved, "replica_gaps": replica_gaps(mirrored.weights + recomputed.weights)}


def mirrored(spec):
    """spec: {"params": gin bindings, "single_dir", "mirrored_dir", "odd_dir"}.

    Trains `params` for 3 steps on one device (single_dir); for 2 steps with MirroredStrategy on the two CPU
    devices, then resumes that checkpoint on one device for the third step (mirrored_dir); evaluates
    single_dir's checkpoint with and without the strategy; tries a batch that does not split in two; and runs
    `kmeans_update`.
    """
    two_cpu_devices()
    from apps import distribute, errors, gin_experiment, train

    strategy = distribute.make_strategy("mirrored")
    params = spec["params"]
    train.run([], params + ["Experiment.train_steps = 3"], spec["single_dir"], "train")
    model = train.train(gin_experiment.parse_config([], params + ["Experiment.train_steps = 2"]), spec["mirrored_dir"],
                        strategy)
    result = {"replicas": strategy.num_replicas_in_sync, "replica_gaps": replica_gaps(model.variables)}
    train.run([], params + ["Experiment.train_steps = 3"], spec["mirrored_dir"], "train")
    for name in ("default", "mirrored"):
        result[f"eval_{name}"] = train.run([], params + ["Experiment.eval_batches = 2"], spec["single_dir"],
                                           "eval", strategy=name)
    try:
        train.run([], params + ["Experiment.batch_size = 3"], spec["odd_dir"], "train", strategy="mirrored")
    except errors.UserError as error:
        result["odd_batch_error"] = str(error)
    result["kmeans"] = kmeans_update(strategy)
    return result


if __name__ == "__main__":
    what, spec = sys.argv[1], json.loads(sys.argv[2])
    print(RESULT_TAG + json.dumps({"mirrored": mirrored}[what](spec)), flush=True)
