"""kube-proxy's IPVS mode: the kernel's IPVS schedulers, connection table and
persistence, the state kube-proxy programs, and ipvsadm's formats."""
