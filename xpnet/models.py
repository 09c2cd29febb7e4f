"""The book's networks: TwoLayerNet (ch. 4-5), MultiLayerNet and MultiLayerNetExtend (ch. 6),
SimpleConvNet (ch. 7), DeepConvNet (ch. 8), and the three-layer inference net of ch. 3; and
the representative CNNs the book describes (7.7, 8.2): LeNet, VGGNet, MiniGoogLeNet, ResNet.

Every network keeps the book's names (``params`` keys ``W1``, ``b1``, ``gamma1`` ...; ``layers``
named ``'Affine1'``, ``'Relu1'`` ...; ``last_layer``) and adds two keywords: ``dtype`` (default
:func:`xpnet.backend.get_default_dtype`, float32) and ``device`` (``'cpu'`` or ``'gpu'``).

The machinery they share lives in :class:`Network`, so each class below is only its
architecture:

- an input whose dtype differs from the network's is cast to the network's dtype: a float32
  network fed the book's float64 batch computes in float32 (one-hot float targets likewise);
- ``gradient(x, t)`` runs one forward and one backward pass and keeps that pass's loss in
  ``last_loss`` (a 0-d array on the network's device), so a trainer needs no second forward;
- ``numerical_gradient(x, t)`` evaluates the loss in float64 whatever the network's dtype, so
  a float32 network's gradient check is as sharp as the book's float64 one;
- ``save_params`` / ``load_params`` go through :mod:`xpnet.io` (``.npz``, or the book's
  ``.pkl``); loading writes into the existing arrays, so layers keep seeing them;
- ``to(device)`` moves every array in place and returns the network.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from xpnet import initializers, io
from xpnet.backend import (
    DeviceError,
    check_device,
    check_float_dtype,
    device_of,
    get_array_module,
    get_default_dtype,
    get_rng_state,
    namespace,
    set_rng_state,
    to_device,
    to_scalar,
)
from xpnet.functions import check_targets, sigmoid, softmax
from xpnet.gradient import numerical_gradient as _numerical_gradient
from xpnet.kernels import check_integer, conv_output_size
from xpnet.layers import (
    Affine,
    BatchNormalization,
    Convolution,
    Dropout,
    GlobalAvgPooling,
    InceptionBlock,
    Pooling,
    Relu,
    ResidualBlock,
    Sigmoid,
    SoftmaxWithLoss,
    SpatialBatchNormalization,
)

__all__ = [
    "DeepConvNet",
    "LayerRegistry",
    "LeNet",
    "MiniGoogLeNet",
    "ResNet",
    "VGGNet",
    "MultiLayerNet",
    "MultiLayerNetExtend",
    "Network",
    "SimpleConvNet",
    "ThreeLayerNet",
    "TwoLayerNet",
    "init_network",
    "layer_registry",
    "named_buffers",
    "predict",
]


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "astype")


# ---------------------------------------------------------------------------
# The layer contract: what a network finds in its layers
# ---------------------------------------------------------------------------

# A layer that declares nothing (the book's own classes) is read as the book wrote them:
# its parameters are the attributes holding one of ``params``' arrays, its buffers
# whichever of these it has, and it takes ``train_flg`` if its forward names it.
_UNDECLARED_BUFFERS = ("running_mean", "running_var")


@dataclass(frozen=True)
class Slot:
    """Where one array of a network lives: ``getattr(layer, attr)``.

    ``name`` is how the network names it: a ``params`` key (``'W1'``) for a parameter,
    ``'<layer name>.<attr>'`` (``'BatchNorm1.running_mean'``; list layers by position)
    for a buffer. ``file_key`` is its key in parameter files: the ``params`` key, or for a
    buffer its attribute plus its layer's parameter suffix (``'running_mean1'``)."""

    name: str
    layer_name: str
    layer: object
    attr: str
    file_key: str

    def get(self):
        return getattr(self.layer, self.attr, None)

    def set(self, value) -> None:
        setattr(self.layer, self.attr, value)


def _fuse_conv_relu(forward) -> list:
    """``[(layer, takes_train_flg, relu)]`` of a forward plan: a ``Convolution`` followed
    by a ``Relu`` (these exact classes: a subclass may do more than they do) carries the
    ReLU, which then has no entry of its own."""
    plan = []
    for layer, takes_train_flg in forward:
        if (type(layer) is Relu and plan and type(plan[-1][0]) is Convolution
                and plan[-1][2] is None):
            plan[-1] = (plan[-1][0], plan[-1][1], layer)
        else:
            plan.append((layer, takes_train_flg, None))
    return plan


def run_plan(plan, x, train_flg):
    """Run the layers of a plan (:func:`_fuse_conv_relu`) on x in order; the output."""
    for layer, takes_train_flg, relu in plan:
        if relu is not None:
            x = relu.take_output(layer.forward(x, relu=True))
        else:
            x = layer.forward(x, train_flg) if takes_train_flg else layer.forward(x)
    return x


class LayerRegistry:
    """One network's parameters, buffers and forward plan, read from its layers once.

    ``params``: ``{params key: Slot}``; ``buffers``: ``{'<layer>.<attr>': Slot}``;
    ``forward``: ``[(layer, takes_train_flg)]`` in ``predict``'s order; ``plan``: the same
    as ``[(layer, takes_train_flg, relu)]``, where a ``Convolution`` directly followed by a
    ``Relu`` makes that ReLU's output itself (``relu`` is that layer, else None) and the
    ReLU has no entry of its own: one pass less over the activations;
    ``layers``: ``{layer name: layer}``, the last layer (``'last_layer'``) included.
    """

    def __init__(self, params: dict, layers, last_layer=None):
        named = dict(_named_layers(layers))
        self.forward = [(layer, _takes_train_flg(layer)) for layer in named.values()]
        self.plan = _fuse_conv_relu(self.forward)
        if last_layer is not None:
            named["last_layer"] = last_layer
        self.layers = named
        owner = {id(value): key for key, value in params.items()}
        self.params: dict = {}
        self.buffers: dict = {}
        for layer_name, layer in _walk(named.items()):
            suffix = self._add_params(owner, layer_name, layer)
            for attr in _buffer_attrs(layer):
                path = f"{layer_name}.{attr}"
                file_key = path if suffix is None else attr + suffix
                self.buffers[path] = Slot(path, layer_name, layer, attr, file_key)
        self.params = {key: self.params[key] for key in params if key in self.params}

    def _add_params(self, owner: dict, layer_name: str, layer):
        """Record the layer's parameters (``owner``: id of a params array -> its key).
        Returns what their keys add to their attribute names (``'1'`` of ``gamma1``), the
        suffix of the layer's buffers in parameter files; None if they add nothing."""
        suffix = None
        for attr in _param_attrs(layer, owner):
            key = owner.get(id(getattr(layer, attr, None)))
            if key is None:
                continue
            self.params[key] = Slot(key, layer_name, layer, attr, key)
            if suffix is None and key.startswith(attr):
                suffix = key[len(attr):]
        return suffix

    def buffer_layout(self, name: str):
        """``(shape, dtype)`` buffer ``name`` has, or will have once its layer creates it
        (at the first forward pass, as BatchNormalization does): one entry per entry of
        its layer's first parameter, in that parameter's dtype. None if unknown."""
        slot = self.buffers[name]
        value = slot.get()
        if value is not None:
            return tuple(value.shape), np.dtype(value.dtype)
        first = next((s.get() for s in self.params.values() if s.layer is slot.layer), None)
        if first is None:
            return None
        return (int(first.size),), np.dtype(first.dtype)

    def named_buffers(self) -> dict:
        """``{'<layer>.<attr>': array}`` of the buffers set so far."""
        out = {}
        for name, slot in self.buffers.items():
            value = slot.get()
            if value is not None:
                out[name] = value
        return out


