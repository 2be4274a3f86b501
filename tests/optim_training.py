"""The small regression the optimizer tests train on (CPU and CUDA), and how they compare runs."""

import torch


def problem(device="cpu", hidden=256, seed=1):
    """A 2-layer MLP and a smooth target; the model is built on the CPU (same weights everywhere)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 64))
    model = model.to(device)
    X = torch.randn(256, 64, device=device)
    Y = torch.tanh(X @ (torch.randn(64, 64, device=device) / 8))
    return model, X, Y


def train(model, X, Y, opt, steps, sched=None):
    """Full-batch MSE steps; the loss before each step."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), Y)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses


def rel_dist(a, b):
    """Distance between two models' parameters, relative to the norm of a's."""
    num = sum((x - y).norm() ** 2 for x, y in zip(a.parameters(), b.parameters())) ** 0.5
    return (num / sum(x.norm() ** 2 for x in a.parameters()) ** 0.5).item()
