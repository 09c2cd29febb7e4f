"""Optimizers (book ch. 6.1): SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam.

Each has the book's constructor defaults and ``update(params, grads)``, which
changes the parameter arrays *in place* (``params[key] -= ...``): layers that hold
a reference to ``params['W1']`` see the new values, as in the book. The formulas
and the epsilon (``1e-7``) are the book's.

Beyond the book:

- the arrays may live on the CPU (NumPy) or the GPU (CuPy): every operation uses
  the parameter's own array namespace, and the optimizer's state (velocities,
  squared-gradient sums) is created with ``xp.zeros_like`` on the parameter's device
  and in its dtype, so a float32 network stays float32;
- ``state_dict()`` / ``load_state_dict(d)`` save and restore hyperparameters and state
  as host NumPy arrays (for checkpoints);
- ``get_optimizer('adam', lr=0.01)`` builds one by case-insensitive name;
- on the GPU (CuPy float32/float64 parameters, C-contiguous), ``update`` is one fused
  kernel launch for all parameters (``kernels.cuda_fused``: the same formulas in the same
  order, so results agree with the CPU's to rounding). Adam's step count then also lives in
  a device buffer, advanced by the update itself, so a captured CUDA graph replays it right
  (``Adam.sync_device_iter``).
"""

from __future__ import annotations

import math
import weakref

import numpy as np

from xpnet.backend import as_numpy, get_array_module, is_gpu_array
from xpnet.kernels import cpu as cpu_kernels

__all__ = [
    "SGD",
    "Momentum",
    "Nesterov",
    "AdaGrad",
    "RMSprop",
    "Adam",
    "OPTIMIZERS",
    "get_optimizer",
]

#: The book's epsilon, added to square roots so a zero accumulator never divides by zero.
EPS = 1e-7


