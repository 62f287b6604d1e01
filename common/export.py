"""SavedModel export of a zoo language model with explicit, named serving signatures.

Only `training=False` is traced, so serving never moves state such as routing centroids.
"""

import keras
import tensorflow as tf

TOKEN_IDS = tf.TensorSpec([None, None], tf.int32, name="token_ids")


def export_saved_model(model, export_dir):
    """Writes `model` to `export_dir` as a TF SavedModel.

    Signature `serving_default`: `token_ids` int32 [batch, length] (any batch size and length) -> `logits`
    float32 [batch, length, vocabulary], where logits[:, t] predict token t from tokens < t.
    """
    if not model.built:
        model(tf.zeros([1, 1], tf.int32))

    def serve(token_ids):
        return {"logits": model(token_ids, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=[TOKEN_IDS])
    archive.write_out(export_dir, verbose=False)
