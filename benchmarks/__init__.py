import common  # noqa: F401  (TensorFlow's CPU kernels: before anything imports TensorFlow)
