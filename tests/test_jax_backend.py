"""The zoo under Keras' JAX backend (the accelerator path: the GPU machine has JAX and no TensorFlow).

One worker process (`tests.jax_backend_worker`, KERAS_BACKEND=jax) runs every kernel case of
`tests.backend_cases` and every family model with the weights this TensorFlow process wrote; the outputs must
equal TensorFlow's to 1e-5 (float32), and each family must train there with a jit-compiled `fit`. The worker
blocks `import tensorflow`, as on the GPU machine: the library must run without it.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from tests import backend_cases
from tests.apps.train_helpers import REPO

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(TensorFlow results, JAX results) of the same cases and weights."""
    directory = str(tmp_path_factory.mktemp("jax_backend"))
    ids = backend_cases.training_ids()
    tensorflow = {f"kernel/{name}": out for name, out in backend_cases.kernel_outputs().items()}
    tensorflow.update({f"decoded/{name}": out for name, out in backend_cases.decoded_outputs().items()})
    keras.utils.set_random_seed(0)  # unseeded initialisers draw from the global state: the same weights every run
    for family, model in backend_cases.family_models().items():
        model.build((None, None))
        model.save_weights(os.path.join(directory, f"{family}.weights.h5"))
        tensorflow[f"logits/{family}"] = np.asarray(ops.convert_to_numpy(model(ids[:, :-1])), np.float32)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    worker = subprocess.run([sys.executable, "-m", "tests.jax_backend_worker", directory], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert worker.returncode == 0, worker.stderr[-4000:]
    with np.load(os.path.join(directory, "jax.npz")) as jax_results:
        return tensorflow, dict(jax_results)


@pytest.mark.parametrize("case", sorted(backend_cases.KERNEL_CASES))
def test_every_kernel_gives_tensorflow_s_output_under_jax(runs, case):
    tensorflow, jax_results = runs
    want = tensorflow[f"kernel/{case}"]
    assert np.abs(want).max() > 0.1  # a real output, not zeros on both sides
    np.testing.assert_allclose(jax_results[f"kernel/{case}"], want, **TOL)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
@pytest.mark.parametrize("case", backend_cases.DECODED_CASES)
def test_decoding_one_position_at_a_time_gives_the_full_pass_rows_on_both_backends(runs, case, backend):
    """The cache is a TensorArray under TensorFlow and a tensor updated in place under JAX."""
    tensorflow, jax_results = runs
    decoded = (tensorflow if backend == "tensorflow" else jax_results)[f"decoded/{case}"]
    np.testing.assert_allclose(decoded, tensorflow[f"kernel/{case}"][:, :, backend_cases.PROMPT:], **TOL)


@pytest.mark.parametrize("case", backend_cases.DECODED_ACROSS_BACKENDS)
def test_balanced_routing_decodes_alike_on_both_backends(runs, case):
    """Each decoded row is that of a full pass over its prefix (tests/routing_transformer/test_decoding.py)."""
    tensorflow, jax_results = runs
    assert np.abs(tensorflow[f"decoded/{case}"]).max() > 0.1
    np.testing.assert_allclose(jax_results[f"decoded/{case}"], tensorflow[f"decoded/{case}"], **TOL)


@pytest.mark.parametrize("case", ("routing_causal",) + backend_cases.DECODED_ACROSS_BACKENDS)
def test_a_routing_step_compiles_with_jax_jit(runs, case):
    """Every shape of a routing step is fixed by its cache, so jax.jit traces it with the position unknown (a
    shape that depended on it would fail to trace), and the compiled steps decode as the eager ones."""
    jax_results = runs[1]
    np.testing.assert_allclose(jax_results[f"decoded_jit/{case}"], jax_results[f"decoded/{case}"], **TOL)


@pytest.mark.parametrize("family", ["routing", "routing_kept", "sparse", "combiner"])
def test_every_family_gives_tensorflow_s_logits_under_jax(runs, family):
    tensorflow, jax_results = runs
    np.testing.assert_allclose(jax_results[f"logits/{family}"], tensorflow[f"logits/{family}"], **TOL)


@pytest.mark.parametrize("family", ["routing", "routing_kept", "sparse", "combiner"])
def test_every_family_trains_under_jax_with_a_jit_fit(runs, family):
    """12 epochs on a repeated phrase: the loss falls well below its start (log 48 = 3.87 nats at chance)."""
    losses = runs[1][f"losses/{family}"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.7 * losses[0], losses


def test_routing_centroids_move_by_k_means_under_jax(runs):
    """The EMA update (a variable assigned in the forward pass) works in JAX's stateless training step."""
    change = runs[1]["centroid_change/routing"]
    assert len(change) == 1 and change.min() > 1e-3, change
