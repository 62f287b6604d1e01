"""Kernels by name, so that attention layers can store their kernel in a serialisable config."""

_KERNELS = {}


def register_kernel(name, kernel):
    """Makes `kernel` available to attention layers as `kernel=name`. Families register theirs on import."""
    if name in _KERNELS and _KERNELS[name] is not kernel:
        raise ValueError(f"an attention kernel named {name!r} is already registered.")
    _KERNELS[name] = kernel


def get_kernel(name):
    """The kernel registered as `name`; `ValueError` listing the choices otherwise."""
    if name not in _KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; registered kernels: {sorted(_KERNELS)} "
                         f"(import the family package that defines it).")
    return _KERNELS[name]


def kernel_names():
    return sorted(_KERNELS)
