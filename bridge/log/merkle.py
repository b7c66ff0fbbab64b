"""Merkle tree hashing and inclusion proofs as in RFC 6962 (Certificate Transparency).

Leaves are hashed with a 0x00 prefix and interior nodes with 0x01, so a leaf can never be
passed off as a node. Trees of any size are supported without duplicating leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha256

EMPTY_ROOT = sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def root_of_hashes(leaves: Sequence[bytes]) -> bytes:
    """Root over already-hashed leaves.

    Computed level by level: adjacent nodes are paired and an unpaired last node is carried
    up unchanged, which gives exactly RFC 6962's split at the largest power of two below n
    (the left subtree is always complete) without recursion or slicing."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        paired = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def merkle_root(items: Sequence[bytes]) -> bytes:
    return root_of_hashes([sha256(b"\x00" + item).digest() for item in items])


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path (sibling hashes, bottom-up) for leaf `index` among already-hashed leaves."""
    n = len(leaves)
    if not 0 <= index < n:
        raise IndexError(f"leaf {index} outside a tree of {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_path(leaves[:k], index), root_of_hashes(leaves[k:])]
    return [*inclusion_path(leaves[k:], index - k), root_of_hashes(leaves[:k])]


def inclusion_paths(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every leaf's audit path at once (as `inclusion_path` gives each), in O(n log n): level
    by level, a node's sibling joins the path of every leaf below it; a node carried up
    unpaired adds nothing."""
    paths: list[list[bytes]] = [[] for _ in leaves]
    position = list(range(len(leaves)))  # each leaf's ancestor on the current level
    level = list(leaves)
    while len(level) > 1:
        for leaf, node in enumerate(position):
            sibling = node ^ 1
            if sibling < len(level):
                paths[leaf].append(level[sibling])
            position[leaf] = node >> 1
        paired = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return paths


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """Recompute the root from a leaf hash and its audit path; None if the path is malformed
    (longer or shorter than the leaf's depth in a tree of `size`).

    RFC 9162 §2.1.3.2, in one loop: `last` is the index of the tree's last node on the current
    level; a node that is a right child, or the last node of its level, takes its sibling on
    the left (a last node without a sibling is carried up unchanged until it has one)."""
    if not 0 <= index < size:
        return None
    node, last = leaf, size - 1
    for sibling in path:
        if last == 0:
            return None  # the path goes on above the root
        if index & 1 or index == last:
            node = sha256(b"\x01" + sibling + node).digest()
            while not index & 1 and index:  # carried up until it is a right child
                index >>= 1
                last >>= 1
        else:
            node = sha256(b"\x01" + node + sibling).digest()
        index >>= 1
        last >>= 1
    return node if last == 0 else None


def verify_inclusion(
    data: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    return root_from_path(leaf_hash(data), index, size, path) == root
