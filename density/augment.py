"""ADA-style augmentation of (real, fake) feature batches with an adaptive probability p (reference notes 21, 22).

The same p is the augmentation probability and the D-update skip probability of the training loop.
The draws come in the order of reference notes 21, 22: five flags from the torch generator (one
`torch.rand(5)`), then (per fired flag, in flag order) noise, scale, frame-swap index, and the mixing draws
(lengths and starts from python `random`, weights from torch). That is the reference's order, not its numbers: a
run seeded like the reference does not see the same augmentations (the generators reach this point in other
states, the scale gains are drawn on the CPU whatever the device, and with normalize_features the noise is per
channel), and no test compares them with the reference's.
"""

import random

import torch

N_FLAGS = 5  # f0 noise, f1 unused, f2 scale, f3 frame swap (no-op), f4 real/fake mixing
SCALE_STD = 0.05  # f2: per-sample gain 1 + 0.05*eps
ADA_TARGET = 0.6  # target mean sign(D(real)); the running ratio r_t starts here
ADA_FAST_RATIO = 0.98  # above this D is almost always sure of the reals: raise p quickly
ADA_FAST_ADJUST = 0.05  # p step when r_t > ADA_FAST_RATIO
P_MIN, P_MAX = 1e-8, 1 - 1e-8


class Augmenter:
    """Augment (real, fake) pairs of shape (B, L, C) and adapt p from sign(D(real_aug)).

    noise_std: 0.05 for HuBERT/wav features, 0.2 for log-mels (a (C,) tensor for normalised features: 0.2 / std).
    ada_n: D phases per p update. adapt=False keeps p fixed (r_t is still measured).
    Frame swap (flag 3) keeps the reference behaviour: it draws its indices but changes nothing (reference note 21).
    """

    def __init__(self, noise_std, p=0.05, ada_n=6, ada_adjust=0.005, adapt=True):
        self.noise_std = noise_std
        self.p = p
        self.adapt = adapt
        self.ada_n = ada_n
        self.ada_adjust = ada_adjust
        self.r_t = ADA_TARGET
        self.n_acc = 0
        self.acc = torch.zeros(2, dtype=torch.float64)  # [sum of sign(D(real)), element count]

    def __call__(self, real, fake):
        """real, fake: (B, L, C) -> augmented copies; mixed-in fake segments carry no gradient to G."""
        if real.ndim != 3 or real.shape != fake.shape:
            raise ValueError(
                f"real and fake must be (B, L, C) of one shape, got {tuple(real.shape)} and {tuple(fake.shape)}"
            )
        B, L, _ = real.shape
        flags = (torch.rand(N_FLAGS) < self.p).tolist()
        if flags[0]:
            real = real + torch.randn_like(real) * self.noise_std
            fake = fake + torch.randn_like(fake) * self.noise_std
        if flags[2]:
            gain = 1 + SCALE_STD * torch.randn(B, 2)
            real = real * gain[:, 0, None, None].to(real)
            fake = fake * gain[:, 1, None, None].to(fake)
        if flags[3]:
            torch.randint(0, L, (B,))  # reference draws swap indices, then copies into a temporary only
        if flags[4]:
            real, fake = self._mix(real, fake)
        return real, fake

    @staticmethod
    def _mix(real, fake):
        """Blend a random fake segment into each real row, then a real segment into each fake row."""
        B, L, _ = real.shape
        real, fake = real.clone(), fake.clone()
        fake_det = fake.detach()  # shares storage: row b is read before it is written
        len1 = [random.randint(0, L // 2) for _ in range(B)]
        a1 = [random.randint(0, L - n - 1) for n in len1]
        a2 = [random.randint(0, L - n - 1) for n in len1]
        r = torch.rand(B, 2).tolist()
        len2 = [random.randint(0, L // 2) for _ in range(B)]
        a3 = [random.randint(0, L - n - 1) for n in len2]
        a4 = [random.randint(0, L - n - 1) for n in len2]
        for b in range(B):
            n, s, t, w = len1[b], a1[b], a2[b], r[b][0]
            real[b, s : s + n] = (1 - w) * real[b, s : s + n] + w * fake_det[b, t : t + n]
            n, s, t, w = len2[b], a3[b], a4[b], r[b][1]
            fake[b, s : s + n] = (1 - w) * real[b, s : s + n] + w * fake_det[b, t : t + n]
        return real, fake

    def accumulate(self, d_real, all_sum=None):
        """Add sign(D(real_aug)) of one D phase; every ada_n calls update r_t and p.

        all_sum: optional in-place sum over ranks, so every rank holds the same p.
        """
        self.acc = self.acc.to(d_real.device)
        self.acc[0] += torch.sign(d_real.detach()).sum().double()
        self.acc[1] += d_real.numel()
        self.n_acc += 1
        if self.n_acc < self.ada_n:
            return
        if all_sum is not None:
            all_sum(self.acc)
        self.r_t = (self.acc[0] / self.acc[1]).item()
        if self.adapt:
            if self.r_t > ADA_FAST_RATIO:
                self.p += ADA_FAST_ADJUST
            elif self.r_t > ADA_TARGET:
                self.p += self.ada_adjust
            elif self.r_t < ADA_TARGET:
                self.p -= self.ada_adjust
            self.p = min(max(self.p, P_MIN), P_MAX)
        self.acc.zero_()
        self.n_acc = 0

    def state_dict(self):
        return {
            "p": self.p,
            "r_t": self.r_t,
            "n_acc": self.n_acc,
            "sign_sum": self.acc[0].item(),
            "count": self.acc[1].item(),
        }

    def load_state_dict(self, state):
        self.p, self.r_t, self.n_acc = float(state["p"]), float(state["r_t"]), int(state["n_acc"])
        self.acc = torch.tensor([state["sign_sum"], state["count"]], dtype=torch.float64)
