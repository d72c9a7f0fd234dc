"""Host-to-device copies that do not block the host.

A copy from pageable host memory (``torch.tensor(values, device=cuda)``, ``cpu_tensor.to(cuda)``)
waits until the device has the data: a host synchronisation. From pinned memory the copy is
queued on the current stream and returns at once; torch's caching host allocator keeps the
pinned block until that copy has run, so the source may be dropped right away.
"""

from __future__ import annotations

import numpy as np
import torch


def upload(data: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``data`` (a host array or CPU tensor) on ``device``, queued on its current stream when it is CUDA."""
    tensor = torch.from_numpy(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else data
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