class Optimizer:
    """Base class: hyperparameters, per-parameter state slots, and (de)serialisation.

    Subclasses list their hyperparameters in ``hyperparams`` and the names of their
    per-parameter state arrays in ``slots`` (e.g. ``('v',)`` for Momentum); the state
    lives in ``self.<slot>`` as a dict ``{param key: array}``, created lazily on the first
    update exactly like the book's ``if self.v is None`` (but per key, so a dict of
    parameters may grow).
    """

    hyperparams: tuple[str, ...] = ("lr",)
    slots: tuple[str, ...] = ()
    #: The kernel of ``kernels.cuda_fused.OPTIMIZER_RULES`` that does ``update`` on the GPU.
    fused_rule: str | None = None

    def __init__(self):
        for slot in self.slots:
            setattr(self, slot, None)
        self._pending: dict | None = None  # loaded host state, placed on the device lazily

    # -- the book's interface -------------------------------------------------------------

    def update(self, params: dict, grads: dict) -> None:
        """Update every ``params[key]`` in place from ``grads[key]`` (same shapes)."""
        raise NotImplementedError

    # -- the GPU's fused update ---------------------------------------------------------------

    def fused_scalars(self, dtype) -> tuple:
        """The fused kernel's scalars (after its arrays), rounded to ``dtype`` once, as
        NumPy rounds a Python float in the CPU's array expressions."""
        raise NotImplementedError

    def _fused_arrays(self, params: dict, grads: dict):
        """``(params, grads)`` as lists in key order when the fused GPU kernel applies:
        CuPy arrays of one float32/float64 dtype, parameters C-contiguous (updated in
        place through flat views), gradients of their shapes. Else None: the formulas."""
        if self.fused_rule is None or not params:
            return None
        ps = list(params.values())
        if not is_gpu_array(ps[0]):  # the CPU's path, decided at once
            return None
        from xpnet.kernels.cuda_fused import FUSED_DTYPES

        gs = [grads[key] for key in params]
        dtype = ps[0].dtype
        if dtype not in FUSED_DTYPES or not all(
            is_gpu_array(p) and is_gpu_array(g) and p.dtype == dtype and g.dtype == dtype
            and g.shape == p.shape and p.flags.c_contiguous for p, g in zip(ps, gs)
        ):
            return None
        return ps, gs

    def _update_fused(self, params: dict, grads: dict) -> bool:
        """Update every parameter in one kernel launch if the fused GPU path applies;
        say whether it did."""
        arrays = self._fused_arrays(params, grads)
        if arrays is None:
            return False
        from xpnet.kernels import cuda_fused

        ps, gs = arrays
        states = [[d[key] for key in params] for d in self._state(params)]
        cuda_fused.optimizer_update(self.fused_rule, ps, gs, states,
                                    self.fused_scalars(ps[0].dtype), _flat_views(self))
        return True

    # -- state ------------------------------------------------------------------------------

    def _state(self, params: dict) -> tuple[dict, ...]:
        """The slot dicts, each holding an array for every key of ``params``.

        Missing arrays are zeros on the parameter's device and in its dtype; state
        loaded by ``load_state_dict`` is moved there (and checked) on first use.
        """
        if self._pending is not None:
            self._place(params)
        dicts = []
        for slot in self.slots:
            d = getattr(self, slot)
            if d is None:
                d = {}
                setattr(self, slot, d)
            for key, p in params.items():
                if key not in d:
                    d[key] = get_array_module(p).zeros_like(p)
            dicts.append(d)
        return tuple(dicts)

    def state_dict(self) -> dict:
        """Hyperparameters and state as plain data: ``{'name', 'hyperparams', 'step',
        'state': {slot: {key: numpy.ndarray}}}`` (arrays copied to the host)."""
        if self._pending is not None:  # loaded but never used: hand it back unchanged
            state = {s: dict(d) for s, d in self._pending.items()}
        else:
            state = {
                slot: {k: as_numpy(v).copy() for k, v in (getattr(self, slot) or {}).items()}
                for slot in self.slots
            }
        return {
            "name": type(self).__name__,
            "hyperparams": {h: float(getattr(self, h)) for h in self.hyperparams},
            "step": int(getattr(self, "iter", 0)),
            "state": state,
        }

    def load_state_dict(self, state: dict, params: dict | None = None) -> None:
        """Restore what :meth:`state_dict` returned.

        With ``params`` the state arrays are checked against the parameters (same
        keys, same shapes) and placed on their device now; without, that happens at the
        next :meth:`update`. Raises ValueError naming the mismatch.
        """
        name = state.get("name")
        if name is not None and str(name).lower() != type(self).__name__.lower():
            raise ValueError(
                f"optimizer state is for {name}, but this optimizer is {type(self).__name__}"
            )
        saved = state.get("state", {})
        if set(saved) != set(self.slots):
            raise ValueError(
                f"{type(self).__name__} state must have slots {sorted(self.slots)}, "
                f"got {sorted(saved)}"
            )
        keys = [set(saved[s]) for s in self.slots]
        if any(k != keys[0] for k in keys):
            raise ValueError(f"{type(self).__name__} state slots hold different parameter keys")
        for h, value in state.get("hyperparams", {}).items():
            if h not in self.hyperparams:
                raise ValueError(
                    f"{type(self).__name__} has no hyperparameter {h!r} "
                    f"(it has {', '.join(self.hyperparams)})"
                )
            setattr(self, h, float(value))
        if hasattr(self, "iter"):
            self.iter = int(state.get("step", 0))
        self._pending = {s: {k: np.asarray(v) for k, v in saved[s].items()} for s in self.slots}
        for slot in self.slots:
            setattr(self, slot, None)
        if params is not None:
            self._place(params)

    def _place(self, params: dict) -> None:
        pending, self._pending = self._pending, None
        for slot, arrays in pending.items():
            if not arrays:  # saved before the first update: nothing to place
                continue
            if set(arrays) != set(params):
                raise ValueError(
                    f"{type(self).__name__} state is for parameters {sorted(arrays)}, "
                    f"but the network has {sorted(params)}"
                )
            placed = {}
            for key, p in params.items():
                a = arrays[key]
                if a.shape != p.shape:
                    raise ValueError(
                        f"{type(self).__name__} state {slot}[{key!r}] has shape {a.shape}, "
                        f"but parameter {key!r} has shape {p.shape}"
                    )
                xp = get_array_module(p)
                placed[key] = xp.asarray(a, dtype=p.dtype)
            setattr(self, slot, placed)

    def __setattr__(self, name, value):
        # Hyperparameters are kept as Python floats: a NumPy float64 learning rate (such as
        # 10 ** np.random.uniform(-6, -2)) would otherwise promote float32 updates to float64.
        if name in self.hyperparams:
            value = float(value)
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        args = ", ".join(f"{h}={getattr(self, h)!r}" for h in self.hyperparams)
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent: ``W <- W - lr * dL/dW``."""

    fused_rule = "sgd"

    def __init__(self, lr=0.01):
        super().__init__()
        self.lr = lr

    def fused_scalars(self, dtype):
        return (np.dtype(dtype).type(self.lr),)

    def update(self, params, grads):
        if self._update_fused(params, grads):
            return
        for key in params.keys():
            params[key] -= self.lr * grads[key]


class Momentum(Optimizer):
    """Momentum SGD: ``v <- momentum * v - lr * g``; ``W <- W + v``."""

    hyperparams = ("lr", "momentum")
    slots = ("v",)

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__()
        self.lr = lr
        self.momentum = momentum

    fused_rule = "momentum"

    def fused_scalars(self, dtype):
        return tuple(np.dtype(dtype).type(s) for s in (self.momentum, self.lr))

    def update(self, params, grads):
        if self._update_fused(params, grads):
            return
        (v,) = self._state(params)
        for key in params.keys():
            v[key] *= self.momentum
            v[key] -= self.lr * grads[key]
            params[key] += v[key]


class Nesterov(Momentum):
    """Nesterov's accelerated gradient in the book's form (Bengio et al., 2012, eq. 7):

    ``W <- W + momentum**2 * v - (1 + momentum) * lr * g`` with the velocity of the
    previous step, and only then ``v <- momentum * v - lr * g``.
    """

    fused_rule = "nesterov"

    def fused_scalars(self, dtype):
        m, lr = self.momentum, self.lr
        return tuple(np.dtype(dtype).type(s) for s in (m * m, (1 + m) * lr, m, lr))

    def update(self, params, grads):
        if self._update_fused(params, grads):
            return
        (v,) = self._state(params)
        for key in params.keys():
            params[key] += self.momentum * self.momentum * v[key]
            params[key] -= (1 + self.momentum) * self.lr * grads[key]
            v[key] *= self.momentum
            v[key] -= self.lr * grads[key]


def _scaled_step(xp, grad, h, lr):
    """``lr * grad / (sqrt(h) + EPS)``, computed with one temporary in the dtype of ``h``.

    A 0-d ``h`` (the state of a scalar parameter, such as the book's ``{'x': -7.0}``) has
    no buffer to reuse: ``sqrt`` of it is a NumPy scalar, so it is computed plainly.
    """
    denom = xp.sqrt(h)
    if denom.ndim == 0:
        return lr * grad / (denom + EPS)
    denom += EPS
    xp.divide(grad, denom, out=denom)
    denom *= lr
    return denom


class AdaGrad(Optimizer):
    """AdaGrad: ``h <- h + g*g``; ``W <- W - lr * g / (sqrt(h) + 1e-7)``."""

    slots = ("h",)
    fused_rule = "adagrad"

    def __init__(self, lr=0.01):
        super().__init__()
        self.lr = lr

    def fused_scalars(self, dtype):
        return tuple(np.dtype(dtype).type(s) for s in (self.lr, EPS))

    def update(self, params, grads):
        if self._update_fused(params, grads):
            return
        (h,) = self._state(params)
        for key in params.keys():
            g = grads[key]
            xp = get_array_module(params[key], g)
            h[key] += g * g
            params[key] -= _scaled_step(xp, g, h[key], self.lr)


class RMSprop(Optimizer):
    """RMSprop: ``h <- decay*h + (1-decay)*g*g``; ``W <- W - lr * g / (sqrt(h) + 1e-7)``."""

    hyperparams = ("lr", "decay_rate")
    slots = ("h",)

    def __init__(self, lr=0.01, decay_rate=0.99):
        super().__init__()
        self.lr = lr
        self.decay_rate = decay_rate

    fused_rule = "rmsprop"

    def fused_scalars(self, dtype):
        decay = self.decay_rate
        return tuple(np.dtype(dtype).type(s) for s in (decay, 1 - decay, self.lr, EPS))

    def update(self, params, grads):
        if self._update_fused(params, grads):
            return
        (h,) = self._state(params)
        for key in params.keys():
            g = grads[key]
            xp = get_array_module(params[key], g)
            h[key] *= self.decay_rate
            h[key] += (1 - self.decay_rate) * g * g
            params[key] -= _scaled_step(xp, g, h[key], self.lr)


def _fused_adam_applies(param, grad, m, v):
    """The one-pass CPU kernel takes NumPy float32/float64 arrays of one shape and dtype
    (param, m and v contiguous); everything else (CuPy, float16, scalars) takes the
    formula."""
    return (
        type(param) is np.ndarray
        and type(grad) is np.ndarray
        and param.dtype in (np.float32, np.float64)
        and grad.dtype == param.dtype
        and grad.shape == param.shape
        and param.flags.c_contiguous
        and param.flags.writeable
        and all(type(s) is np.ndarray and s.flags.c_contiguous and s.flags.writeable
                for s in (m, v))
    )


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) in the book's form, with the bias correction folded into
    the step size: ``lr_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)``;
    ``m <- m + (1-beta1)(g - m)``; ``v <- v + (1-beta2)(g*g - v)``;
    ``W <- W - lr_t * m / (sqrt(v) + 1e-7)``.
    """

    hyperparams = ("lr", "beta1", "beta2")
    slots = ("m", "v")
    fused_rule = "adam"

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        super().__init__()
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.iter = 0
        # The GPU's step count t (int64 (1,)) and step size lr_t (1,), advanced by the fused
        # update on the device; ``_device_iter`` is the host's record of what t holds.
        self._device_t = None
        self._device_lr_t = None
        self._device_iter = None

    def fused_scalars(self, dtype):
        return tuple(np.dtype(dtype).type(s) for s in (1 - self.beta1, 1 - self.beta2, EPS))

    def sync_device_iter(self) -> None:
        """Set the GPU's step count to the host's ``iter`` (a fill kernel: no transfer,
        no synchronisation). ``update`` does it by itself whenever ``iter`` was changed
        on the host (``load_state_dict``, a user's assignment); a CUDA graph's owner calls
        it before capturing, so that nothing is filled inside the capture."""
        if self._device_t is not None:
            self._device_t.fill(self.iter)
            self._device_iter = self.iter

    def load_state_dict(self, state, params=None):
        super().load_state_dict(state, params)
        self.sync_device_iter()

    def update(self, params, grads):
        m, v = self._state(params)
        arrays = self._fused_arrays(params, grads)
        if arrays is not None:
            self._update_fused_adam(*arrays, [m[k] for k in params], [v[k] for k in params])
            return
        self.iter += 1
        # A Python float, so it never promotes float32 arrays to float64.
        lr_t = self.lr * math.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        for key in params.keys():
            g = grads[key]
            if _fused_adam_applies(params[key], g, m[key], v[key]):
                cpu_kernels.adam_update(params[key], g, m[key], v[key], lr_t,
                                        self.beta1, self.beta2, EPS)
                continue
            xp = get_array_module(params[key], g)
            m[key] += (1 - self.beta1) * (g - m[key])
            v[key] += (1 - self.beta2) * (g * g - v[key])
            params[key] -= _scaled_step(xp, m[key], v[key], lr_t)

    def _update_fused_adam(self, ps, gs, m, v):
        """One step on the GPU: a one-thread kernel advances the device's t and lr_t, then
        one kernel updates every parameter; the host's ``iter`` advances alongside."""
        from xpnet.kernels import cuda_fused

        self._device_buffers(ps[0])
        if self._device_iter != self.iter:
            self.sync_device_iter()
        self.iter += 1
        self._device_iter = self.iter
        cuda_fused.adam_update(ps, gs, m, v, self._device_t, self._device_lr_t, self.lr,
                               self.beta1, self.beta2, EPS, _flat_views(self))

    def _device_buffers(self, param):
        """Make t and lr_t on the parameter's device (lr_t in its dtype) if they are not."""
        xp = get_array_module(param)
        t = self._device_t
        if t is None or self._device_lr_t.dtype != param.dtype or t.device != param.device:
            with param.device:
                self._device_t = xp.full(1, self.iter, dtype=np.int64)
                self._device_lr_t = xp.zeros(1, dtype=param.dtype)
            self._device_iter = self.iter


# Each optimizer's device views of its parameters and state for the fused kernels
# (kernels.cuda_fused.FlatViews), kept beside it rather than in it, so that copying or
# pickling an optimizer never meets them.
_views_by_optimizer: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flat_views(optimizer):
    views = _views_by_optimizer.get(optimizer)
    if views is None:
        from xpnet.kernels.cuda_fused import FlatViews

        views = _views_by_optimizer[optimizer] = FlatViews()
    return views


#: Case-insensitive registry: lower-case name -> class.
OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.__name__.lower(): cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam)
}


def get_optimizer(name, **hyperparams) -> Optimizer:
    """Build an optimizer by name (``'sgd'``, ``'Adam'``, ...) with its hyperparameters.

    An optimizer instance is returned as is (then ``hyperparams`` must be empty).
    Unknown names and unknown hyperparameters raise ValueError listing the valid ones.
    """
    if isinstance(name, Optimizer):
        if hyperparams:
            raise ValueError("hyperparameters were given together with an optimizer instance")
        return name
    cls = OPTIMIZERS.get(str(name).lower())
    if cls is None:
        valid = ", ".join(c.__name__ for c in OPTIMIZERS.values())
        raise ValueError(f"unknown optimizer {name!r}; choose one of {valid}")
    unknown = sorted(set(hyperparams) - set(cls.hyperparams))
    if unknown:
        raise ValueError(
            f"{cls.__name__} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters are {', '.join(cls.hyperparams)}"
        )
    return cls(**hyperparams)
