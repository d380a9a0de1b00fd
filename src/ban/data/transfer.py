"""Host-to-device copies that do not wait for the device.

A copy from ordinary (pageable) host memory to a GPU first waits for every kernel already queued on the stream, and
a blocking one (``tensor.to("cuda")``, ``torch.tensor(..., device="cuda")``) then waits for the copy too: one such
copy while preparing a batch stalls the host until the previous training step has finished, so the next batch is
never prepared while the device works. From pinned memory the copy is queued like a kernel and the host goes on.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def host_to_device(value: Tensor | np.ndarray, device: torch.device) -> Tensor:
    """``value`` (a host tensor or array) on ``device``: staged in pinned memory and copied without waiting on a
    GPU (PyTorch keeps the pinned block until the copy is done), moved as it is elsewhere."""
    tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