def _named_layers(layers):
    """``(name, layer)`` pairs of an OrderedDict of layers, or of a list (named by position,
    as the book keeps DeepConvNet's)."""
    if isinstance(layers, dict):
        return [(str(name), layer) for name, layer in layers.items()]
    return [(str(i), layer) for i, layer in enumerate(layers or ())]


def _walk(named_layers):
    """``(name, layer)`` of each layer and, after a composite layer (one with
    ``sublayers()``), of the layers inside it, named ``'<composite>.<sublayer>'``."""
    for name, layer in named_layers:
        yield name, layer
        sublayers = getattr(layer, "sublayers", None)
        if sublayers is not None:
            yield from _walk((f"{name}.{sub}", inner) for sub, inner in sublayers().items())


def _param_attrs(layer, owner: dict) -> list:
    declared = getattr(layer, "param_names", None)
    if declared is not None:
        return list(declared)
    return [a for a, v in getattr(layer, "__dict__", {}).items() if id(v) in owner]


def _buffer_attrs(layer) -> list:
    declared = getattr(layer, "buffer_names", None)
    if declared is not None:
        return list(declared)
    return [a for a in _UNDECLARED_BUFFERS if hasattr(layer, a)]


def _takes_train_flg(layer) -> bool:
    declared = getattr(layer, "takes_train_flg", None)
    if declared is not None:
        return bool(declared)
    try:
        return "train_flg" in inspect.signature(layer.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def layer_registry(network) -> LayerRegistry:
    """The registry of any book-style network: an xpnet :class:`Network`'s own, else one
    read from its ``params``, ``layers`` and ``last_layer``."""
    if isinstance(network, Network):
        return network.registry()
    return LayerRegistry(
        getattr(network, "params", {}), getattr(network, "layers", None),
        getattr(network, "last_layer", None),
    )


def named_buffers(network) -> dict:
    """``{'<layer>.<attr>': array}``: the buffers (BatchNormalization's running statistics)
    of any book-style network, set so far."""
    return layer_registry(network).named_buffers()


class Network:
    """What every network shares: parameters and their layers, loss, accuracy, gradients,
    files and devices. A subclass builds ``params``, ``layers`` and ``last_layer``; nothing
    more (the layers are read again whenever they or ``params``' arrays change).

    ``layers`` is an OrderedDict (or, for DeepConvNet as in the book, a list) run in order by
    :meth:`predict`. What the network needs of a layer is the layer contract (README, "Your
    own layer"):

    - ``forward(x)`` (``forward(x, train_flg)`` if ``takes_train_flg = True``) and
      ``backward(dout)``;
    - ``param_names``: the attributes holding its parameters, each one of ``params``'
      arrays (found by identity); after ``backward`` the gradient of ``name`` is in
      ``'d' + name``;
    - ``buffer_names``: state that is not trained but saved and restored with the network
      (BatchNormalization's ``running_mean``, ``running_var``); None until the first
      forward pass is allowed: it then has one entry per entry of the layer's first
      parameter;
    - optionally ``output_shape(input_shape)``: its per-sample output shape, for a layer
      that changes the shape (the FLOP model, :mod:`xpnet.flops`, reads it);
    - a composite layer (a residual or Inception block, :mod:`xpnet.blocks`) declares
      ``sublayers()``, an ordered ``{name: layer}`` of the layers inside it: the network
      finds their parameters and buffers as it finds its own layers' (buffers named
      ``'<layer>.<sublayer>.<attr>'``), and moves and casts their arrays with its own;
      its ``paths()`` lists the layer sequences it runs on its input (the FLOP model
      walks each from the block's input shape);

    A layer that declares none of these (the book's own classes) is read as the book
    wrote it: parameters are the attributes holding ``params``' arrays, buffers are
    ``running_mean``/``running_var`` if present, ``train_flg`` is passed if its forward
    names it. :meth:`named_params`, :meth:`named_buffers` and :meth:`registry` are what
    checkpoints, parameter files, BatchNorm synchronisation and the FLOP model read.
    """

    #: shape of one input sample, set by each network: ``(input_size,)`` or ``(C, H, W)``.
    input_shape: tuple = ()

    def __init__(self, dtype=None, device="cpu"):
        self.dtype = check_float_dtype(get_default_dtype() if dtype is None else dtype)
        self.device = check_device(device)
        self.params: dict = {}
        self.layers = OrderedDict()
        self.last_layer = None
        self.weight_decay_lambda = 0
        self.last_loss = None
        self._registry: LayerRegistry | None = None
        self._registry_key = None  # what the registry was read from (see registry())

    # -- construction helpers ------------------------------------------------------------

    @property
    def xp(self):
        """The array namespace of the network's device (numpy or cupy)."""
        return np if self.device == "cpu" else namespace(self.device)

    def _weight(self, shape, weight_init_std):
        """A weight of ``shape`` in the network's dtype, on its device, initialized as the
        book's ``weight_init_std`` says: a standard deviation, or ``'he'``/``'relu'``,
        ``'xavier'``/``'sigmoid'`` scaled by the fan-in (``shape[0]`` of an Affine weight,
        ``C*FH*FW`` of a convolution's)."""
        return initializers.init_weight(shape, weight_init_std, dtype=self.dtype, xp=self.xp)

    def _zeros(self, size):
        return self.xp.zeros(size, dtype=self.dtype)

    def _ones(self, size):
        return self.xp.ones(size, dtype=self.dtype)

    def registry(self) -> LayerRegistry:
        """The layers' parameters, buffers and forward plan (:class:`LayerRegistry`), read
        again when a layer or a ``params`` array has been replaced since the last read
        (comparing identities: microseconds, no array is touched)."""
        if self._structure_key() != self._registry_key:
            self.bind()
        return self._registry

    def _structure_key(self) -> tuple:
        return (tuple(map(id, self._all_layers())), tuple(self.params),
                tuple(map(id, self.params.values())))

    def bind(self) -> LayerRegistry:
        """Read the layers now (:meth:`registry` does it when needed). Raises RuntimeError
        naming the parameters no layer holds."""
        registry = LayerRegistry(self.params, self.layers, self.last_layer)
        unbound = [key for key in self.params if key not in registry.params]
        if unbound:
            raise RuntimeError(
                f"{type(self).__name__}: parameters {unbound} are in no layer; a layer holds "
                "its parameters as attributes listed in its param_names"
            )
        self._registry = registry
        self._registry_key = self._structure_key()  # holds the layers: no id is reused
        return registry

    _bind = bind  # the name the architectures' constructors call

    def named_params(self) -> dict:
        """``{name: array}`` of the trained parameters: ``params`` itself, each array held
        by a layer (checked)."""
        return {key: self.params[key] for key in self.registry().params}

    def named_buffers(self) -> dict:
        """``{'<layer>.<attr>': array}`` of the layers' buffers set so far, e.g.
        ``'BatchNorm1.running_mean'`` (a list's layers are named by position)."""
        return self.registry().named_buffers()

    def _layer_list(self) -> list:
        return list(self.layers.values()) if isinstance(self.layers, dict) else list(self.layers)

    def _all_layers(self) -> list:
        """Every layer, the layers inside composite layers and the last layer included."""
        named = _named_layers(self._layer_list()) + [("last_layer", self.last_layer)]
        return [layer for _, layer in _walk(named)]

    @property
    def lastLayer(self):  # noqa: N802 - the book's ch. 5 name
        return self.last_layer

    @lastLayer.setter
    def lastLayer(self, layer):  # noqa: N802
        self.last_layer = layer

    def __repr__(self) -> str:
        n = sum(int(v.size) for v in self.params.values())
        return f"{type(self).__name__}({n} parameters, dtype={self.dtype}, device={self.device!r})"

    # -- inputs ----------------------------------------------------------------------------

    def _input(self, x):
        """``x`` checked against the network's input shape and device, in its dtype."""
        name = type(self).__name__
        if not _is_array(x):
            x = self.xp.asarray(x)
        if device_of(x) != self.device:
            raise DeviceError(
                f"{name} is on {self.device!r} but x is on {device_of(x)!r}; move one of "
                f"them, e.g. xpnet.backend.to_device(x, {self.device!r})"
            )
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{name}: x must hold numbers, got dtype {x.dtype}")
        expected = "(N, " + ", ".join(str(s) for s in self.input_shape) + ")"
        if x.ndim < 2:
            raise ValueError(f"{name} expects a batch x of shape {expected}, got {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{name}: empty batch (x has shape {x.shape})")
        if len(self.input_shape) == 1:  # Affine flattens any rank, as in the book
            ok = math.prod(x.shape[1:]) == self.input_shape[0]
        else:
            ok = tuple(x.shape[1:]) == tuple(self.input_shape)
        if not ok:
            raise ValueError(f"{name} expects x of shape {expected}, got {x.shape}")
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def _target(self, t, n):
        """``t`` (labels (N,) or one-hot (N, classes)) checked against a batch of ``n``."""
        name = type(self).__name__
        if not _is_array(t):
            t = self.xp.asarray(t)
        if device_of(t) != self.device:
            raise DeviceError(f"{name} is on {self.device!r} but t is on {device_of(t)!r}")
        if t.ndim not in (1, 2) or t.shape[0] != n:
            raise ValueError(
                f"{name}: t must be labels (N,) or one-hot (N, classes) with N = {n} "
                f"(the rows of x), got shape {t.shape}"
            )
        # a float one-hot t would otherwise upcast a float32 loss and its gradient
        if t.dtype.kind == "f" and t.dtype != self.dtype:
            t = t.astype(self.dtype)
        return t

    # -- the book's API --------------------------------------------------------------------

    def predict(self, x, train_flg=False):
        """Scores before softmax. x: (N, *input_shape) -> (N, output_size)."""
        return self._forward(self._input(x), train_flg)

    def _forward(self, x, train_flg):
        return run_plan(self.registry().plan, x, train_flg)

    def _weight_decay(self):
        """The book's L2 penalty 0.5 * lambda * sum(W**2) over every weight ``W1``, ``W2``..."""
        if not self.weight_decay_lambda:
            return 0
        xp = self.xp
        total = 0
        for key in self._decay_keys():
            W = self.params[key]
            total = total + 0.5 * self.weight_decay_lambda * xp.sum(W * W)
        return total

    def _decay_keys(self):
        return [k for k in self.params if k.startswith("W")]

    def loss(self, x, t, train_flg=True):
        """Cross-entropy of softmax(predict(x)) against t (labels or one-hot), plus the weight
        decay penalty. Dropout and BatchNormalization run in training mode unless
        ``train_flg=False``."""
        x = self._input(x)
        t = self._target(t, x.shape[0])
        loss = self.last_layer.forward(self._forward(x, train_flg), t)
        return loss + self._weight_decay() if self.weight_decay_lambda else loss

    def accuracy(self, x, t, batch_size=100):
        """Fraction of rows of x whose highest score is the class of t (labels or one-hot).

        Runs in batches of ``batch_size`` (the last one may be shorter), so a whole test
        set's activations are never held at once; each batch is moved to the network's
        device, so a host test set can be scored on the GPU.
        """
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n = len(x)
        if n == 0:
            raise ValueError("accuracy of an empty set: x has no rows")
        if len(t) != n:
            raise ValueError(f"x has {n} rows but t has {len(t)}")
        tx = get_array_module(t)
        if t.ndim == 2 and t.shape[1] == 1 and t.dtype.kind in "iu":
            t = t.reshape(-1)  # a column of labels, as loss accepts it (argmax would give 0s)
        labels = t if t.ndim == 1 else tx.argmax(t, axis=1)
        correct = 0
        for i in range(0, n, batch_size):
            y = self.predict(to_device(x[i : i + batch_size], self.device), train_flg=False)
            tb = to_device(labels[i : i + batch_size], self.device)
            if t.ndim == 1:  # labels out of range raise, as in loss (checked on the host only)
                check_targets(y, tb, f"{type(self).__name__}.accuracy")
            correct = correct + (y.argmax(axis=1) == tb).sum()  # summed on the device
        return to_scalar(correct) / n

    def gradient(self, x, t):
        """Gradients of :meth:`loss` (training mode) by backpropagation: a dict like
        ``params``, in the network's dtype. The loss of this forward pass is kept in
        ``self.last_loss`` (a 0-d array on the network's device)."""
        loss = self.loss(x, t, train_flg=True)
        self.last_loss = self.xp.asarray(loss)
        dout = self.last_layer.backward(1)
        for layer in reversed(self._layer_list()):
            dout = layer.backward(dout)
        slots = self.registry().params
        grads = {key: getattr(s.layer, "d" + s.attr) for key, s in slots.items()}
        if self.weight_decay_lambda:
            for key in self._decay_keys():
                grads[key] = grads[key] + self.weight_decay_lambda * self.params[key]
        return {key: grads[key] for key in self.params}

    def numerical_gradient(self, x, t):
        """Gradients of :meth:`loss` (training mode) by central differences, for checking
        :meth:`gradient`. Returns a dict like ``params`` in the network's dtype.

        The loss is evaluated in float64 on float64 copies of the parameters, of every
        layer's state and of x, whatever the network's dtype: a step h = 1e-4 in float32
        would lose most digits of the difference. The network is left as it was.

        Random layers (Dropout) see the same random draws in every evaluation (the
        generator's state is restored before each), so the differences are those of one
        fixed sub-network: on the CPU, the one :meth:`gradient` uses after the same
        ``xpnet.seed``. (On the GPU, taking the generator's state reseeds it, so the masks
        repeat but need not be those of a :meth:`gradient` call.)
        """
        x = self._input(x)
        t = self._target(t, x.shape[0])
        dtype = self.dtype
        xp = self.xp
        with self._working_copy(np.float64):
            x64 = x.astype(np.float64)
            t64 = t.astype(np.float64) if t.dtype.kind == "f" else t
            state = get_rng_state(xp)

            def f(_):
                set_rng_state(state, xp)
                return self.loss(x64, t64, train_flg=True)

            grads = {key: _numerical_gradient(f, value) for key, value in self.params.items()}
        return {key: g.astype(dtype) for key, g in grads.items()}

    # -- arrays: dtype, device, files ------------------------------------------------------

    def _map_arrays(self, fn):
        """Replace every array of the network (params and each layer's attributes) by
        ``fn(array)``; an array shared by ``params`` and a layer stays shared."""
        done = {}  # id -> (old, new); holding ``old`` keeps its id from being reused

        def mapped(a):
            entry = done.get(id(a))
            if entry is None:
                entry = done[id(a)] = (a, fn(a))
            return entry[1]

        for key, value in self.params.items():
            self.params[key] = mapped(value)
        for layer in self._all_layers():
            for attr, value in list(vars(layer).items()):
                if _is_array(value):
                    setattr(layer, attr, mapped(value))

    @contextlib.contextmanager
    def _working_copy(self, dtype):
        """Temporarily compute in ``dtype`` on copies of every floating array; on exit the
        original arrays (and every layer attribute) are put back."""
        dtype = np.dtype(dtype)
        saved_params = dict(self.params)
        saved_layers = [(layer, dict(vars(layer))) for layer in self._all_layers()]
        saved_dtype = self.dtype
        try:
            self._map_arrays(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a)
            self.dtype = dtype
            yield
        finally:
            self.dtype = saved_dtype
            self.params.update(saved_params)
            for layer, attrs in saved_layers:
                vars(layer).clear()
                vars(layer).update(attrs)

    def to(self, device):
        """Move every parameter and layer array to ``device`` (``'cpu'`` or ``'gpu'``) in
        place: ``params`` keeps its keys, its values become the moved arrays and the layers
        are re-bound to them. Returns ``self``. Raises DeviceError if the GPU is asked for
        and cannot be used."""
        device = check_device(device)
        if device != self.device:
            self._map_arrays(lambda a: to_device(a, device))
            if self.last_loss is not None:
                self.last_loss = to_device(self.last_loss, device)
            self.device = device
        return self

    def state_arrays(self) -> dict:
        """``params`` plus the buffers set so far under their parameter-file keys
        (``running_mean1``...): what :meth:`save_params` writes."""
        out = dict(self.named_params())
        for slot in self.registry().buffers.values():
            value = slot.get()
            if value is not None:
                out[slot.file_key] = value
        return out

    def save_params(self, file_name="params.npz"):
        """Write the parameters (and BatchNormalization statistics) to ``file_name`` as an
        ``.npz`` archive, atomically. Returns the path written."""
        return io.save_params(self.state_arrays(), file_name)

    def load_params(self, file_name="params.npz"):
        """Read parameters from an ``.npz`` written by :meth:`save_params` or from one of the
        book's ``.pkl`` files, into the existing arrays (cast to the network's dtype), so
        layers and optimizers holding them see the new values. The layers' buffers
        (BatchNormalization's running statistics) are read too when the file has them.

        Every key of ``params`` must be in the file with the same shape, and the file may
        hold nothing else; nothing is written unless all is well. Raises KeyError naming
        the missing or unexpected keys, or ValueError naming the key and both shapes.
        """
        loaded = io.load_params(file_name)
        registry = self.registry()
        buffers = {slot.file_key: slot for slot in registry.buffers.values()}
        self._check_keys(loaded, buffers, file_name)
        expected = {key: tuple(value.shape) for key, value in self.params.items()}
        for key, slot in buffers.items():
            layout = registry.buffer_layout(slot.name)  # None: any size is taken
            expected[key] = None if layout is None else (math.prod(layout[0]),)
        arrays = {
            key: self._loaded_array(loaded[key], key, shape, key in buffers, file_name)
            for key, shape in expected.items() if key in loaded
        }
        # All checked: now write (in place, so layers and optimizers keep their arrays).
        for key, value in self.params.items():
            value[...] = arrays[key]
        for key, slot in buffers.items():
            if key in arrays:
                current = slot.get()
                if current is not None and current.size == arrays[key].size:
                    current[...] = arrays[key].reshape(current.shape)  # in place, as BN does
                else:
                    slot.set(arrays[key])

    def _check_keys(self, loaded: dict, buffers: dict, file_name) -> None:
        """Every parameter in the file, nothing but parameters and buffers: KeyError."""
        name = type(self).__name__
        missing = [key for key in self.params if key not in loaded]
        if missing:
            raise KeyError(
                f"{file_name} has no {', '.join(missing)} for {name} "
                f"(it holds {', '.join(sorted(loaded)) or 'nothing'})"
            )
        unexpected = [k for k in loaded if k not in self.params and k not in buffers]
        if unexpected:
            raise KeyError(
                f"{file_name} holds {', '.join(unexpected)}, which {name} does not have "
                f"(its parameters are {', '.join(self.params)})"
            )

    def _loaded_array(self, value, key, shape, is_buffer, file_name):
        """``value`` checked against ``shape`` (None: any), cast to the network's dtype
        and moved to its device; ValueError naming ``key`` otherwise."""
        got = tuple(value.shape)
        if is_buffer:
            got = (int(value.size),)  # per-unit statistics may be stored flat or not
        if shape is not None and got != shape:
            raise ValueError(
                f"{file_name}: {key!r} has shape {tuple(value.shape)} but "
                f"{type(self).__name__} expects {shape}"
            )
        with np.errstate(over="ignore"):  # overflow is reported just below
            cast = value.astype(self.dtype)
        if value.dtype.kind == "f" and not np.isfinite(cast).all() and np.isfinite(value).all():
            raise ValueError(
                f"{file_name}: {key!r} has values beyond the range of {self.dtype} "
                f"(largest magnitude {np.abs(value).max():.3g})"
            )
        return to_device(cast, self.device)


# ---------------------------------------------------------------------------
# Chapter 3: the three-layer inference network
# ---------------------------------------------------------------------------


def init_network(file_name="sample_weight.pkl") -> dict:
    """The book's ch. 3 ``init_network``: the pretrained weights ``W1 b1 W2 b2 W3 b3`` of
    ``sample_weight.pkl``, read through xpnet's restricted unpickler (or an ``.npz``)."""
    return io.load_params(file_name)


def predict(network: dict, x):
    """The book's ch. 3 forward pass: sigmoid, sigmoid, softmax.

    network: dict of W1 (784, 50), b1, W2 (50, 100), b2, W3 (100, 10), b3;
    x: (784,) or (N, 784) -> class probabilities (10,) or (N, 10).
    """
    W1, W2, W3 = network["W1"], network["W2"], network["W3"]
    b1, b2, b3 = network["b1"], network["b2"], network["b3"]
    xp = get_array_module(x, W1)
    z1 = sigmoid(xp.dot(x, W1) + b1)
    z2 = sigmoid(xp.dot(z1, W2) + b2)
    return softmax(xp.dot(z2, W3) + b3)


class ThreeLayerNet(Network):
    """The ch. 3 network (784-50-100-10, sigmoid) as a layered network: Affine1, Sigmoid1,
    Affine2, Sigmoid2, Affine3, then softmax. Loads the book's ``sample_weight.pkl`` with
    :meth:`load_params`; ``predict`` returns scores (take ``softmax`` for probabilities)."""

    def __init__(
        self,
        input_size=784,
        hidden_size_list=(50, 100),
        output_size=10,
        weight_init_std=0.01,
        *,
        dtype=None,
        device="cpu",
    ):
        super().__init__(dtype, device)
        sizes = [input_size, *hidden_size_list, output_size]
        if len(sizes) != 4:
            raise ValueError(f"hidden_size_list must have two sizes, got {hidden_size_list!r}")
        self.input_shape = (input_size,)
        for i in range(1, 4):
            self.params[f"W{i}"] = self._weight((sizes[i - 1], sizes[i]), weight_init_std)
            self.params[f"b{i}"] = self._zeros(sizes[i])
            self.layers[f"Affine{i}"] = Affine(self.params[f"W{i}"], self.params[f"b{i}"])
            if i < 3:
                self.layers[f"Sigmoid{i}"] = Sigmoid()
        self.last_layer = SoftmaxWithLoss()
        self._bind()


# ---------------------------------------------------------------------------
# Chapters 4-5: TwoLayerNet
# ---------------------------------------------------------------------------


class TwoLayerNet(Network):
    """The book's ch. 5 TwoLayerNet: Affine1 - Relu1 - Affine2 - SoftmaxWithLoss.

    W1: (input_size, hidden_size), W2: (hidden_size, output_size), weights drawn with
    standard deviation ``weight_init_std``; biases zero.
    """

    def __init__(
        self,
        input_size,
        hidden_size,
        output_size,
        weight_init_std=0.01,
        *,
        dtype=None,
        device="cpu",
    ):
        super().__init__(dtype, device)
        self.input_shape = (input_size,)
        p = self.params
        p["W1"] = self._weight((input_size, hidden_size), weight_init_std)
        p["b1"] = self._zeros(hidden_size)
        p["W2"] = self._weight((hidden_size, output_size), weight_init_std)
        p["b2"] = self._zeros(output_size)
        self.layers["Affine1"] = Affine(p["W1"], p["b1"])
        self.layers["Relu1"] = Relu()
        self.layers["Affine2"] = Affine(p["W2"], p["b2"])
        self.last_layer = SoftmaxWithLoss()
        self._bind()


# ---------------------------------------------------------------------------
# Chapter 6: MultiLayerNet, MultiLayerNetExtend
# ---------------------------------------------------------------------------

_ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid}


