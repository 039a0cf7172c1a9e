"""LARC (You, Gitman & Ginsburg 2017, "Large batch training of convolutional networks"), the optimiser SwAV
trains with: SGD whose gradient is first rescaled, parameter by parameter, by a trust ratio, so each tensor's
step is a fixed fraction of its norm whatever the scale of its gradient.

The seed wraps torch's SGD (momentum 0.9) in apex's LARC, scaling mode (clip=False), trust coefficient 0.001.
No maintained package on the registry does exactly that: timm's Lars adds the weight decay even where a norm is
0, lightly's and Lightning bolts' LARS skip the scaling where the weight decay is 0, pytorch_optimizer's skips
1-D parameters, torchlars is an unmaintained CUDA build. So it is written here, as torch's SGD with a step that
rescales the gradients first: the state, and so a checkpoint's optimiser state, is SGD's.
"""
import torch


class LARC(torch.optim.SGD):
    """SGD with LARC's gradient scaling (apex's LARC with clip=False).

    At every step, for every parameter w with a gradient g in a group of weight decay wd (eta: the trust
    coefficient):
        ||w|| > 0 and ||g|| > 0:   a = eta ||w|| / (||g|| + wd ||w|| + 1e-8),  g <- (g + wd w) a
        otherwise:                 g unchanged (no weight decay either)
    then SGD's momentum step with its own weight decay off. The learning rate does not enter a (clip=False):
    the step is lr * a * (g + wd w) through the momentum buffer. As in apex, p.grad holds the rescaled gradient
    after the step.

    Parameter groups keep their own lr and weight_decay, and any other keys (recipes' "base_lr"); a group with
    "larc": False takes the plain SGD step, its weight decay included.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, fused=None):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
        # An attribute, not a group key, so that the state_dict is exactly SGD's (SGD's loads into LARC and back).
        self.trust_coefficient = trust_coefficient
        self.eps = 1e-8

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        adapted = [group for group in self.param_groups if group.get("larc", True)]
        decays = [group["weight_decay"] for group in adapted]
        for group, weight_decay in zip(adapted, decays):
            self._rescale([p for p in group["params"] if p.grad is not None], weight_decay)
            group["weight_decay"] = 0.0      # already in the rescaled gradient
        try:
            super().step()
        finally:
            for group, weight_decay in zip(adapted, decays):
                group["weight_decay"] = weight_decay
        return loss

    def _rescale(self, params, weight_decay):
        """Every parameter's gradient g <- (g + wd w) a in place, or left as it is where ||w|| or ||g|| is 0.

        Batched over the tensors of one device and dtype with foreach kernels (a Python loop over ResNet-50's 161
        tensors is launch-bound on a GPU: bench/swav_costs.py), and each choice made by torch.where on the device
        rather than tested on the host: no synchronisation.
        """
        kinds = {}
        for p in params:
            kinds.setdefault((p.device, p.dtype), []).append(p)
        for ws in kinds.values():
            gs = [p.grad for p in ws]
            w_norm, g_norm = torch.stack(torch._foreach_norm(ws)), torch.stack(torch._foreach_norm(gs))
            scaled = (w_norm > 0) & (g_norm > 0)
            ratio = self.trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + self.eps)
            decay = scaled.to(w_norm.dtype) * weight_decay          # wd, or 0 where not scaled
            torch._foreach_add_(gs, torch._foreach_mul(ws, list(decay.unbind())))
            torch._foreach_mul_(gs, list(torch.where(scaled, ratio, 1.0).unbind()))
