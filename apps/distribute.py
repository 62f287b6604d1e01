"""tf.distribute for the trainer: strategies by name, each replica's share of a global batch, sums over replicas.

Data: every worker reads the same global batches as one device would (same files, order and seed), and each
replica takes its contiguous share inside the step (`replica_share`). So a step on N replicas sees exactly the
batch of a single device, the tf.data iterator in checkpoints is the same object under every strategy, and a
checkpoint resumes under any strategy at the same data position. The price: every worker reads and tokenises
the whole global batch, which is small next to the model's work.

State: variables are created under `strategy.scope()`; the k-means statistics are summed over replicas
(`replica_sum`) before the EMA, so centroids are those of the whole global batch on every replica.
"""

import json
import os

import tensorflow as tf

from common import kmeans
from apps import errors
from apps.command_line import STRATEGIES  # the --strategy names, known before TensorFlow loads

TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\' on the first worker, "index": 1 on the second')


def make_strategy(name, tpu="local"):
    """The strategy called `name` (one of `STRATEGIES`).

    default: one device. mirrored: every local GPU, else every logical CPU device. multi_worker:
    `MultiWorkerMirroredStrategy` over the workers of `TF_CONFIG`. tpu: `TPUStrategy` on `tpu` ("local" on a
    Cloud TPU VM, else the TPU's name or grpc://address). Raises ValueError for an unknown name, a missing or
    malformed TF_CONFIG, or no reachable TPU.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, OSError, tf.errors.OpError) as error:
            message = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"--strategy=tpu found no TPU at --tpu={tpu!r} ({message[:200]}); run on a Cloud TPU "
                             f"VM with --tpu=local, or give the TPU's name or grpc://HOST:8470.") from error
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}.")


def check_tf_config(text):
    """Raises ValueError, saying how to set it, unless `text` is a TF_CONFIG naming a cluster and this task."""
    if not text:
        raise ValueError(f"--strategy=multi_worker needs the TF_CONFIG environment variable on every worker, "
                         f"e.g. {TF_CONFIG_EXAMPLE}.")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}); e.g. {TF_CONFIG_EXAMPLE}.") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"TF_CONFIG has no 'cluster' of workers; e.g. {TF_CONFIG_EXAMPLE}.")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG's 'task' must name this process's type among {sorted(cluster)} and its "
                         f"index; got {task!r}.")
    index, members = task.get("index", 0), cluster[task["type"]]
    if not isinstance(index, int) or not 0 <= index < len(members):
        raise ValueError(f"TF_CONFIG's task index {index!r} is not one of the {len(members)} "
                         f"{task['type']!r} addresses {members}.")


def replica_share(batch):
    """This replica's contiguous rows of a global batch (a nest of tensors [batch, ...]); the batch itself with
    one replica. The batch size must be a multiple of the number of replicas."""
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    if replicas == 1:
        return batch

    def share(x):
        rows = x.shape[0] // replicas
        return tf.gather(tf.reshape(x, (replicas, rows) + tuple(x.shape[1:])), context.replica_id_in_sync_group)

    return tf.nest.map_structure(share, batch)


def replica_sum(tensors):
    """`tensors` (a nest) summed over the replicas of the current tf.distribute replica context; unchanged with
    one replica or outside a replica context."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensors
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tensors)


def check_replicas(experiment, strategy):
    """Every replica takes an equal share of the global batch; says that jit_compile is ignored on several."""
    replicas = strategy.num_replicas_in_sync
    if experiment.batch_size % replicas:
        raise errors.UserError(f"Experiment.batch_size = {experiment.batch_size} is not a multiple of the {replicas} "
                               f"replicas of the strategy; every replica takes an equal share of the global batch.")
    if replicas > 1 and experiment.jit_compile:
        print(f"{replicas} replicas: Experiment.jit_compile is ignored (see apps.steps.step_function)", flush=True)


def summary_writer(strategy, directory):
    """A summary writer to `directory` on the chief, one that writes nothing on the other workers."""
    if strategy.extended.should_save_summary:
        return tf.summary.create_file_writer(directory)
    return tf.summary.create_noop_writer()


kmeans.set_replica_sum(replica_sum)  # the k-means statistics of a step are those of the global batch
