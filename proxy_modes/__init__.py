"""kube-proxy: the proxy's view of Services and endpoints, and one
sub-package per forwarding mode (userspace, iptables, ipvs, nftables), all
implementing the protocol in `proxy_modes.base`."""