class MultiLayerNet(Network):
    """The book's ch. 6 fully connected network with weight decay.

    Layers: (Affine{i}, Activation_function{i}) for each hidden size, then the last
    Affine and SoftmaxWithLoss. ``activation``: ``'relu'`` or ``'sigmoid'``;
    ``weight_init_std``: a number, or ``'relu'``/``'he'`` (He) or
    ``'sigmoid'``/``'xavier'`` (Xavier), scaled by each layer's fan-in.
    ``weight_decay_lambda`` adds 0.5 * lambda * sum(W**2) over all weights to the loss.
    """

    def __init__(
        self,
        input_size,
        hidden_size_list,
        output_size,
        activation="relu",
        weight_init_std="relu",
        weight_decay_lambda=0,
        *,
        dtype=None,
        device="cpu",
    ):
        super().__init__(dtype, device)
        self._setup(input_size, hidden_size_list, output_size, activation, weight_decay_lambda)
        self._init_weight(weight_init_std)
        self._build(activation, use_batchnorm=False, use_dropout=False, dropout_ration=0.5)

    def _setup(self, input_size, hidden_size_list, output_size, activation, lam):
        if str(activation).lower() not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}"
            )
        if lam < 0:
            raise ValueError(f"weight_decay_lambda must be >= 0, got {lam}")
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size_list = list(hidden_size_list)
        self.hidden_layer_num = len(self.hidden_size_list)
        self.weight_decay_lambda = lam
        self.input_shape = (input_size,)

    def _init_weight(self, weight_init_std):
        sizes = [self.input_size, *self.hidden_size_list, self.output_size]
        for idx in range(1, len(sizes)):
            self.params[f"W{idx}"] = self._weight((sizes[idx - 1], sizes[idx]), weight_init_std)
            self.params[f"b{idx}"] = self._zeros(sizes[idx])

    def _build(self, activation, use_batchnorm, use_dropout, dropout_ration):
        act = _ACTIVATIONS[str(activation).lower()]
        p = self.params
        for idx in range(1, self.hidden_layer_num + 1):
            self.layers[f"Affine{idx}"] = Affine(p[f"W{idx}"], p[f"b{idx}"])
            if use_batchnorm:
                size = self.hidden_size_list[idx - 1]
                p[f"gamma{idx}"] = self._ones(size)
                p[f"beta{idx}"] = self._zeros(size)
                self.layers[f"BatchNorm{idx}"] = BatchNormalization(
                    p[f"gamma{idx}"], p[f"beta{idx}"]
                )
            self.layers[f"Activation_function{idx}"] = act()
            if use_dropout:
                self.layers[f"Dropout{idx}"] = Dropout(dropout_ration)
        idx = self.hidden_layer_num + 1
        self.layers[f"Affine{idx}"] = Affine(p[f"W{idx}"], p[f"b{idx}"])
        self.last_layer = SoftmaxWithLoss()
        # The book's order, layer by layer: W1, b1, gamma1, beta1, W2, ... (its gradients
        # come in this order, so a gradient check prints them so).
        order = [f"{name}{i}" for i in range(1, idx + 1) for name in ("W", "b", "gamma", "beta")]
        self.params = {key: p[key] for key in order if key in p}
        self._bind()


