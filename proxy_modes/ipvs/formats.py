"""The IPVS state in the real tools' text formats, and the `ipvsadm -S` parser.

- `ipvsadm -Ln` (with `--stats` / `--rate`) and `ipvsadm -S -n`: restated
  from ipvsadm 1.31 (print_title, print_service_entry, print_largenum) and
  checked against the format strings in Debian's ipvsadm 1.31 binary. Like
  ipvsadm (without --nosort) services and servers are sorted with libipvs'
  comparators, which subtract addresses into a C `int` (so far-apart
  addresses compare by the wrapped difference), through glibc's qsort, a
  top-down merge sort; both are reproduced, wrap included.
- `ipvsadm -Lnc`: the connection table (/proc/net/ip_vs_conn through
  ipvsadm's print_conn).
- `ipset save`: ipset 7.x's save format; hash sets print a random
  `initval` on a real node, here one derived from the set name.
- `ip addr show kube-ipvs0`: the dummy device kube-proxy binds service
  addresses to (down, NOARP), each address a /32.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from netem.addr import int_to_ip, parse_ip
from netem.errors import RulesetError
from netem.packet import SCTP, TCP, UDP

from .rules import DUMMY_DEVICE, IPSet, VirtualServerSpec
from .schedulers import F_PERSISTENT, F_SCHED1, F_SCHED2, F_SCHED3, SCHEDULERS

if TYPE_CHECKING:
    from .engine import Conn, Service

IPVS_VERSION = "1.2.1"
CONN_TAB_SIZE = 4096  # 1 << CONFIG_IP_VS_TAB_BITS (12)
PROTO_LIST = {TCP: "TCP", UDP: "UDP", SCTP: "SCTP"}
PROTO_RULE = {TCP: "-t", UDP: "-u", SCTP: "--sctp-service"}
RULE_PROTO = {"-t": TCP, "--tcp-service": TCP, "-u": UDP, "--udp-service": UDP, "--sctp-service": SCTP}

T = TypeVar("T")


def c_int_diff(a: int, b: int) -> int:
    """`int r = a - b` for unsigned 32-bit a and b: the difference wrapped to a signed int."""
    r = (a - b) & 0xFFFFFFFF
    return r - (1 << 32) if r >= 1 << 31 else r


def glibc_msort(items: list[T], cmp: Callable[[T, T], int]) -> list[T]:
    """glibc's qsort (msort_with_tmp): split at n/2, sort both halves, merge
    taking from the left run while cmp(left, right) <= 0."""
    n = len(items)
    if n <= 1:
        return list(items)
    n1 = n // 2
    left, right = glibc_msort(items[:n1], cmp), glibc_msort(items[n1:], cmp)
    out: list[T] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if cmp(left[i], right[j]) <= 0:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    out.extend(left[i:])
    out.extend(right[j:])
    return out


def _cmp_services(s1: Service, s2: Service) -> int:
    """ipvs_cmp_services(): fwmark, family, protocol, address, port."""
    r = s1.proto - s2.proto
    if r:
        return r
    r = c_int_diff(s1.addr, s2.addr)
    if r:
        return r
    return s1.port - s2.port


def _cmp_dests(d1: Any, d2: Any) -> int:
    """ipvs_cmp_dests(): address, then port."""
    r = c_int_diff(d1.addr, d2.addr)
    return r if r else d1.port - d2.port


def sort_services(services: list[Service]) -> list[Service]:
    return glibc_msort(services, _cmp_services)


def sched_flags(sched: str, flags: int) -> str:
    """print_sched_flags(): sh/mh name their two flags, others say flag-N."""
    names = {"sh": ("sh-fallback", "sh-port"), "mh": ("mh-fallback", "mh-port")}.get(sched, ("flag-1", "flag-2"))
    out = []
    if flags & F_SCHED1:
        out.append(names[0])
    if flags & F_SCHED2:
        out.append(names[1])
    if flags & F_SCHED3:
        out.append("flag-3")
    return ",".join(out)


def largenum(i: int) -> str:
    """print_largenum() without --exact."""
    if i < 100_000_000:
        return f"{i:9d}"
    if i < 1_000_000_000:
        return f"{i // 1000:8d}K"
    if i < 100_000_000_000:
        return f"{i // 1_000_000:8d}M"
    if i < 100_000_000_000_000:
        return f"{i // 1_000_000_000:8d}G"
    return f"{i // 1_000_000_000_000:8d}T"


def _vname(svc: Service) -> str:
    return f"{int_to_ip(svc.addr)}:{svc.port}"


def _mask(netmask: int) -> str:
    return int_to_ip(netmask)


def service_stats(svc: Service) -> list[int]:
    totals = list(svc.stats)
    for d in svc.dests:
        totals = [a + b for a, b in zip(totals, d.stats, strict=True)]
    return totals


def list_services(services: list[Service], stats: bool = False, rate: bool = False) -> str:
    """`ipvsadm -Ln` (list_all with FMT_NUMERIC, plus FMT_STATS / FMT_RATE)."""
    out = [f"IP Virtual Server version {IPVS_VERSION} (size={CONN_TAB_SIZE})\n"]
    if stats:
        out.append(
            f"{'Prot LocalAddress:Port':<33} {'Conns':>8} {'InPkts':>8} {'OutPkts':>8} {'InBytes':>8} {'OutBytes':>8}\n"
            "  -> RemoteAddress:Port\n"
        )
    elif rate:
        out.append(
            f"{'Prot LocalAddress:Port':<33} {'CPS':>8} {'InPPS':>8} {'OutPPS':>8} {'InBPS':>8} {'OutBPS':>8}\n"
            "  -> RemoteAddress:Port\n"
        )
    else:
        out.append(
            "Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        )
    for svc in services:
        name = f"{PROTO_LIST.get(svc.proto, '?'):<4} {_vname(svc)}"[:33]
        if stats:
            out.append(f"{name:<33}" + "".join(largenum(v) for v in service_stats(svc)) + "\n")
        elif rate:
            out.append(f"{name:<33}" + largenum(0) * 5 + "\n")
        else:
            line = f"{name} {svc.sched_name}"
            flag_text = sched_flags(svc.sched_name, svc.flags)
            if flag_text:
                line += f" ({flag_text})"
            if svc.flags & F_PERSISTENT:
                line += f" persistent {svc.timeout}"
                if svc.netmask != 0xFFFFFFFF:
                    line += f" mask {_mask(svc.netmask)}"
            out.append(line + "\n")
        for d in glibc_msort(list(svc.dests), _cmp_dests):
            dname = d.text[:28]
            if stats:
                out.append(f"  -> {dname:<28}" + "".join(largenum(v) for v in d.stats) + "\n")
            elif rate:
                out.append(f"  -> {dname:<28} {0:8d} {0:8d} {0:8d}" + largenum(0) * 2 + "\n")
            else:
                out.append(f"  -> {dname:<28} {'Masq':<7} {d.weight:<6d} {d.active:<10d} {d.inactive:<10d}\n")
    return "".join(out)


def save(services: list[Service]) -> str:
    """`ipvsadm -S -n` (FMT_RULE): one -A per service, one -a per server."""
    out = []
    for svc in services:
        name = f"{PROTO_RULE.get(svc.proto, '-t')} {_vname(svc)}"
        line = f"-A {name} -s {svc.sched_name}"
        if svc.flags & F_PERSISTENT:
            line += f" -p {svc.timeout}"
            if svc.netmask != 0xFFFFFFFF:
                line += f" -M {_mask(svc.netmask)}"
        flag_text = sched_flags(svc.sched_name, svc.flags)
        if flag_text:
            line += f" -b {flag_text}"
        out.append(line + "\n")
        for d in glibc_msort(list(svc.dests), _cmp_dests):
            out.append(f"-a {name} -r {d.text} -m -w {d.weight}\n")
    return "".join(out)


def list_conns(conns: dict[tuple[int, ...], Conn], templates: dict[tuple[int, ...], Conn], now: float = 0.0) -> str:
    """`ipvsadm -Lnc`: templates and connections, as print_conn() shows them."""
    from .engine import TCP_STATE_NAMES

    out = ["IPVS connection entries\n", f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination\n"]
    seen: set[int] = set()
    for cp in list(templates.values()) + list(conns.values()):
        if id(cp) in seen or (not cp.template and cp.key != cp.flow):
            continue
        seen.add(id(cp))
        proto, src, sport, vaddr, vport = cp.flow
        left = max(0, int(cp.expires - now))
        state = TCP_STATE_NAMES[cp.state] if proto == TCP and not cp.template else ("NONE" if cp.template else "UDP")
        expire = f"{left // 60:02d}:{left % 60:02d}"
        source = f"{int_to_ip(src)}:{sport}"
        virtual = f"{int_to_ip(vaddr)}:{vport}"
        proto_text = PROTO_LIST.get(proto, "IP")
        out.append(f"{proto_text:<3} {expire:<6} {state:<11} {source:<18} {virtual:<18} {cp.dest.text}\n")
    return "".join(out)


def _initval(name: str) -> str:
    return f"{zlib.crc32(name.encode()):#010x}"


def ipset_save(sets: dict[str, IPSet]) -> str:
    """`ipset save` of kube-proxy's sets (entries sorted; a real node lists
    hash sets in bucket order)."""
    out = []
    for s in sets.values():
        if s.set_type == "bitmap:port":
            out.append(f"create {s.name} bitmap:port range 0-65535\n")
            entries = sorted(s.entries, key=int)
        else:
            out.append(
                f"create {s.name} {s.set_type} family inet hashsize 1024 maxelem 65536 bucketsize 12"
                f" initval {_initval(s.name)}\n"
            )
            entries = sorted(s.entries, key=_entry_key)
        out.extend(f"add {s.name} {e}\n" for e in entries)
    return "".join(out)


def _entry_key(entry: str) -> tuple[Any, ...]:
    head = entry.split(",", 1)
    try:
        return (parse_ip(head[0]), entry)
    except ValueError:
        return (0, entry)


def ip_addr_show(addresses: list[int], index: int = 5, mac: str = "b2:6e:3c:6d:41:8a") -> str:
    """`ip addr show kube-ipvs0`: the dummy device is never set up, so it is
    DOWN with qdisc noop; every address is a /32 of scope global."""
    out = [
        f"{index}: {DUMMY_DEVICE}: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default qlen 1000\n",
        f"    link/ether {mac} brd ff:ff:ff:ff:ff:ff\n",
    ]
    for ip in addresses:
        out.append(f"    inet {int_to_ip(ip)}/32 scope global {DUMMY_DEVICE}\n")
        out.append("       valid_lft forever preferred_lft forever\n")
    return "".join(out)


# --- reading `ipvsadm -S -n` -----------------------------------------------------

SavedDest = tuple[int, int, int, int, int]  # addr, port, weight, u_threshold, l_threshold


def parse_save(text: str, filename: str) -> list[tuple[VirtualServerSpec, list[SavedDest]]]:
    """Parse ipvsadm -R input: `-A` services and `-a` servers (numeric
    addresses). Returns the services in file order with their servers in
    file order. One clear error per bad line."""
    services: dict[tuple[int, int, int], tuple[VirtualServerSpec, list[SavedDest]]] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{filename}:{lineno}"
        words = line.split()
        if words[0] not in ("-A", "--add-service", "-a", "--add-server"):
            raise RulesetError(f"{where}: expected -A or -a (got {words[0]!r})")
        opts = _options(words, where)
        proto, addr, port = _service(opts, where)
        if words[0] in ("-A", "--add-service"):
            spec = VirtualServerSpec(proto, addr, port, opts.get("-s", "wlc"))
            _service_options(spec, opts, where)
            if spec.key in services:
                raise RulesetError(f"{where}: service already exists")
            services[spec.key] = (spec, [])
        elif words[0] in ("-a", "--add-server"):
            if (proto, addr, port) not in services:
                raise RulesetError(f"{where}: -a before its service's -A (Service not defined)")
            services[(proto, addr, port)][1].append(_dest(opts, port, where))
        else:
            raise RulesetError(f"{where}: expected -A or -a (got {words[0]!r})")
    return list(services.values())


_LONG = {
    "--scheduler": "-s",
    "--persistent": "-p",
    "--netmask": "-M",
    "--real-server": "-r",
    "--weight": "-w",
    "--u-threshold": "-x",
    "--l-threshold": "-y",
    "--sched-flags": "-b",
    "--masquerading": "-m",
    "--gatewaying": "-g",
    "--ipip": "-i",
}
_FLAG_OPTS = {"-m", "-g", "-i", "-A", "-a", "--add-service", "--add-server"}


def _options(words: list[str], where: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = _LONG.get(words[i], words[i])
        if w in _FLAG_OPTS:
            opts[w] = ""
            i += 1
            continue
        if w == "-p" and (i + 1 == len(words) or words[i + 1].startswith("-")):
            opts[w] = "300"  # ipvsadm's default persistence timeout
            i += 1
            continue
        if i + 1 >= len(words):
            raise RulesetError(f"{where}: option {words[i]} needs a value")
        opts[w] = words[i + 1]
        i += 2
    return opts


def _service(opts: dict[str, str], where: str) -> tuple[int, int, int]:
    for flag, proto in RULE_PROTO.items():
        if flag in opts:
            addr, port = _hostport(opts[flag], where)
            return proto, addr, port
    if "-f" in opts or "--fwmark-service" in opts:
        raise RulesetError(f"{where}: fwmark services are not supported (kube-proxy does not create them)")
    raise RulesetError(f"{where}: no -t/-u/--sctp-service address")


def _hostport(text: str, where: str) -> tuple[int, int]:
    host, _, port = text.rpartition(":")
    try:
        return parse_ip(host), int(port)
    except ValueError:
        raise RulesetError(f"{where}: not a numeric address:port: {text!r}") from None


def _service_options(spec: VirtualServerSpec, opts: dict[str, str], where: str) -> None:
    if spec.scheduler not in SCHEDULERS:
        raise RulesetError(f"{where}: unknown scheduler {spec.scheduler!r} (known: {', '.join(SCHEDULERS)})")
    if "-p" in opts:
        spec.flags |= F_PERSISTENT
        spec.timeout = _number(opts["-p"], where, "-p")
    if "-M" in opts:
        try:
            spec.netmask = parse_ip(opts["-M"])
        except ValueError:
            raise RulesetError(f"{where}: bad netmask {opts['-M']!r}") from None
    for flag in filter(None, opts.get("-b", "").split(",")):
        bit = {"flag-1": F_SCHED1, "flag-2": F_SCHED2, "flag-3": F_SCHED3}.get(flag)
        if bit is None and flag.startswith(spec.scheduler + "-"):
            bit = {"fallback": F_SCHED1, "port": F_SCHED2}.get(flag.split("-", 1)[1])
        if bit is None:
            raise RulesetError(f"{where}: incompatible scheduler flag {flag!r} for {spec.scheduler}")
        spec.flags |= bit


def _dest(opts: dict[str, str], vport: int, where: str) -> SavedDest:
    if "-r" not in opts:
        raise RulesetError(f"{where}: -a without -r server-address")
    text = opts["-r"]
    if ":" in text:
        addr, port = _hostport(text, where)
    else:
        addr, port = _hostport(f"{text}:{vport}", where)
    if "-g" in opts or "-i" in opts:
        raise RulesetError(f"{where}: only masquerading (-m) servers are supported, as kube-proxy creates")
    weight = _number(opts.get("-w", "1"), where, "-w")
    return (addr, port, weight, _number(opts.get("-x", "0"), where, "-x"), _number(opts.get("-y", "0"), where, "-y"))


def _number(text: str, where: str, opt: str) -> int:
    if not text.isdigit():
        raise RulesetError(f"{where}: {opt} wants a number (got {text!r})")
    return int(text)
