"""A tiny non-quadratic problem and hand-written optimizers shared by the SFPO tests.

Everything here is deliberately naive (plain tensors, explicit formulas) so that it is an
independent reference for ``torch.optim`` + :class:`sfpo_lab.algos.SFPO`.
"""

import torch
from torch import nn

DIM, N, ITERS = 5, 16, 3
LR = {"sgd": 0.1, "sgd_momentum": 0.05, "adamw": 0.05}


def make_batches(seed=0, iters=ITERS):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(iters):
        x = torch.randn(N, DIM, generator=g, dtype=torch.float64)
        y = torch.randint(0, 2, (N,), generator=g).double() * 2 - 1
        batches.append((x, y))
    return batches


def init_theta(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(DIM, generator=g, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)]


def loss_fn(theta, batch):
    """Logistic loss plus a quartic term: the gradient changes along any trajectory."""
    (w, b), (x, y) = theta, batch
    return nn.functional.softplus(-y * (x @ w + b)).mean() + 0.05 * (w**4).sum()


def grads(theta, batch):
    leaves = [t.detach().clone().requires_grad_() for t in theta]
    return [g.detach() for g in torch.autograd.grad(loss_fn(leaves, batch), leaves)]


def make_optimizer(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=LR[kind])
    if kind == "sgd_momentum":
        return torch.optim.SGD(params, lr=LR[kind], momentum=0.9)
    return torch.optim.AdamW(params, lr=LR[kind], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


class NaiveOptimizer:
    """SGD, SGD with momentum and AdamW written out from their textbook formulas."""

    def __init__(self, kind, n_params):
        self.kind, self.t = kind, 0
        self.m = [None] * n_params
        self.v = [None] * n_params

    def update(self, theta, g):
        self.t += 1
        lr, out = LR[self.kind], []
        for i, (p, gi) in enumerate(zip(theta, g, strict=True)):
            if self.kind == "sgd":
                out.append(p - lr * gi)
            elif self.kind == "sgd_momentum":
                self.m[i] = gi.clone() if self.m[i] is None else 0.9 * self.m[i] + gi
                out.append(p - lr * self.m[i])
            else:
                m = 0.1 * gi if self.m[i] is None else 0.9 * self.m[i] + 0.1 * gi
                v = 0.001 * gi**2 if self.v[i] is None else 0.999 * self.v[i] + 0.001 * gi**2
                self.m[i], self.v[i] = m, v
                m_hat, v_hat = m / (1 - 0.9**self.t), v / (1 - 0.999**self.t)
                out.append(p * (1 - lr * 0.01) - lr * m_hat / (v_hat.sqrt() + 1e-8))
        return out


def reference_sfpo(kind, K, alpha, slow, batches, theta=None):
    """Alg. 1 written naively: explicit fast loop, reposition formula, slow step."""
    theta = init_theta() if theta is None else theta
    opt = NaiveOptimizer(kind, len(theta))
    for batch in batches:
        if alpha == 0:
            theta = opt.update(theta, grads(theta, batch))
            continue
        theta0 = [t.clone() for t in theta]
        for _ in range(K):
            theta = opt.update(theta, grads(theta, batch))
        theta = [t0 + alpha * (tk - t0) for t0, tk in zip(theta0, theta, strict=True)]
        if slow:
            theta = opt.update(theta, grads(theta, batch))
    return theta


def make_params():
    return [nn.Parameter(t) for t in init_theta()]


def closure_for(params, optimizer, batch, log=None):
    def closure():
        optimizer.zero_grad()
        loss = loss_fn(params, batch)
        loss.backward()
        if log is not None:
            log.append([p.grad.detach().clone() for p in params])
        return loss

    return closure