class MultiLayerNetExtend(MultiLayerNet):
    """MultiLayerNet with the book's options Dropout (``use_dropout``, ratio
    ``dropout_ration`` — the book's spelling) and BatchNormalization (``use_batchnorm``;
    parameters ``gamma1``, ``beta1``... after each hidden Affine's ``W``/``b``).
    ``loss`` runs in inference mode by default, as the book's."""

    def __init__(
        self,
        input_size,
        hidden_size_list,
        output_size,
        activation="relu",
        weight_init_std="relu",
        weight_decay_lambda=0,
        use_dropout=False,
        dropout_ration=0.5,
        use_batchnorm=False,
        *,
        dtype=None,
        device="cpu",
    ):
        Network.__init__(self, dtype, device)
        self._setup(input_size, hidden_size_list, output_size, activation, weight_decay_lambda)
        self.use_dropout = use_dropout
        self.use_batchnorm = use_batchnorm
        self._init_weight(weight_init_std)
        self._build(activation, use_batchnorm, use_dropout, dropout_ration)

    def loss(self, x, t, train_flg=False):
        """As :meth:`Network.loss`, but in inference mode unless ``train_flg=True`` (the
        book's default for this network): Dropout keeps every unit and BatchNormalization
        uses its running statistics. :meth:`gradient` and :meth:`numerical_gradient` use
        training mode."""
        return super().loss(x, t, train_flg)


