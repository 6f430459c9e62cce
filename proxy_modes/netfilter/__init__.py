"""Netfilter as the kernel runs it, shared by every mode that installs
iptables rules: the iptables mode itself, the IPVS mode (its remaining
KUBE-* rules with ipset matches) and the userspace mode (its portal
REDIRECT rules). `syntax` parses iptables-save text, `xt` holds the matches
and targets, `engine.Netfilter` walks the hooks with conntrack (compiling
chains via `compile`), and `cost` turns rules walked into the kernel's time.
A mode never imports another mode; they all import this."""
