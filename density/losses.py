"""GAN losses (reference note 19): non-saturating logistic G loss, logistic D loss, R1 penalty."""

import torch
import torch.nn.functional as F


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """mean softplus(-D(G(z))); d_fake (B, 1)."""
    return F.softplus(-d_fake).mean()


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """mean [softplus(D(fake)) + softplus(-D(real))]; both (B, 1)."""
    return (F.softplus(d_fake) + F.softplus(-d_real)).mean()


def r1_penalty(d_real: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """(gamma/2) · Σ_{b,t} ||∂ΣD(real)/∂real[b,t,:]||², summed over batch and frames (not averaged).

    d_real = D(real) computed from `real` (B, L, C) with requires_grad; the graph is kept for backward.
    """
    (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
    return 0.5 * gamma * grad.square().sum()
