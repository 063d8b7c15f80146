"""Placement of queues over servers (burrow.hashing): what moves when servers come and go, subsets,
hash tags, and independence from the order servers are listed in."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from burrow.hashing import Placement, hash_key, normalise

SERVERS = [f"http://10.0.0.{i}:8080" for i in range(1, 5)]
#: 6,000 (account, queue) pairs over 1,000 accounts: each account's slots are the unit of chance.
PAIRS = [(f"acct-{a}", f"queue-{q}") for a in range(1000) for q in range(6)]


def placed(placement: Placement) -> dict[tuple[str, str], str]:
    return {(a, q): placement.server_for(a, q) for a, q in PAIRS}


def test_adding_a_fourth_server_moves_a_quarter_of_the_queues_all_to_it() -> None:
    before = placed(Placement(SERVERS[:3]))
    after = placed(Placement(SERVERS))
    moved = [pair for pair in PAIRS if before[pair] != after[pair]]
    assert abs(len(moved) / len(PAIRS) - 0.25) < 0.03, len(moved) / len(PAIRS)
    assert {after[pair] for pair in moved} == {SERVERS[3]}  # nothing moves between old servers
    share = Counter(after.values())
    assert all(abs(n / len(PAIRS) - 0.25) < 0.03 for n in share.values()), share


def test_removing_a_server_moves_only_its_queues() -> None:
    before = placed(Placement(SERVERS))
    after = placed(Placement([s for s in SERVERS if s != SERVERS[1]]))
    moved = {pair for pair in PAIRS if before[pair] != after[pair]}
    assert moved == {pair for pair in PAIRS if before[pair] == SERVERS[1]}
    assert SERVERS[1] not in after.values()


@pytest.mark.parametrize("subset_size", [1, 2, 3])
def test_an_account_spans_at_most_subset_size_servers(subset_size: int) -> None:
    servers = [f"http://q{i}.example:8080" for i in range(10)]
    placement = Placement(servers, subset_size)
    spans: Counter[int] = Counter()
    for account in (f"acct-{a}" for a in range(300)):
        used = {placement.server_for(account, f"queue-{q}") for q in range(40)}
        assert used <= set(placement.account_servers(account))
        assert len(placement.account_servers(account)) <= subset_size
        spans[len(used)] += 1
    assert max(spans) == subset_size  # the subset is used, not just one server of it
    assert sum(spans.values()) == 300


def test_placement_is_independent_of_server_order_and_spelling() -> None:
    reference = placed(Placement(SERVERS))
    shuffled = SERVERS[:]
    random.Random(7).shuffle(shuffled)
    assert placed(Placement(shuffled)) == reference
    respelled = [s.upper().replace("HTTP://", "http://") + "/" for s in reversed(SERVERS)]
    assert {pair: normalise(server) for pair, server in placed(Placement(respelled)).items()} == reference
    assert Placement(shuffled).account_servers("acct-1") == Placement(SERVERS).account_servers("acct-1")


@pytest.mark.parametrize(
    ("queue", "key"),
    [
        ("{orders}", "orders"),
        ("{orders}-dlq", "orders"),
        ("x{orders}y{other}", "orders"),
        ("{}orders", "{}orders"),  # an empty tag is no tag (Redis Cluster's rule)
        ("{orders", "{orders"),
        ("orders--dlq", "orders"),
        ("orders--dlq--x.fifo", "orders"),
        ("--orders", "--orders"),  # nothing before the --: no tag
        ("orders-dlq", "orders-dlq"),
        ("orders", "orders"),
    ],
)
def test_hash_key(queue: str, key: str) -> None:
    assert hash_key(queue) == key


def test_hash_tags_put_related_queues_together() -> None:
    placement = Placement([f"http://q{i}:8080" for i in range(8)], subset_size=5)
    tags_used = set()
    for n in range(300):
        account, tag = f"acct-{n % 7}", f"t{n}"
        braces = {placement.server_for(account, q) for q in (f"{{{tag}}}", f"{{{tag}}}-dlq", f"a{{{tag}}}b")}
        sqs = {placement.server_for(account, q) for q in (tag, f"{tag}--dlq", f"{tag}--retry.fifo")}
        assert len(braces) == 1 and len(sqs) == 1
        assert braces == sqs  # both spellings of a tag, and the untagged name, go together
        tags_used |= braces
    assert len(tags_used) == 8  # tags still spread over the servers


def test_one_server_holds_everything() -> None:
    placement = Placement(["http://only:8080"], subset_size=3)
    assert {placement.server_for(a, q) for a, q in PAIRS[:500]} == {"http://only:8080"}
    assert placement.account_servers("any") == ["http://only:8080"]


@pytest.mark.parametrize(
    ("servers", "subset_size"),
    [([], 3), (["http://a:1", "http://A:1/"], 3), (["a:1"], 3), (["http://a:1"], 0)],
)
def test_bad_server_lists_are_refused(servers: list[str], subset_size: int) -> None:
    with pytest.raises(ValueError):
        Placement(servers, subset_size)