# ---------------------------------------------------------------------------
# Chapters 7-8: SimpleConvNet, DeepConvNet
# ---------------------------------------------------------------------------


def _check_input_dim(name, input_dim):
    if len(input_dim) != 3:
        raise ValueError(f"{name}: input_dim must be (C, H, W), got {input_dim!r}")
    return tuple(int(s) for s in input_dim)


class SimpleConvNet(Network):
    """The book's ch. 7 network: Conv1 - Relu1 - Pool1 (2x2, stride 2) - Affine1 - Relu2 -
    Affine2 - SoftmaxWithLoss.

    x: (N, C, H, W) with (C, H, W) = ``input_dim``. W1: (filter_num, C, fs, fs),
    W2: (filter_num * pooled H * pooled W, hidden_size), W3: (hidden_size, output_size).
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        conv_param={"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1},  # noqa: B006
        hidden_size=100,
        output_size=10,
        weight_init_std=0.01,
        *,
        dtype=None,
        device="cpu",
    ):
        super().__init__(dtype, device)
        self.input_shape = _check_input_dim("SimpleConvNet", input_dim)
        C, H, W = self.input_shape
        fn, fs = conv_param["filter_num"], conv_param["filter_size"]
        pad, stride = conv_param["pad"], conv_param["stride"]
        conv_h, conv_w = conv_output_size(H, fs, stride, pad), conv_output_size(W, fs, stride, pad)
        pool_output_size = fn * conv_output_size(conv_h, 2, 2) * conv_output_size(conv_w, 2, 2)
        if pool_output_size < 1:
            raise ValueError(
                f"SimpleConvNet: input_dim {tuple(input_dim)} is too small for a "
                f"{fs}x{fs} convolution (pad {pad}, stride {stride}) and a 2x2 pooling"
            )
        p = self.params
        p["W1"] = self._weight((fn, C, fs, fs), weight_init_std)
        p["b1"] = self._zeros(fn)
        p["W2"] = self._weight((pool_output_size, hidden_size), weight_init_std)
        p["b2"] = self._zeros(hidden_size)
        p["W3"] = self._weight((hidden_size, output_size), weight_init_std)
        p["b3"] = self._zeros(output_size)
        self.layers["Conv1"] = Convolution(p["W1"], p["b1"], stride, pad)
        self.layers["Relu1"] = Relu()
        self.layers["Pool1"] = Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers["Affine1"] = Affine(p["W2"], p["b2"])
        self.layers["Relu2"] = Relu()
        self.layers["Affine2"] = Affine(p["W3"], p["b3"])
        self.last_layer = SoftmaxWithLoss()
        self._bind()


_DEEP_DEFAULTS = [(16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1)]  # (filter_num, pad)


def _conv(num, pad):
    return {"filter_num": num, "filter_size": 3, "pad": pad, "stride": 1}


class DeepConvNet(Network):
    """The book's ch. 8 network (about 99% on MNIST):

    conv - relu - conv - relu - pool - conv - relu - conv - relu - pool -
    conv - relu - conv - relu - pool - affine - relu - dropout - affine - dropout - softmax

    Six 3x3 convolutions (W1..W6), two Affine layers (W7: (64*4*4, hidden_size) for the
    default 28x28 input, W8), He initialization, Dropout(0.5). As in the book, ``layers``
    is a list (``layers[0]`` is the first Convolution).
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        conv_param_1=_conv(*_DEEP_DEFAULTS[0]),  # noqa: B008
        conv_param_2=_conv(*_DEEP_DEFAULTS[1]),  # noqa: B008
        conv_param_3=_conv(*_DEEP_DEFAULTS[2]),  # noqa: B008
        conv_param_4=_conv(*_DEEP_DEFAULTS[3]),  # noqa: B008
        conv_param_5=_conv(*_DEEP_DEFAULTS[4]),  # noqa: B008
        conv_param_6=_conv(*_DEEP_DEFAULTS[5]),  # noqa: B008
        hidden_size=50,
        output_size=10,
        *,
        dtype=None,
        device="cpu",
    ):
        super().__init__(dtype, device)
        self.input_shape = _check_input_dim("DeepConvNet", input_dim)
        conv_params = [conv_param_1, conv_param_2, conv_param_3]
        conv_params += [conv_param_4, conv_param_5, conv_param_6]
        p = self.params
        self.layers = []
        channels, h, w = self.input_shape
        for idx, cp in enumerate(conv_params, start=1):
            fn, fs, stride, pad = cp["filter_num"], cp["filter_size"], cp["stride"], cp["pad"]
            # He initialization; fan-in C*3*3 is the book's pre_node_nums
            p[f"W{idx}"] = self._weight((fn, channels, fs, fs), "he")
            p[f"b{idx}"] = self._zeros(fn)
            self.layers.append(Convolution(p[f"W{idx}"], p[f"b{idx}"], stride, pad))
            self.layers.append(Relu())
            h, w = conv_output_size(h, fs, stride, pad), conv_output_size(w, fs, stride, pad)
            channels = fn
            if idx % 2 == 0:
                self.layers.append(Pooling(pool_h=2, pool_w=2, stride=2))
                h, w = conv_output_size(h, 2, 2), conv_output_size(w, 2, 2)
            if h < 1 or w < 1:
                raise ValueError(
                    f"DeepConvNet: input_dim {tuple(input_dim)} is too small; after "
                    f"convolution {idx} the feature map would be {h}x{w}"
                )
        flat = channels * h * w  # 64 * 4 * 4 for a 28x28 input
        p["W7"] = self._weight((flat, hidden_size), "he")
        p["b7"] = self._zeros(hidden_size)
        p["W8"] = self._weight((hidden_size, output_size), "he")
        p["b8"] = self._zeros(output_size)
        self.layers.append(Affine(p["W7"], p["b7"]))
        self.layers.append(Relu())
        self.layers.append(Dropout(0.5))
        self.layers.append(Affine(p["W8"], p["b8"]))
        self.layers.append(Dropout(0.5))
        self.last_layer = SoftmaxWithLoss()
        self._bind()


