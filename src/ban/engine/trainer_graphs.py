"""``ban train``'s step as CUDA graphs (``--set cuda_graphs=true``): a VQA run on one GPU without the ≈ 1,000
kernel launches of an eager step.

The trainer looks at every step's loss and gradient norm on the host before it applies the update (a non-finite
step is never applied), so the step is two kinds of graph with that look between them:

- the gradients, one graph per batch shape (:class:`ban.engine.graphs.StepGraphs`): the gradient buffers zeroed,
  forward, loss, backward (accumulating into the same gradient buffers in every graph), gradient norm, score;
- the update, one graph: clipping and Adamax (:class:`ban.engine.optim.AdamaxUpdate`) with the learning rate read
  from a device tensor, so the epoch-wise schedule needs no new capture.

The gradient buffers are the parameters' ``.grad`` tensors, made by the first warm-up and never released (the
update graph reads them where its capture found them). Batches come from :func:`ban.engine.graphs.static_batch`:
boxes padded to a multiple of 4 and the packing rows made on the host from a host-side box mask, so a batch's
shapes are known without reading the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ban.engine.graphs import Inputs, StepGraphs, initialise_optimizer
from ban.engine.optim import AdamaxUpdate

GRAPH_INPUTS = ("features", "boxes", "box_mask", "questions", "targets", "rows")  # what the gradient graphs read
Gradients = Callable[[Inputs], tuple[Tensor, Tensor, Tensor]]  # batch → (loss sum [], score sum [], grad norm [])


class TrainingGraphs:
    """The trainer's step for ``model`` trained by ``optimizer`` (``torch.optim.Adamax``, ``capturable=True`` on a
    GPU), as graphs. ``gradients``: forward and backward on a batch of :data:`GRAPH_INPUTS`, capture-safe, with
    autocast's cast cache off → (loss sum, score sum, gradient norm). ``compile``: the update through
    ``torch.compile`` (compiled by the warm-up before its capture). ``capture=False`` runs the same steps eagerly
    (see :class:`ban.engine.graphs.StepGraphs`)."""

    def __init__(self, gradients: Gradients, model: nn.Module, optimizer: torch.optim.Adamax, max_grad_norm: float,
                 compile: bool = False, capture: bool = True) -> None:
        self.compute_gradients = gradients
        self.parameters = list(model.parameters())
        self.update = AdamaxUpdate(optimizer, max_grad_norm, compile=compile)
        self.gradient_graphs = StepGraphs(self._gradients, capture=capture)
        self.update_graph = StepGraphs(self._update, warmup_step=self._warm_update, warmup=1,
                                       prepare=lambda: initialise_optimizer(optimizer), capture=capture)

    def gradients(self, batch: Inputs) -> tuple[Tensor, Tensor, Tensor]:
        """Replay the gradient graph of ``batch``'s shapes (captured on first sight) → (loss sum [], score sum [],
        gradient norm []), valid until the next call; the gradients wait in the parameters' ``.grad``."""
        return self.gradient_graphs({name: batch[name] for name in GRAPH_INPUTS})

    def apply(self, grad_norm: Tensor) -> None:
        """Clip the waiting gradients by ``grad_norm`` [] and take Adamax's step (the update graph)."""
        self.update_graph({"grad_norm": grad_norm})

    def follow_learning_rate(self) -> None:
        """Make the update use the optimizer's learning rate (call after setting it; outside the graphs)."""
        self.update.follow_learning_rate()

    def _gradients(self, inputs: Inputs) -> tuple[Tensor, Tensor, Tensor]:
        held = [p.grad for p in self.parameters if p.grad is not None]
        if held:  # accumulate into the buffers the update graph reads, instead of allocating new ones
            torch._foreach_zero_(held)
        return self.compute_gradients(inputs)

    def _warm_update(self, inputs: Inputs) -> None:  # on scratch copies: the parameters stay as they are
        self.update.warm_up([p for p in self.parameters if p.grad is not None])

    def _update(self, inputs: Inputs) -> tuple[()]:
        self.update(inputs["grad_norm"])
        return ()
