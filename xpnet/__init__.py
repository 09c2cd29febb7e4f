"""xpnet: the networks of *Deep Learning from Scratch*, fast on the CPU and on NVIDIA GPUs.

One module per idea of the book: ``functions`` (ch. 3-4), ``gradient`` (ch. 4),
``layers`` (ch. 5-7), ``optimizers`` and ``initializers`` (ch. 6), ``models`` (the
book's networks), ``trainer``, ``datasets``, ``io`` (parameter files), ``util``
(the book's helpers), ``plot`` and ``cli``. ``backend`` is where the GPU comes in;
``threads`` sets the CPU threads; ``distributed`` trains over several processes (MPI/NCCL).
"""

from xpnet.backend import (
    DeviceError,
    as_numpy,
    get_array_module,
    get_default_dtype,
    gpu_available,
    seed,
    set_default_dtype,
    to_device,
)

__version__ = "0.1.0"

__all__ = [
    "DeviceError",
    "as_numpy",
    "get_array_module",
    "get_default_dtype",
    "gpu_available",
    "seed",
    "set_default_dtype",
    "to_device",
    "__version__",
]