# ---------------------------------------------------------------------------
# Book 7.7 and 8.2: the representative CNNs
# ---------------------------------------------------------------------------


class _NumberedNet(Network):
    """A network whose parameters are numbered as they are made, in the book's style:
    ``W1``, ``W2``... for every convolution and Affine weight, ``b<i>`` beside a weight that
    has a bias (a convolution followed by batch normalization has none: its mean is taken
    out), ``gamma<j>``/``beta<j>`` for each batch normalization (running statistics in
    files as ``running_mean<j>``, ``running_var<j>``)."""

    def __init__(self, input_dim, weight_init_std, dtype, device):
        super().__init__(dtype, device)
        self.input_shape = _check_input_dim(type(self).__name__, input_dim)
        self.weight_init_std = weight_init_std
        self._counts: dict = {}

    def _next(self, kind: str) -> int:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        return self._counts[kind]

    def _conv(self, in_channels, out_channels, size, stride=1, bias=True, pad=None):
        """A ``size`` x ``size`` Convolution, padded by size // 2 unless ``pad`` is given
        (the same size out as in, at stride 1)."""
        i = self._next("W")
        W = self.params[f"W{i}"] = self._weight(
            (out_channels, in_channels, size, size), self.weight_init_std)
        b = 0  # a scalar bias is no parameter
        if bias:
            b = self.params[f"b{i}"] = self._zeros(out_channels)
        return Convolution(W, b, stride, size // 2 if pad is None else pad)

    def _batchnorm(self, channels):
        j = self._next("gamma")
        gamma = self.params[f"gamma{j}"] = self._ones(channels)
        beta = self.params[f"beta{j}"] = self._zeros(channels)
        return SpatialBatchNormalization(gamma, beta)

    def _conv_bn_relu(self, in_channels, out_channels, size, stride=1) -> list:
        return [self._conv(in_channels, out_channels, size, stride, bias=False),
                self._batchnorm(out_channels), Relu()]

    def _affine(self, in_size, out_size):
        i = self._next("W")
        W = self.params[f"W{i}"] = self._weight((in_size, out_size), self.weight_init_std)
        b = self.params[f"b{i}"] = self._zeros(out_size)
        return Affine(W, b)

    def _add(self, kind: str, layer):
        """Append ``layer`` to ``layers`` as ``<kind><n>`` (``Conv1``, ``Relu2``...)."""
        n = sum(1 for name in self.layers if name.rstrip("0123456789") == kind) + 1
        self.layers[f"{kind}{n}"] = layer

    def _feature_map(self, shape, layer):
        """The per-sample shape after ``layer``; ValueError when the input is too small."""
        if isinstance(layer, Convolution):
            fn, _, fh, fw = layer.W.shape
            out = (int(fn), conv_output_size(shape[1], fh, layer.stride, layer.pad),
                   conv_output_size(shape[2], fw, layer.stride, layer.pad))
        elif isinstance(layer, Pooling):
            out = (shape[0], conv_output_size(shape[1], layer.pool_h, layer.stride, layer.pad),
                   conv_output_size(shape[2], layer.pool_w, layer.stride, layer.pad))
        else:
            out = tuple(layer.output_shape(shape))
        if min(out) < 1:
            raise ValueError(
                f"{type(self).__name__}: input_dim {self.input_shape} is too small; the "
                f"feature map would be {out}"
            )
        return out


_LENET_INIT = {"relu": "he", "sigmoid": "xavier"}


class LeNet(_NumberedNet):
    """LeNet (LeCun et al. 1998, book 7.7) adapted to 28x28 inputs:

    conv 5x5 (6, pad 2) - act - pool - conv 5x5 (16) - act - pool - affine (120) - act -
    affine (84) - act - affine (output_size) - softmax

    ``activation``: ``'sigmoid'`` (the original's) or ``'relu'`` (today's); max pooling
    2x2, stride 2. ``weight_init_std`` defaults to He for ReLU and Xavier for sigmoid.
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        activation="relu",
        filter_nums=(6, 16),
        hidden_sizes=(120, 84),
        output_size=10,
        weight_init_std=None,
        *,
        dtype=None,
        device="cpu",
    ):
        activation = str(activation).lower()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}"
            )
        if weight_init_std is None:
            weight_init_std = _LENET_INIT[activation]
        filter_nums = tuple(filter_nums)
        if len(filter_nums) != 2:
            raise ValueError(
                f"LeNet: filter_nums must give the filters of its 2 convolutions, got "
                f"{filter_nums!r}"
            )
        filter_nums = tuple(check_integer("LeNet: filter_nums", f) for f in filter_nums)
        hidden_sizes = tuple(check_integer("LeNet: hidden_sizes", h) for h in hidden_sizes)
        super().__init__(input_dim, weight_init_std, dtype, device)
        self.activation = activation
        act = _ACTIVATIONS[activation]
        shape = self.input_shape
        for filters, pad in zip(filter_nums, (2, 0)):
            conv = self._conv(shape[0], filters, 5, pad=pad)
            shape = self._feature_map(shape, conv)
            pool = Pooling(2, 2, stride=2)
            shape = self._feature_map(shape, pool)
            self._add("Conv", conv)
            self._add("Activation", act())
            self._add("Pool", pool)
        size = math.prod(shape)
        for hidden in hidden_sizes:
            self._add("Affine", self._affine(size, hidden))
            self._add("Activation", act())
            size = hidden
        self._add("Affine", self._affine(size, output_size))
        self.last_layer = SoftmaxWithLoss()
        self._bind()


class VGGNet(_NumberedNet):
    """VGG-style network, DeepConvNet's family (book 8.1-8.2): ``stages`` stages of
    ``depth`` 3x3 convolutions (pad 1) with ReLU, each stage ending in a 2x2 max pooling;
    then affine (``hidden_size``) - relu - dropout - affine - dropout - softmax.

    Stage ``s`` (from 0) has ``width * 2**s`` filters: the defaults (16, 32, 64 filters,
    two convolutions a stage) are DeepConvNet's widths. ``dropout_ratio=0`` leaves out
    the Dropout layers. He initialization by default.
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        width=16,
        depth=2,
        stages=3,
        hidden_size=50,
        output_size=10,
        dropout_ratio=0.5,
        weight_init_std="he",
        *,
        dtype=None,
        device="cpu",
    ):
        super().__init__(input_dim, weight_init_std, dtype, device)
        self.width, self.depth, self.stages = (
            check_integer("VGGNet: width", width), check_integer("VGGNet: depth", depth),
            check_integer("VGGNet: stages", stages))
        shape = self.input_shape
        for stage in range(self.stages):
            for _ in range(self.depth):
                conv = self._conv(shape[0], self.width * 2**stage, 3)
                shape = self._feature_map(shape, conv)
                self._add("Conv", conv)
                self._add("Relu", Relu())
            pool = Pooling(2, 2, stride=2)
            shape = self._feature_map(shape, pool)
            self._add("Pool", pool)
        self._add("Affine", self._affine(math.prod(shape), hidden_size))
        self._add("Relu", Relu())
        for affine in (None, self._affine(hidden_size, output_size)):
            if affine is not None:
                self._add("Affine", affine)
            if dropout_ratio:
                self._add("Dropout", Dropout(dropout_ratio))
        self.last_layer = SoftmaxWithLoss()
        self._bind()


