"""The public ManifoldGD code's manifold term written directly (D x D covariance + eigh per
sample): the independent reference that tests/test_manifoldgd.py checks the SVD step against
and experiments/bench_manifoldgd.py times."""

import torch


def direct_normal_step(x, clouds, k, tangent_dim, bandwidth, scale, ridge=1e-5):
    """The public code's manifold term, one sample at a time: D x D covariance + eigh."""
    out = []
    for xi, cloud in zip(x, clouds):
        dist = ((cloud - xi) ** 2).sum(dim=1).sqrt()
        idx = torch.topk(dist, k, largest=False).indices
        neigh = cloud[idx]
        mu = neigh.mean(dim=0)
        centred = neigh - mu
        cov = centred.T @ centred / (k - 1) + ridge * torch.eye(len(mu), dtype=x.dtype, device=x.device)
        values, vectors = torch.linalg.eigh(cov)
        u = vectors[:, torch.argsort(values, descending=True)][:, :tangent_dim]
        to_mu = xi - mu
        vec = -(to_mu - u @ (u.T @ to_mu))
        out.append(scale * torch.tanh(dist.min() / bandwidth) * vec / (vec.norm() + 1e-8))
    return torch.stack(out)
