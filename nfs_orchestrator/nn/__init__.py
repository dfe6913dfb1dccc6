"""The networks: candidate ops, cells, part fabrics, the supernet, derived networks, backbones
and honest counts (pure PyTorch)."""
