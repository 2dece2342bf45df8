"""Adam without torch.optim's per-step Python overhead, for the batch-32 training loop.

Why: at batch 32 torch.optim.Adam's bookkeeping costs as much as its fused kernel; calling the
kernel directly keeps the same arithmetic (so the same weights) at half the cost.
"""

from __future__ import annotations

import torch


class FusedAdam:
    """Adam with torch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay) through the kernel
    `torch.optim.Adam(fused=True)` calls, minus its per-step Python bookkeeping (as costly as the
    kernel itself at batch 32) and its torch._dynamo import. Reads each parameter's `.grad`; falls
    back to torch.optim.Adam on builds without the kernel."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, float(lr), betas, eps
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.step_count = torch.zeros((), dtype=torch.float32)  # shared: the kernel only reads it
        self.fallback = None if hasattr(torch, "_fused_adam_") else torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter from its `.grad`."""
        if self.fallback is not None:  # pragma: no cover - torch builds without the fused kernel
            self.fallback.step()
            return
        self.step_count += 1
        torch._fused_adam_(
            self.params, [p.grad for p in self.params], self.exp_avgs, self.exp_avg_sqs, [],
            [self.step_count] * len(self.params),
            lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
            amsgrad=False, maximize=False,
        )
