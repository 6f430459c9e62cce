"""The namespace harness itself: routed leaves, agents, NAT visible to servers, cleanup.

These use the real kernel (marker `kernel`); the rules loaded here are the
smallest that show the harness carries what the mode tests need.
"""

from __future__ import annotations

import pytest

from netem.netns import NetnsError, Topology, leftover_namespaces

pytestmark = pytest.mark.kernel

DNAT = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 172.30.0.1/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.180.0.2:8080
-A POSTROUTING -d 10.180.0.2/32 -j MASQUERADE
COMMIT
"""


def test_leaves_reach_each_other_through_the_node_and_see_nat() -> None:
    with Topology("ipt-h") as topo:
        node = topo.node(["192.168.0.2"])
        pod = topo.leaf("pod-a", ["10.180.0.2"])
        client = topo.leaf("client", ["203.0.113.10", "10.0.5.5"], default_route=True)
        pod.serve(8080)
        pod.serve(5353, "udp")
        direct = client.connect("10.180.0.2", 8080)
        assert (direct.status, direct.ident, direct.seen_ip) == ("ok", "pod-a", "203.0.113.10")
        udp = client.connect("10.180.0.2", 5353, "udp", src="10.0.5.5")
        assert (udp.status, udp.seen_ip, udp.server) == ("ok", "10.0.5.5", "10.180.0.2:5353")
        assert client.connect("10.180.0.2", 9).status == "refused"  # the pod's kernel answers RST
        # No rule for the service address yet: routed back out, nobody answers.
        assert client.connect("172.30.0.1", 80, timeout=0.3).status == "timeout"
        node.run(["iptables-restore"], input=DNAT)
        natted = client.connect("172.30.0.1", 80)
        # DNAT to the pod, masqueraded to the node address on lo.
        assert (natted.status, natted.ident, natted.seen_ip) == ("ok", "pod-a", "192.168.0.2")
        assert natted.server == "10.180.0.2:8080"  # the address the DNAT chose
        from_node = node.connect("10.180.0.2", 8080)
        assert from_node.seen_ip == "192.168.0.2"
        handle, first = client.open("172.30.0.1", 80)
        again = client.send(handle)
        assert again.ident == first.ident == "pod-a" and again.local == first.local
        many = client.connect_many("172.30.0.1", 80, count=50)
        assert [r.ident for r in many] == ["pod-a"] * 50
        names = [h.netns for h in topo.hosts.values()]
        assert all(n.startswith(topo.prefix) for n in names)
    assert leftover_namespaces("ipt-h") == []


def test_everything_is_removed_when_the_test_body_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), Topology("ipt-f") as topo:
        topo.node(["192.168.0.2"])
        leaf = topo.leaf("pod", ["10.180.0.9"])
        leaf.serve(80)
        raise RuntimeError("boom")
    assert leftover_namespaces("ipt-f") == []


def test_a_failing_command_names_itself() -> None:
    with Topology("ipt-e") as topo:
        node = topo.node(["192.168.0.2"])
        with pytest.raises(NetnsError, match="iptables-restore"):
            node.run(["iptables-restore"], input="*nat\n-A NOSUCHCHAIN -j ACCEPT\nCOMMIT\n")
