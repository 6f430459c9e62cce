"""kube-proxy's userspace mode: portal rules, LoadBalancerRR, and a real proxy."""
