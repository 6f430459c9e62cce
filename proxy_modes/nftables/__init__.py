"""kube-proxy's nftables mode: the `kube-proxy` table (rules.py), an evaluator of
the nft rules it holds (engine.py), and the real kernel's `nft` (kernel.py)."""
