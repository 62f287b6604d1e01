"""Import of a tensor2tensor Routing Transformer checkpoint (the released text model `SparseTransformer` of
google-research `routing_transformer/`) into the zoo.

    python -m apps.convert_t2t --t2t_checkpoint=PATH --gin_file=routing_transformer/pg19_8k.gin --model_dir=OUT

PATH is a checkpoint prefix (`.../model.ckpt-NNN`) or a directory with a `checkpoint` file. The gin file's
`RoutingTransformerLM` must have the checkpoint's sizes (layers, width, embedding size, heads of each kind,
clusters, relative distance, vocabulary); the converter binds `project_embeddings = True` (the original always
has `emb_dense`) and `count_epsilon = 0.01` (its average over a token's clusters). Every variable is copied and
OUT gets what `apps.train` writes: `checkpoints/` and `operative_config.gin` (so `apps.sample`, `apps.export` and
`apps.train --mode=eval` use it), plus `model.keras`. The original shifts ids right with id 0; the zoo's start
vector is set to id 0's embedding, so the zoo's logits on ids x are the original's on targets x.

Names, as the original's code creates them (`sparse_transformer/body/` first):
  embeddings/embedding; emb_dense/{kernel,bias}; final_dense_1/{kernel,bias} (embedding size != width);
  final_dense_2/{kernel,bias}; and per layer, under decoder_layer_<i>/self_attention/ (the layer's feed-forward
  and norms are created inside that scope too):
    self_attention/{q,k,v,output_transform}/kernel, self_attention/attention_nd/dense/kernel (the per-head
    matrix), self_attention/attention_nd/local_nd/relative_positions_{keys,values}/embeddings,
    self_attention/attention_nd/<kind>/<kind>/{means,ema_count,ema_means,projection_tensors,
    relative_positions_{keys,values}/embeddings} with <kind> cluster_attention (routing heads) or
    cluster_strided_attention, layer_postprocess/layer_norm/layer_norm_{scale,bias} (after attention),
    ffn/weight{1,2,3}/kernel (GEGLU) or ffn/conv{1,2}/{kernel,bias}, layer_postprocess_1/layer_norm/... (after
    the feed-forward).
Optimizer slots and counters (Adafactor's, `global_step`) are skipped. A variable the model has no place for, one
it needs that the checkpoint lacks, or a shape that differs: one line naming them.
"""

import os
import re
import sys

if __name__ == "__main__":  # the command line, checked before TensorFlow loads (apps.command_line)
    from apps import command_line
    command_line.start("convert_t2t")

import gin  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from apps import checkpoints, command_line, errors, gin_experiment  # noqa: E402

FLAGS = flags.FLAGS

PREFIX = "sparse_transformer/body/"
TRAINING_STATE = re.compile(r"(^|/)(global_step|Adafactor\w*|adafactor\w*|Adam\w*)(/|$)")
CONVERTER_BINDINGS = ["RoutingTransformerLM.project_embeddings = True", "RoutingTransformerLM.count_epsilon = 0.01"]
ROUTED_SCOPES = {"routing": "cluster_attention", "cluster_strided": "cluster_strided_attention"}


def _heads(x, heads):
    """[in, heads x dim] -> [in, heads, dim], the original's split_heads order."""
    return x.reshape(x.shape[0], heads, -1)


