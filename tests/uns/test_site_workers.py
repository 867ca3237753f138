"""The site model's context workers (`context.workers`): each edge node in exactly one partition, every
bad partition refused with the file, the line and what is wrong; no section: one service keeps all."""

from __future__ import annotations

import pytest

from uns.site import Partition, SiteConfigError, parse_site

SIGNALS = (
    "{execution: 'ns=2;s=E', mode: 'ns=2;s=M', part_count: 'ns=2;s=P', alarm_code: 'ns=2;s=A',"
    " estop: 'ns=2;s=S'}"
)
FOREIGN = (
    "{protocol: sparkplug, group: plant2, edge_node: ignition, signals: {execution: Exec, mode: Mode,"
    " part_count: Parts, alarm_code: Alarm, estop: EStop}}"
)


def site(workers: str = "") -> str:
    return f"""\
enterprise: acme
site: dayton
sparkplug: {{group_id: dayton, host_id: uns-host}}
areas:
  - name: machining
    lines:
      - name: mills
        cells:
          - name: cell-1
            machines:
              - {{id: m1, edge_node: edge-a, source: {{protocol: opcua, endpoint: 'opc.tcp://h:4840',
                  signals: {SIGNALS}}}}}
              - {{id: m2, edge_node: edge-b, source: {{protocol: opcua, endpoint: 'opc.tcp://h:4841',
                  signals: {SIGNALS}}}}}
              - {{id: m3, edge_node: edge-c, source: {{protocol: opcua, endpoint: 'opc.tcp://h:4842',
                  signals: {SIGNALS}}}}}
              - {{id: m4, source: {FOREIGN}}}
{workers}"""


CONTEXT = site().count("\n") + 1  # the line `context:` goes on
W1, W2, W3 = CONTEXT + 2, CONTEXT + 3, CONTEXT + 4  # the lines of the first, second and third worker

TWO = """\
context:
  workers:
    a: {edge_nodes: [edge-a, edge-b]}
    b: {edge_nodes: [edge-c, plant2/ignition], host_id: host-b}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SiteConfigError) as info:
        parse_site(text, "site.yaml")
    return info.value.problems


def test_without_workers_one_service_keeps_every_edge_node() -> None:
    s = parse_site(site())
    assert not s.partitioned
    [only] = s.partitions()
    assert only == Partition(
        "",
        "uns-host",
        frozenset({("dayton", "edge-a"), ("dayton", "edge-b"), ("dayton", "edge-c"), ("plant2", "ignition")}),
    )
    assert s.partition(None) == only
    assert s.primary_host("edge-a") == "uns-host"
    with pytest.raises(ValueError, match=r"no context\.workers"):
        s.partition("a")


def test_workers_split_the_edge_nodes_and_each_is_a_host_of_its_own() -> None:
    s = parse_site(site(TWO))
    a, b = s.partitions()
    assert (a.name, a.host_id, a.edge_nodes) == (
        "a",
        "uns-host-a",
        frozenset({("dayton", "edge-a"), ("dayton", "edge-b")}),
    )
    assert (b.host_id, b.edge_nodes) == ("host-b", frozenset({("dayton", "edge-c"), ("plant2", "ignition")}))
    assert [s.owner(m).name for m in s.machines] == ["a", "a", "b", "b"]
    hosts = [s.primary_host(e) for e in ("edge-a", "edge-b", "edge-c")]
    assert hosts == ["uns-host-a", "uns-host-a", "host-b"]
    assert s.partition("b") == b
    with pytest.raises(ValueError, match=r"say which one this is \(uns context --worker NAME\)"):
        s.partition(None)
    with pytest.raises(ValueError, match=r"no context worker 'c' in the site model \(its workers: a, b\)"):
        s.partition("c")


def test_a_group_is_kept_whole() -> None:
    workers = "context:\n  workers:\n    ours: {groups: [dayton]}\n    theirs: {groups: [plant2]}\n"
    s = parse_site(site(workers))
    ours, theirs = s.partitions()
    assert len(ours.edge_nodes) == 3
    assert theirs.edge_nodes == frozenset({("plant2", "ignition")})


def test_an_edge_node_in_two_workers_is_refused_naming_both() -> None:
    text = site(
        "context:\n  workers:\n    a: {edge_nodes: [edge-a, edge-b]}\n"
        "    b: {edge_nodes: [edge-b, edge-c], groups: [plant2]}\n"
    )
    assert problems(text) == [
        f"site.yaml:{W2}: context.workers: edge node dayton/edge-b is kept by workers 'a' and 'b':"
        " each edge node belongs to exactly one"
    ]
    # a group and an edge node of it in two workers is the same overlap
    text = site(
        "context:\n  workers:\n    a: {groups: [dayton]}\n    b: {edge_nodes: [edge-c, plant2/ignition]}\n"
    )
    assert problems(text) == [
        f"site.yaml:{W2}: context.workers: edge node dayton/edge-c is kept by workers 'a' and 'b':"
        " each edge node belongs to exactly one"
    ]


def test_unknown_and_unkept_edge_nodes_and_groups_are_refused() -> None:
    text = site(
        "context:\n  workers:\n"
        "    a: {edge_nodes: [edge-a, edge-x, plant9/ignition, a/b/c], groups: [nowhere]}\n"
    )
    found = problems(text)
    known = "its edge nodes: edge-a, edge-b, edge-c, plant2/ignition; one of another group as group/edge_node"
    assert found == [
        *(
            f"site.yaml:{W1}: context.workers.a.edge_nodes[{n}]: no edge node {bad!r} in the site model"
            f" ({known})"
            for n, bad in ((1, "edge-x"), (2, "plant9/ignition"), (3, "a/b/c"))
        ),
        f"site.yaml:{W1}: context.workers.a.groups[0]: no machine of the site model comes under group"
        " 'nowhere' (its groups: dayton, plant2)",
        f"site.yaml:{CONTEXT + 1}: context.workers: edge nodes dayton/edge-b, dayton/edge-c,"
        " plant2/ignition are kept by no worker (add each to one worker's edge_nodes)",
    ]


def test_bad_worker_fields_are_refused() -> None:
    text = site(
        "context:\n  workers:\n    a: {}\n    'b/c': {edge_nodes: [edge-a]}\n"
        "    d: {edge_nodes: [edge-b], typo: 1}\n"
    )
    assert problems(text) == [
        f"site.yaml:{W1}: context.workers.a: a worker keeps at least one edge node or group"
        " (edge_nodes, groups)",
        f"site.yaml:{W2}: context.workers.b/c.[key]: worker name 'b/c' must be non-empty and contain no '/',"
        " '+' or '#'",
        f"site.yaml:{W3}: context.workers.d.typo: unknown field (a typo?)",
    ]


def test_two_workers_with_one_host_id_are_refused() -> None:
    text = site(
        "context:\n  workers:\n    a: {edge_nodes: [edge-a, edge-b], host_id: h}\n"
        "    b: {edge_nodes: [edge-c, plant2/ignition], host_id: h}\n"
    )
    assert problems(text) == [
        f"site.yaml:{W2}: context.workers.b: host id 'h' is worker 'a''s already"
        " (each worker is a Sparkplug host of its own)"
    ]
