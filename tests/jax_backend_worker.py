"""The JAX half of tests/test_jax_backend.py: `KERAS_BACKEND=jax python -m tests.jax_backend_worker DIR`.

Reads DIR/<family>.weights.h5 (written by the TensorFlow test process), writes DIR/jax.npz: every kernel
case's output, the decoded cases' outputs, every family's logits with those weights, and the losses of a few
jit-compiled `fit` epochs from them (plus how far the routing model's k-means centroids moved). TensorFlow
cannot be imported here, as on the GPU machine (JAX, no TensorFlow): the library must not need it.
"""

import os
import sys

from common.no_tensorflow import block_tensorflow

block_tensorflow("the JAX worker")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from common.metrics import LanguageModelLoss  # noqa: E402
from tests import backend_cases  # noqa: E402


def main(directory):
    assert keras.backend.backend() == "jax", keras.backend.backend()
    results = {f"kernel/{name}": out for name, out in backend_cases.kernel_outputs().items()}
    results.update({f"decoded/{name}": out for name, out in backend_cases.decoded_outputs().items()})
    routing_cases = ("routing_causal",) + backend_cases.DECODED_ACROSS_BACKENDS
    results.update({f"decoded_jit/{name}": out for name, out in
                    backend_cases.decoded_outputs(routing_cases, compile_step=jax.jit).items()})
    ids = backend_cases.training_ids()
    for family, model in backend_cases.family_models().items():
        model.build((None, None))
        model.load_weights(os.path.join(directory, f"{family}.weights.h5"))
        results[f"logits/{family}"] = np.asarray(ops.convert_to_numpy(model(ids[:, :-1])), np.float32)
        centroids = [np.asarray(layer.kmeans.centroids) for layer in getattr(model, "routing_layers", list)()]
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=LanguageModelLoss(), jit_compile=True)
        history = model.fit(ids[:, :-1], ids[:, 1:], batch_size=4, epochs=12, verbose=0)
        results[f"losses/{family}"] = np.array(history.history["loss"], np.float32)
        if centroids:
            moved = [np.abs(np.asarray(layer.kmeans.centroids) - before).max()
                     for layer, before in zip(model.routing_layers(), centroids)]
            results[f"centroid_change/{family}"] = np.array(moved, np.float32)
    np.savez(os.path.join(directory, "jax.npz"), **results)


if __name__ == "__main__":
    main(sys.argv[1])