def attention_sources(scope, attention):
    """[(checkpoint name, zoo variable, transform or None)] of one `RoutingAttention` under `scope`."""
    attend = scope + "self_attention/"
    heads = attention.num_heads
    keyless = heads - attention.key_heads  # with share_qk the routing heads (the first ones) have no key weights
    sources = [(attend + "q/kernel", attention.query[0], lambda x: _heads(x, heads)),
               (attend + "v/kernel", attention.value[0], lambda x: _heads(x, heads)),
               (attend + "output_transform/kernel", attention.output_projection[0],
                lambda x: x.reshape(heads, -1, x.shape[-1]))]
    if attention.key is not None:
        sources.append((attend + "k/kernel", attention.key[0], lambda x: _heads(x, heads)[:, keyless:]))
    if attention.head_kernel is not None:
        sources.append((attend + "attention_nd/dense/kernel", attention.head_kernel, None))
    if attention.relative_keys is not None:
        local = attend + "attention_nd/local_nd/relative_positions_"
        sources += [(local + "keys/embeddings", attention.relative_keys, None),
                    (local + "values/embeddings", attention.relative_values, None)]
    present = dict(attention.head_groups)
    for kind, kmeans in (("routing", attention.kmeans), ("cluster_strided", attention.cluster_strided_kmeans)):
        if not present.get(kind):
            continue
        routed = attend + "attention_nd/{0}/{0}/".format(ROUTED_SCOPES[kind])
        if kmeans is None:
            sources.append((routed + "projection_tensors", attention.hash_projection, None))
        else:
            sources.append((routed + "means", kmeans.centroids, None))
            if kmeans.ema:
                sources += [(routed + "ema_count", kmeans.ema_count, None),
                            (routed + "ema_means", kmeans.ema_sum, None)]
        if getattr(attention, f"{kind}_relative_keys") is not None:
            sources += [(routed + "relative_positions_keys/embeddings", getattr(attention, f"{kind}_relative_keys"),
                         None),
                        (routed + "relative_positions_values/embeddings",
                         getattr(attention, f"{kind}_relative_values"), None)]
    return sources


def feed_forward_sources(scope, feed_forward):
    """GEGLU: weight1 (under the GELU) -> inner, weight2 -> gate, weight3 -> outer; otherwise the original's
    `dense_relu_dense`, conv1 / conv2 with biases."""
    ffn = scope + "ffn/"
    if feed_forward.gate is not None:
        return [(ffn + "weight1/kernel", feed_forward.inner.kernel, None),
                (ffn + "weight2/kernel", feed_forward.gate.kernel, None),
                (ffn + "weight3/kernel", feed_forward.outer.kernel, None)]
    return [(ffn + f"{name}/{part}", getattr(layer, part), None)
            for name, layer in (("conv1", feed_forward.inner), ("conv2", feed_forward.outer))
            for part in ("kernel", "bias")]


def norm_sources(scope, block):
    """The post-LN norms: after attention (`layer_postprocess`) and after the feed-forward (`layer_postprocess_1`,
    the second scope of that default name in the layer)."""
    return [(f"{scope}{postprocess}/layer_norm/layer_norm_{part}", getattr(norm, variable), None)
            for norm, postprocess in ((block.attention_norm, "layer_postprocess"),
                                      (block.feed_forward_norm, "layer_postprocess_1"))
            for part, variable in (("scale", "gamma"), ("bias", "beta"))]


def sources(model):
    """[(checkpoint name without PREFIX, zoo variable, transform or None)] of every variable of `model`."""
    if model.embedding_projection is None:
        raise errors.UserError("the model has no embedding projection; the original always has `emb_dense` "
                               "(the converter binds RoutingTransformerLM.project_embeddings = True)")
    found = [("embeddings/embedding", model.token_embedding.embeddings, None),
             ("embeddings/embedding", model.start, lambda x: x[0]),  # the original's shift inserts id 0
             ("emb_dense/kernel", model.embedding_projection.kernel, None),
             ("emb_dense/bias", model.embedding_projection.bias, None),
             ("final_dense_2/kernel", model.logits_layer.kernel, None),
             ("final_dense_2/bias", model.logits_layer.bias, None)]
    if model.output_projection is not None:
        found += [("final_dense_1/kernel", model.output_projection.kernel, None),
                  ("final_dense_1/bias", model.output_projection.bias, None)]
    for i, block in enumerate(model.blocks):
        scope = f"decoder_layer_{i}/self_attention/"
        found += attention_sources(scope, block.attention) + feed_forward_sources(scope, block.feed_forward)
        found += norm_sources(scope, block)
    return found


