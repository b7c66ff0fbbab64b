"""RFC 6962 Merkle roots and inclusion proofs of the settlement log."""

from __future__ import annotations

from hashlib import sha256

import pytest

from bridge.log.merkle import (
    EMPTY_ROOT,
    inclusion_path,
    leaf_hash,
    merkle_root,
    node_hash,
    root_from_path,
    verify_inclusion,
)

SIZES = range(34)


def reference_root(items: list[bytes]) -> bytes:
    """MTH from RFC 6962 section 2.1, written out literally."""
    n = len(items)
    if n == 0:
        return sha256(b"").digest()
    if n == 1:
        return sha256(b"\x00" + items[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return sha256(b"\x01" + reference_root(items[:k]) + reference_root(items[k:])).digest()


def reference_path(items: list[bytes], m: int) -> list[bytes]:
    """PATH(m, D[n]) from RFC 6962 section 2.1.1."""
    n = len(items)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*reference_path(items[:k], m), reference_root(items[k:])]
    return [*reference_path(items[k:], m - k), reference_root(items[:k])]


def items_of(size: int) -> list[bytes]:
    return [f"entry-{i}".encode() for i in range(size)]


def hashed(items: list[bytes]) -> list[bytes]:
    return [leaf_hash(item) for item in items]


@pytest.mark.parametrize("size", SIZES)
def test_root_matches_rfc6962_reference(size: int) -> None:
    """The root of every tree size 0..33 equals the literal RFC 6962 MTH."""
    items = items_of(size)
    assert merkle_root(items) == reference_root(items)


def test_empty_tree_root_is_hash_of_nothing() -> None:
    """An empty tree's root is SHA-256 of the empty string."""
    assert merkle_root([]) == EMPTY_ROOT == sha256(b"").digest()


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    """A leaf over two concatenated hashes differs from the node over those hashes."""
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert leaf_hash(left + right) != node_hash(left, right)


def test_root_depends_on_leaf_order() -> None:
    """Swapping two leaves changes the root."""
    assert merkle_root([b"a", b"b", b"c"]) != merkle_root([b"b", b"a", b"c"])


@pytest.mark.parametrize("size", range(1, 34))
def test_inclusion_path_matches_reference_and_verifies_for_every_index(size: int) -> None:
    """Every leaf's audit path is the RFC 6962 PATH and proves inclusion under the root."""
    items = items_of(size)
    leaves = hashed(items)
    root = merkle_root(items)
    for index, item in enumerate(items):
        path = inclusion_path(leaves, index)
        assert path == reference_path(items, index)
        assert verify_inclusion(item, index, size, path, root)


@pytest.mark.parametrize("size", [2, 3, 7, 8, 13, 33])
def test_inclusion_fails_for_a_wrong_leaf(size: int) -> None:
    """A proof does not verify for different leaf data."""
    items = items_of(size)
    root = merkle_root(items)
    for index in range(size):
        path = inclusion_path(hashed(items), index)
        assert not verify_inclusion(b"forged", index, size, path, root)


@pytest.mark.parametrize("size", [2, 3, 7, 8, 13, 33])
def test_inclusion_fails_for_a_wrong_index(size: int) -> None:
    """A proof for one index does not verify at any other index."""
    items = items_of(size)
    root = merkle_root(items)
    for index in range(size):
        path = inclusion_path(hashed(items), index)
        for other in range(size):
            if other != index:
                assert not verify_inclusion(items[index], other, size, path, root)


@pytest.mark.parametrize("size", [2, 5, 16, 33])
def test_inclusion_fails_for_a_wrong_root(size: int) -> None:
    """A proof does not verify against the root of a different tree."""
    items = items_of(size)
    other_root = merkle_root([*items[:-1], b"changed"])
    for index in range(size):
        path = inclusion_path(hashed(items), index)
        assert not verify_inclusion(items[index], index, size, path, other_root)


@pytest.mark.parametrize("size", [2, 5, 16, 33])
def test_inclusion_fails_for_a_tampered_path(size: int) -> None:
    """Flipping a byte of any path element, or dropping or adding one, breaks the proof."""
    items = items_of(size)
    root = merkle_root(items)
    for index in range(size):
        path = inclusion_path(hashed(items), index)
        for position in range(len(path)):
            tampered = list(path)
            tampered[position] = bytes([path[position][0] ^ 1]) + path[position][1:]
            assert not verify_inclusion(items[index], index, size, tampered, root)
        assert not verify_inclusion(items[index], index, size, path[:-1], root)
        assert not verify_inclusion(items[index], index, size, [*path, root], root)


def test_inclusion_fails_for_a_wrong_tree_size() -> None:
    """The last leaf's proof in a tree of 13 does not verify when claimed for 12 or 14."""
    items = items_of(13)
    root = merkle_root(items)
    path = inclusion_path(hashed(items), 12)
    assert verify_inclusion(items[12], 12, 13, path, root)
    assert not verify_inclusion(items[12], 12, 12, path, root)
    assert not verify_inclusion(items[12], 12, 14, path, root)


def test_out_of_range_index_has_no_path_and_no_root() -> None:
    """Asking for a leaf outside the tree raises; recomputing from one gives None."""
    leaves = hashed(items_of(4))
    with pytest.raises(IndexError):
        inclusion_path(leaves, 4)
    with pytest.raises(IndexError):
        inclusion_path(leaves, -1)
    assert root_from_path(leaves[0], 4, 4, []) is None
    assert root_from_path(leaves[0], -1, 4, []) is None


def test_single_leaf_tree_has_empty_path() -> None:
    """In a tree of one, the leaf hash is the root and the path is empty."""
    assert inclusion_path([leaf_hash(b"only")], 0) == []
    assert verify_inclusion(b"only", 0, 1, [], merkle_root([b"only"]))


def reference_root_from_path(node: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    """The root from a leaf hash and its audit path by RFC 6962's recursive split (the path
    is consumed from its top end); None when the path is too short or too long."""
    if size == 1:
        return node if not path else None
    if not path:
        return None
    k = 1
    while k * 2 < size:
        k *= 2
    path = list(path)
    sibling = path.pop()
    if index < k:
        inner = reference_root_from_path(node, index, k, path)
        return None if inner is None else node_hash(inner, sibling)
    inner = reference_root_from_path(node, index - k, size - k, path)
    return None if inner is None else node_hash(sibling, inner)


@pytest.mark.parametrize("size", range(1, 70))
def test_root_from_path_agrees_with_the_recursive_split_on_good_and_bad_paths(size: int) -> None:
    """For every leaf of every tree up to 69 leaves, the root from its path (and from the
    path cut short, lengthened, or another leaf's path) is what the recursive split gives."""
    leaves = hashed(items_of(size))
    root = reference_root(items_of(size))
    for index in range(size):
        path = reference_path(items_of(size), index)
        assert root_from_path(leaves[index], index, size, path) == root
        candidates = [path[:-1], [*path, root], [root, *path], path[1:]]
        candidates += [reference_path(items_of(size), (index + 1) % size)]
        for other in candidates:
            expected = reference_root_from_path(leaves[index], index, size, other)
            assert root_from_path(leaves[index], index, size, other) == expected
            if len(other) != len(path):
                assert expected is None
