"""The compiled steps of training and evaluation under a tf.distribute strategy: the model call that keeps
the layers' state updates and auxiliary losses, the token-weighted loss, gradient clipping and application."""

import keras
import tensorflow as tf

from apps import distribute
from common.metrics import token_cross_entropy


def call_model(model, ids, training):
    """`model(ids)` -> (logits, this call's auxiliary losses), safe on replicas.

    The call runs in a `keras.StatelessScope`, which collects its losses: Keras keeps `model.losses` in the
    layers, which replicas share, and a replica that reaches a synchronisation point inside the forward pass
    (the k-means all-reduce) lets the next replica clear and refill them. The state updates of the call
    (k-means EMA, dropout seeds), held back by the scope, are written to the variables right after it.
    """
    with keras.StatelessScope(collect_losses=True) as scope:
        logits = model(ids, training=training)
    updated = [v for v in model.non_trainable_variables if scope.get_current_value(v) is not None]
    if len(updated) != len(scope.state_mapping):
        raise ValueError(f"{model.name} assigned variables outside its non_trainable_variables; the trainer "
                         f"would lose those updates.")
    for variable in updated:
        variable.assign(scope.get_current_value(variable))
    return logits, scope.losses


def loss_and_metrics(model, batch, training, global_tokens=None):
    """Cross-entropy over the batch's weighted tokens, plus the layers' auxiliary losses in training.

    Under a strategy, `batch` is one replica's share and `global_tokens` the weighted tokens of the global
    batch: the cross-entropy is divided by those and the auxiliary losses by the number of replicas, so that
    the replicas' losses, metrics and gradients sum to those of one device on the global batch.
    """
    ids, weights = batch["token_ids"], batch["weights"]
    logits, losses = call_model(model, ids, training)
    nats, _ = token_cross_entropy(ids, logits)
    total = tf.reduce_sum(nats * weights)
    count = tf.reduce_sum(weights)
    cross_entropy = total / tf.maximum(count if global_tokens is None else global_tokens, 1.0)
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context else 1
    auxiliary = tf.add_n(losses) / replicas if losses else tf.constant(0.0)
    return cross_entropy + auxiliary, {"cross_entropy": cross_entropy, "total_nats": total, "tokens": count}


def step_function(strategy, replica_fn, jit_compile):
    """A tf.function running `replica_fn(global_batch)` on every replica of `strategy` and summing its outputs.

    XLA-compiled when `jit_compile` and there is one replica: TensorFlow cannot XLA-compile a step whose
    replicas synchronise (gradient and k-means all-reduces are merge calls, and one compiled function cannot
    use variables on several devices); TPUStrategy compiles its steps itself.
    """
    jit = jit_compile and strategy.num_replicas_in_sync == 1 and not isinstance(strategy, tf.distribute.TPUStrategy)

    @tf.function(jit_compile=jit)
    def step(batch):
        outputs = strategy.run(replica_fn, args=(batch,))
        return tf.nest.map_structure(lambda x: strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None), outputs)

    return step


def apply_gradients(optimizer, grads, variables, clip_norm):
    """Applies one replica's gradients; the optimizer sums them over replicas. Clipping by the global norm
    needs the summed gradient: it is all-reduced here and each replica hands the optimizer 1/N of it."""
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    if clip_norm:
        if replicas > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grads, _ = tf.clip_by_global_norm(grads, clip_norm)
        if replicas > 1:
            grads = [g / replicas for g in grads]
    optimizer.apply(grads, variables)


def make_train_step(model, optimizer, clip_norm, jit_compile, strategy=None):
    """One training step on a global batch under `strategy` (default: one device); returns the metrics of the
    global batch. Model and optimizer must have been created under `strategy.scope()`."""
    strategy = strategy or tf.distribute.get_strategy()

    def replica_step(batch):
        global_tokens = tf.reduce_sum(batch["weights"])
        with tf.GradientTape() as tape:
            loss, metrics = loss_and_metrics(model, distribute.replica_share(batch), training=True,
                                             global_tokens=global_tokens)
        # Embedding gradients come as IndexedSlices; Keras 3.15's Adafactor fails on them when a table is hit
        # by many indices (e.g. 12,288 image positions into 64 rows), so every gradient is made dense.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
        apply_gradients(optimizer, grads, model.trainable_variables, clip_norm)
        return dict(metrics, loss=loss)

    return step_function(strategy, replica_step, jit_compile)


def make_eval_step(model, experiment, strategy):
    """The (compiled, if `experiment.jit_compile`) step of an evaluation: (total nats, tokens) of a global
    batch, each replica scoring its share. It reads the model's variables when called, so one step serves every
    evaluation of a run (a new one per evaluation would be traced and compiled again each time)."""

    def replica_eval(batch):
        _, metrics = loss_and_metrics(model, distribute.replica_share(batch), training=False)
        return metrics["total_nats"], metrics["tokens"]

    return step_function(strategy, replica_eval, experiment.jit_compile)
