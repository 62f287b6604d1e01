"""Installs the efficient-attention model zoo: the library `common`, the three family packages and the
applications `apps`."""

import setuptools

INSTALL_REQUIRES = [
    "tensorflow==2.21.*",
    "keras==3.15.*",
    "tensorflow-text==2.21.*",
    "tensorflow-datasets==4.9.*",
    "tensorboard==2.21.*",
    "absl-py>=2.1,<3",
    "gin-config==0.5.0",
    # TFDS needs it to prepare builders defined inside a package (tensorflow/datasets#11212).
    "importlib_resources>=6",
    "numpy>=1.26,<3",
    # Trains the subword vocabularies of PG-19, Wiki-40B and wikitext-103 (tensorflow-text runs them).
    "sentencepiece==0.2.*",
    # Draws every training run's learning curves (curves.png) and the benchmark plots.
    "matplotlib>=3.8,<4",
]

EXTRAS_REQUIRE = {
    # jax (CPU): the tests that run every kernel and family under Keras' JAX backend (tests/test_jax_backend.py).
    "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "jax[cpu]==0.10.*"],
    "bench": ["psutil>=5.9"],
}

setuptools.setup(
    name="efficient-attention-zoo",
    version="0.1.0",
    description="Routing Transformer, Sparse Transformer and Combiner for TensorFlow 2 / Keras 3.",
    python_requires=">=3.10,<3.14",
    packages=setuptools.find_packages(include=["common", "common.*", "routing_transformer",
                                               "routing_transformer.*", "sparse_transformer",
                                               "sparse_transformer.*", "combiner", "combiner.*", "apps",
                                               "apps.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