def _listing(names, most=6):
    names = sorted(names)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def read_checkpoint(path):
    """{name without PREFIX: array} of the model's variables in the T2T checkpoint at `path` (a prefix or a
    directory), optimizer state skipped; `UserError` for an unreadable path or names outside the model."""
    try:
        reader = tf.train.load_checkpoint(path)
    except (ValueError, tf.errors.OpError) as error:
        raise errors.UserError(f"cannot read a checkpoint at {path!r}: {errors.first_line(error)}") from error
    names = [name for name in reader.get_variable_to_shape_map() if not TRAINING_STATE.search(name)]
    outside = [name for name in names if not name.startswith(PREFIX)]
    if outside:
        raise errors.UserError(f"{path}: variables outside {PREFIX!r}, not of the original's text model: "
                               f"{_listing(outside)}")
    return {name[len(PREFIX):]: reader.get_tensor(name) for name in names}


def assign(model, weights):
    """Copies `weights` ({name: array}) into `model`; `UserError` naming unknown, missing or misshapen ones."""
    wanted = sources(model)
    names = {name for name, _, _ in wanted}
    missing = names - set(weights)
    if missing:
        raise errors.UserError(f"the checkpoint lacks variables the model needs: {_listing(PREFIX + n for n in missing)}"
                               f"; does the gin file's model have the checkpoint's heads and options?")
    unknown = set(weights) - names
    if unknown:
        raise errors.UserError(f"the model has no place for checkpoint variables: {_listing(PREFIX + n for n in unknown)}"
                               f"; does the gin file's model have the checkpoint's layers, heads and options?")
    targets = {id(variable) for _, variable, _ in wanted}
    extra = [v.path for v in model.variables if id(v) not in targets and not v.path.startswith("seed_generator")]
    if extra:
        raise errors.UserError(f"the gin file's model has variables the original's does not: {_listing(extra)}; "
                               f"remove what the original lacks (e.g. absolute positions)")
    values = []
    for name, variable, transform in wanted:
        value = np.asarray(weights[name])
        value = transform(value) if transform is not None else value
        if tuple(value.shape) != tuple(variable.shape):
            raise errors.UserError(f"{PREFIX}{name} has shape {tuple(weights[name].shape)}, which gives "
                                   f"{tuple(value.shape)} where the gin file's model has {variable.path} "
                                   f"{tuple(variable.shape)}; set the model's sizes to the checkpoint's")
        values.append((variable, value))
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))
    return len(wanted)


def convert(t2t_checkpoint, gin_files, gin_params, model_dir):
    """`python -m apps.convert_t2t`: returns the number of variables written."""
    weights = read_checkpoint(t2t_checkpoint)
    experiment = gin_experiment.parse_config(gin_files, list(gin_params) + CONVERTER_BINDINGS)
    model, _ = gin_experiment.build_model(experiment)
    if not hasattr(model, "routing_layers"):
        raise errors.UserError(f"the gin file's model is {type(model).__name__}; the original's checkpoints are "
                               f"Routing Transformers (bind Experiment.model = @routing_transformer."
                               f"RoutingTransformerLM)")
    written = assign(model, weights)
    os.makedirs(model_dir, exist_ok=True)
    checkpoint = tf.train.Checkpoint(**checkpoints.model_objects(model))
    tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, "checkpoints"), max_to_keep=1).save(
        checkpoint_number=0)
    checkpoints.write_atomically(os.path.join(model_dir, "operative_config.gin"), gin.operative_config_str())
    model.save(os.path.join(model_dir, "model.keras"))
    return written


def main(argv):
    del argv
    try:
        written = convert(FLAGS.t2t_checkpoint, FLAGS.gin_file, FLAGS.gin_param, FLAGS.model_dir)
    except errors.UserError as error:
        sys.exit(f"error: {error}")
    print(f"converted {written} variables of {FLAGS.t2t_checkpoint} into {FLAGS.model_dir}/checkpoints, "
          f"{FLAGS.model_dir}/operative_config.gin and {FLAGS.model_dir}/model.keras")


if __name__ == "__main__":
    app.run(main, flags_parser=command_line.parsed_argv)
