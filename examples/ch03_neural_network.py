"""Chapter 3: neural networks -- activation functions, the forward pass, inference.

    python examples/ch03_neural_network.py [--device gpu] [--out DIR] [--full]
                                           [--weights DIR] [--data-dir DIR]

Writes ``activations.png`` (step, sigmoid and ReLU together: Figures 3-6, 3-7, 3-9) and
``predictions.png`` (test digits titled with the class the network infers); prints the
three-layer forward pass of 3.4.3 (the book's ``[0.3168, 0.6963]``) and the accuracy of the
book's pretrained ``sample_weight.pkl`` (3.6.2), computed one image at a time and in
batches of 100 (3.6.3), with both times and the batching speed-up.

Quick mode scores the first 2,000 test images; ``--full`` all of them.
"""

from __future__ import annotations

import sys

import numpy as np
from common import Timer, book_weights, class_name, load_data, main, make_parser, save

from xpnet.backend import as_numpy, namespace, to_device
from xpnet.functions import identity_function, relu, sigmoid, softmax, step_function
from xpnet.models import ThreeLayerNet, init_network, predict
from xpnet.plot import new_figure
from xpnet.trainer import Trainer


def plot_activations(args):
    """Step and sigmoid side by side (Figure 3-8), and ReLU (Figure 3-9)."""
    x = np.arange(-5.0, 5.0, 0.1)
    fig = new_figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(x, step_function(x), linestyle="--", label="step function")
    left.plot(x, sigmoid(x), label="sigmoid")
    left.set_ylim(-0.1, 1.1)
    left.set_title("step and sigmoid")
    right.plot(x, relu(x), color="tab:green", label="ReLU")
    right.plot(x, sigmoid(x), color="tab:orange", alpha=0.4, label="sigmoid")
    right.set_ylim(-1.0, 5.5)
    right.set_title("ReLU")
    for ax in (left, right):
        ax.set_xlabel("x")
        ax.set_ylabel("h(x)")
        ax.legend(loc="upper left")
    save(fig, args, "activations.png")


def three_layer_forward(xp):
    """3.4.3: the book's hand-written three-layer network, step by step."""
    network = {
        "W1": xp.array([[0.1, 0.3, 0.5], [0.2, 0.4, 0.6]]),
        "b1": xp.array([0.1, 0.2, 0.3]),
        "W2": xp.array([[0.1, 0.4], [0.2, 0.5], [0.3, 0.6]]),
        "b2": xp.array([0.1, 0.2]),
        "W3": xp.array([[0.1, 0.3], [0.2, 0.4]]),
        "b3": xp.array([0.1, 0.2]),
    }
    x = xp.array([1.0, 0.5])
    a1 = xp.dot(x, network["W1"]) + network["b1"]
    z1 = sigmoid(a1)
    a2 = xp.dot(z1, network["W2"]) + network["b2"]
    z2 = sigmoid(a2)
    y = identity_function(xp.dot(z2, network["W3"]) + network["b3"])
    print("3.4.3 forward pass: a1 =", as_numpy(a1), " z1 =", as_numpy(z1).round(8))
    print("  y =", as_numpy(y), " (the book: [0.31682708 0.69627909])")
    print("3.5 softmax([0.3, 2.9, 4.0]) =", as_numpy(softmax(xp.array([0.3, 2.9, 4.0]))))


def get_network(args):
    """The book's pretrained weights, or (without them) a ThreeLayerNet trained briefly.

    Returns the weights, the test set, the dataset's name and what the network is.
    """
    (x_train, t_train), (x_test, t_test), name = load_data(args, inference_only=True)
    path = book_weights(args, 3, name)
    if path is not None:
        network = init_network(path)  # through xpnet's restricted unpickler
        shapes = ", ".join(f"{k} {v.shape}" for k, v in sorted(network.items()))
        print(f"loaded {path.name}: {shapes}")
        return network, x_test, t_test, name, f"the book's {path.name}"
    if not len(x_train):  # the inference-only split of a 10,000-image folder
        (x_train, t_train), (x_test, t_test), name = load_data(args)
    x_train, t_train = x_train[:8000], t_train[:8000]
    print(f"training the 784-50-100-10 sigmoid network on {len(x_train)} {name} images for "
          "2 epochs instead")
    net = ThreeLayerNet(weight_init_std="xavier")
    Trainer(net, x_train, t_train, x_test, t_test, epochs=2, optimizer="Adam",
            optimizer_param={"lr": 0.01}, verbose=False).train()
    return dict(net.params), x_test, t_test, name, "784-50-100-10 network trained 2 epochs"


def plot_predictions(args, x, t, y, name, what, accuracy):
    """The first 20 test images, each titled with its inferred class; "true → inferred"
    in red where the network is wrong."""
    fashion = name.startswith("Fashion")
    fig = new_figure(figsize=(14 if fashion else 9, 3.0), layout="constrained")
    axes = fig.subplots(2, 10)
    sep = "\n" if fashion else " "  # clothing names need two lines
    for i, ax in enumerate(axes.flat):
        ax.imshow(x[i].reshape(28, 28), cmap="gray_r")
        ok = y[i] == t[i]
        inferred = class_name(y[i], name)
        label = inferred if ok else f"{class_name(t[i], name)} →{sep}{inferred}"
        ax.set_title(label, fontsize=7 if fashion else 9, color="k" if ok else "tab:red")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"3.6 inference on {name}: {what}, accuracy {accuracy:.1%}\n"
                 "inferred class; true → inferred in red where wrong", fontsize=10)
    save(fig, args, "predictions.png")


def run(args):
    xp = namespace(args.device)
    plot_activations(args)
    three_layer_forward(xp)

    network, x_host, t_host, name, what = get_network(args)
    n = len(x_host) if args.full else min(2000, len(x_host))
    network = {k: to_device(v, args.device) for k, v in network.items()}
    x, t = to_device(x_host[:n], args.device), to_device(t_host[:n], args.device)
    print(f"inference on {n} {name} test images, {args.device}")

    with Timer() as single:  # 3.6.2: one image at a time
        correct = 0
        for i in range(n):
            y = predict(network, x[i])
            correct += int(xp.argmax(y) == t[i])
    acc_single = correct / n

    batch_size = 100
    with Timer() as batched:  # 3.6.3: a hundred images per matrix product
        labels = []
        for i in range(0, n, batch_size):
            labels.append(xp.argmax(predict(network, x[i : i + batch_size]), axis=1))
        labels = as_numpy(xp.concatenate(labels))
    acc_batched = float(np.mean(labels == as_numpy(t)))

    print(f"Accuracy (one by one):    {acc_single:.4f}  in {single.seconds:.3f} s")
    print(f"Accuracy (batches of 100): {acc_batched:.4f}  in {batched.seconds:.3f} s")
    print(f"batching speed-up: {single.seconds / batched.seconds:.1f}x")
    plot_predictions(args, x_host, as_numpy(t_host[:n]).astype(int), labels, name, what,
                     acc_batched)


if __name__ == "__main__":
    parser = make_parser(3, "Chapter 3: neural networks", data=True, weights=True)
    sys.exit(main(run, parser))
