"""The kernel hash functions the IPVS schedulers use, bit for bit.

- `hash_32(val, bits)`: include/linux/hash.h, the multiplicative hash with
  GOLDEN_RATIO_32 (0x61C88647) keeping the top `bits` bits. The sh and dh
  schedulers bucket addresses with it (ip_vs_sh_hashkey, ip_vs_dh_hashkey).
- `hsiphash(data, key)`: lib/siphash.c. On 64-bit kernels "HalfSipHash-1-3"
  is really SipHash-1-3 with 64-bit key words and a 32-bit result (the
  `BITS_PER_LONG == 64` branch); the mh (Maglev) scheduler hashes with it.
  We follow the 64-bit kernel, where Kubernetes nodes run; a 32-bit kernel
  would build different Maglev tables.

Python ints are unbounded, so every step masks to the C width explicitly.
"""

from __future__ import annotations

GOLDEN_RATIO_32 = 0x61C88647
M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF

# SipHash's initialisation constants ("somepseudorandomlygeneratedbytes").
_C0, _C1, _C2, _C3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573


def hash_32(val: int, bits: int) -> int:
    """hash_32_generic(): (val * GOLDEN_RATIO_32) mod 2^32, top `bits` bits."""
    return ((val * GOLDEN_RATIO_32) & M32) >> (32 - bits)


def _rol(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & M64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    """SIPHASH_PERMUTATION: one SipRound on 64-bit words."""
    v0 = (v0 + v1) & M64
    v1 = _rol(v1, 13) ^ v0
    v0 = _rol(v0, 32)
    v2 = (v2 + v3) & M64
    v3 = _rol(v3, 16) ^ v2
    v0 = (v0 + v3) & M64
    v3 = _rol(v3, 21) ^ v0
    v2 = (v2 + v1) & M64
    v1 = _rol(v1, 17) ^ v2
    v2 = _rol(v2, 32)
    return v0, v1, v2, v3


def hsiphash(data: bytes, key: tuple[int, int]) -> int:
    """__hsiphash_aligned() of a 64-bit kernel: one round per 8-byte word,
    the tail and length in the last word, three finalisation rounds, and
    the 64-bit result truncated to the u32 the function returns."""
    k0, k1 = key
    v0, v1, v2, v3 = _C0 ^ k0, _C1 ^ k1, _C2 ^ k0, _C3 ^ k1
    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return (v0 ^ v1 ^ v2 ^ v3) & M32


def hsiphash_u32(value: int, key: tuple[int, int]) -> int:
    """hsiphash(&v, sizeof(v), key) for an `unsigned int v` on a
    little-endian machine: the four bytes of v, least significant first."""
    return hsiphash((value & M32).to_bytes(4, "little"), key)
