"""Which recorded call feeds which: the graph `check` reads off tensor identity."""

import collections

from keras_fanin._check._layers import ACTIVATION_LAYERS, LOOK_THROUGH, NORMALIZATION

# A normalization divides by sqrt(variance + epsilon): with a variance under 1%
# of its epsilon it scales the signal by about std / sqrt(epsilon) instead of
# resetting it (std 0.01 kernels in a BatchNorm net), so a chain goes on.
WEAK_NORMALIZATION = 0.01


def graph_of(calls, model_outputs):
    """`{call: [consumer calls]}` and the calls that feed a model output.

    Calls are the recorder's, in order. Read off tensor identity: a call
    consumes another whose output tensor it was given. When no edge is found
    at all (layers that copy their inputs), call order stands in for the graph.
    """
    producer = {}
    for node, (_, _, outputs) in enumerate(calls):
        for t in outputs:
            producer.setdefault(id(t), node)
    consumers = collections.defaultdict(list)
    for node, (_, inputs, _) in enumerate(calls):
        for t in inputs:
            source = producer.get(id(t))
            if source is not None and source != node and node not in consumers[source]:
                consumers[source].append(node)
    feeds_output = {producer[id(t)] for t in model_outputs if id(t) in producer}
    if not consumers and len(calls) > 1:
        consumers = {a: [a + 1] for a in range(len(calls) - 1)}
        feeds_output = {len(calls) - 1}
    return consumers, feeds_output


def follow(start, layers, consumers, feeds_output, kernel_layers, weak):
    """What a kernel layer's output reaches before the next layer with weights.

    Returns `(activation call or None, normalized, next kernel calls)`:
    the first activation layer reached through normalizations, dropouts and
    adds; whether every path meets a normalization before a kernel, a layer
    with other weights, or the model's output; and the kernel layers reached
    on paths with no normalization. `kernel_layers` holds the ids of the
    layers with kernels, `weak` the calls of normalizations that do not reset
    the scale (`WEAK_NORMALIZATION`): the signal goes on through them.
    """
    activation, normalized, kernels = None, start not in feeds_output, []
    reached = False
    seen = {start}
    # (node, still looking for the activation, past a normalization)
    frontier = collections.deque([(start, True, False)])
    while frontier:
        node, direct, past_norm = frontier.popleft()
        for nxt in consumers.get(node, []):
            if nxt in seen:
                continue
            seen.add(nxt)
            layer = layers[nxt]
            if direct and activation is None and isinstance(layer, ACTIVATION_LAYERS):
                activation = nxt
            if past_norm:
                if direct and isinstance(layer, LOOK_THROUGH):
                    frontier.append((nxt, True, True))
                continue
            reached = True
            if isinstance(layer, NORMALIZATION) and nxt not in weak:
                # The scale is reset here; only the activation search goes on.
                frontier.append((nxt, direct, True))
                continue
            if id(layer) in kernel_layers:
                kernels.append(nxt)
                normalized = False
            elif layer.trainable_weights and not isinstance(layer, NORMALIZATION):
                normalized = False  # weights with no fan rule (PReLU): opaque
            else:
                if nxt in feeds_output:
                    normalized = False
                frontier.append(
                    (nxt, direct and isinstance(layer, LOOK_THROUGH), False)
                )
    return activation, normalized and reached, kernels
