"""netem: the emulated network and the cluster it carries.

Cluster objects from real manifests (and the controllers that fill them in),
IPv4 addresses as ints, packets and flows, connection tracking, links with
the kernel's netem impairments (link.py, see README.md), nodes and their
routing tables (topology.py), the event simulator (sim.py) and its pcap writer. Imports
nothing from the other packages (DESIGN.md: netem <- proxy_modes <- ingress
<- kubenetem).
"""
