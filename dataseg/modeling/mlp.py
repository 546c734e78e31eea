"""A plain multi-layer perceptron, shared by the mask head and the class head."""

from torch import nn
from torch.nn import functional as F

__all__ = ["MLP"]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (``num_layers=1``: one linear)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"An MLP needs at least one layer, got num_layers={num_layers}.")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