class MiniGoogLeNet(_NumberedNet):
    """A small GoogLeNet (book 8.2.2) for 28x28 inputs: a 3x3 stem, two Inception stages,
    global average pooling and one Affine layer:

    conv 3x3 (4w) - pool - Inception (8w) - pool - Inception (15w) - global avg pool -
    affine - softmax

    Each Inception block has four branches: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max pooling
    (stride 1) -> 1x1, every convolution followed by SpatialBatchNormalization and ReLU.
    ``width`` (w) scales every branch: w = 16 gives 128 and 240 channels (132k parameters).
    As GoogLeNet's stem does, a 2x2 max pooling after the stem puts the Inception blocks at
    14x14 and 7x7: that pays for the width, which a 28x28 input would cost four times over.
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        width=16,
        output_size=10,
        weight_init_std="he",
        *,
        dtype=None,
        device="cpu",
    ):
        super().__init__(input_dim, weight_init_std, dtype, device)
        self.width = w = check_integer("MiniGoogLeNet: width", width)
        shape = self.input_shape
        conv, bn, relu = self._conv_bn_relu(shape[0], 4 * w, 3)
        self._add("Conv", conv)
        self._add("BatchNorm", bn)
        self._add("Relu", relu)
        shape = self._feature_map(shape, conv)
        # (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection) of each stage
        for stage in ((2 * w, 2 * w, 4 * w, w, w, w), (4 * w, 4 * w, 6 * w, w, 3 * w, 2 * w)):
            pool = Pooling(2, 2, stride=2)
            shape = self._feature_map(shape, pool)
            self._add("Pool", pool)
            block = self._inception(shape[0], *stage)
            shape = self._feature_map(shape, block)
            self._add("Inception", block)
        self._add("GlobalAvgPool", GlobalAvgPooling())
        self._add("Affine", self._affine(shape[0], output_size))
        self.last_layer = SoftmaxWithLoss()
        self._bind()

    def _inception(self, channels, c1, c3_reduce, c3, c5_reduce, c5, pool_proj):
        return InceptionBlock([
            self._conv_bn_relu(channels, c1, 1),
            self._conv_bn_relu(channels, c3_reduce, 1) + self._conv_bn_relu(c3_reduce, c3, 3),
            self._conv_bn_relu(channels, c5_reduce, 1) + self._conv_bn_relu(c5_reduce, c5, 5),
            [Pooling(3, 3, stride=1, pad=1)] + self._conv_bn_relu(channels, pool_proj, 1),
        ])


def _blocks_per_stage(depth, blocks_per_stage) -> int:
    if blocks_per_stage is not None:
        return check_integer("ResNet: blocks_per_stage", blocks_per_stage)
    depth = check_integer("ResNet: depth", depth)
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"ResNet: depth must be 6n + 2 (8, 14, 20, 32...), got {depth}; or give "
            "blocks_per_stage"
        )
    return (depth - 2) // 6


class ResNet(_NumberedNet):
    """ResNet for 28x28 inputs in the CIFAR layout of He et al. 2016 (book 8.2.3):

    conv 3x3 (w) - bn - relu - 3 stages of residual blocks (w, 2w, 4w filters; the first
    block of stages 2 and 3 halves the size with stride 2 and a 1x1 projection shortcut)
    - global avg pool - affine - softmax

    ``depth`` = 6n + 2 layers with n blocks a stage (20: ResNet-20, n = 3); or give
    ``blocks_per_stage`` = n directly (1 makes a cheap ResNet-8). ``width`` (w): 16.
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        depth=20,
        width=16,
        output_size=10,
        blocks_per_stage=None,
        weight_init_std="he",
        *,
        dtype=None,
        device="cpu",
    ):
        super().__init__(input_dim, weight_init_std, dtype, device)
        n = _blocks_per_stage(depth, blocks_per_stage)
        self.depth, self.width = 6 * n + 2, check_integer("ResNet: width", width)
        conv, bn, relu = self._conv_bn_relu(self.input_shape[0], self.width, 3)
        self._add("Conv", conv)
        self._add("BatchNorm", bn)
        self._add("Relu", relu)
        shape = self._feature_map(self.input_shape, conv)
        for stage in range(3):
            for k in range(n):
                stride = 2 if stage > 0 and k == 0 else 1
                block = self._residual_block(shape[0], self.width * 2**stage, stride)
                shape = self._feature_map(shape, block)
                self._add("Block", block)
        self._add("GlobalAvgPool", GlobalAvgPooling())
        self._add("Affine", self._affine(shape[0], output_size))
        self.last_layer = SoftmaxWithLoss()
        self._bind()

    def _residual_block(self, in_channels, out_channels, stride):
        conv1, bn1, _ = self._conv_bn_relu(in_channels, out_channels, 3, stride)
        conv2, bn2, _ = self._conv_bn_relu(out_channels, out_channels, 3)
        shortcut = None
        if stride != 1 or in_channels != out_channels:
            shortcut = self._conv_bn_relu(in_channels, out_channels, 1, stride)[:2]
        return ResidualBlock(conv1, bn1, conv2, bn2, shortcut)
