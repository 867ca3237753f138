"""The site model: the example loads; bad files give errors with file, line and field."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from uns.site import SiteConfigError, load_site, parse_site
from unscli.cli import DEFAULT_SITE

GOOD = """\
enterprise: acme
site: dayton
sparkplug:
  group_id: dayton
areas:
  - name: machining
    lines:
      - name: mills
        cells:
          - name: cell-1
            machines:
              - id: vf2-01
                source:
                  protocol: opcua
                  endpoint: opc.tcp://127.0.0.1:4840
                  signals: {execution: "ns=2;s=E", mode: "ns=2;s=M", part_count: "ns=2;s=P",
                            alarm_code: "ns=2;s=A", estop: "ns=2;s=S"}
"""


def test_the_example_site_loads() -> None:
    site = load_site(DEFAULT_SITE)
    assert len(site.machines) >= 6
    assert str(site.machine("vf2-01").path) == "acme/dayton/machining/mills/cell-1/vf2-01"
    assert set(site.edge_nodes()) == {"edge-machining", "edge-finishing"}


def test_a_minimal_site_loads_with_defaults() -> None:
    site = parse_site(GOOD)
    [m] = site.machines
    assert m.edge_node == "edge1"
    assert site.host_id == "uns-host"


def problems(text: str) -> list[str]:
    with pytest.raises(SiteConfigError) as err:
        parse_site(text, "plant.yaml")
    return err.value.problems


def test_unknown_key_names_file_line_and_field() -> None:
    text = GOOD.replace(
        "              - id: vf2-01\n", "              - id: vf2-01\n                nmae: typo\n"
    )
    assert problems(text) == [
        "plant.yaml:13: areas[0].lines[0].cells[0].machines[0].nmae: unknown field (a typo?)"
    ]


def test_wrong_type_names_file_line_and_field() -> None:
    text = GOOD.replace(
        "endpoint: opc.tcp://127.0.0.1:4840",
        "endpoint: opc.tcp://127.0.0.1:4840\n                  publishing_interval_ms: fast",
    )
    [p] = problems(text)
    assert p.startswith(
        "plant.yaml:16: areas[0].lines[0].cells[0].machines[0].source.publishing_interval_ms: "
    )
    assert "integer" in p


def test_missing_field_and_missing_signal() -> None:
    text = GOOD.replace("sparkplug:\n  group_id: dayton\n", "").replace('estop: "ns=2;s=S"', 'program: "x"')
    found = problems(text)
    assert "plant.yaml:1: sparkplug: Field required" in found
    assert any(p.startswith("plant.yaml:14: ") and "missing required signals: estop" in p for p in found)


def test_duplicate_machine_id() -> None:
    machine = GOOD[GOOD.index("              - id: vf2-01") :]
    [p] = problems(GOOD + machine)
    assert p == (
        "plant.yaml:18: areas[0].lines[0].cells[0].machines[1].id: "
        "duplicate machine id 'vf2-01' (first at line 12)"
    )


@pytest.mark.parametrize("bad", ["cell/1", "cell+", "cell#", "", "my cell", "$SYS"])
def test_invalid_path_segment(bad: str) -> None:
    [p] = problems(GOOD.replace("name: cell-1", f"name: '{bad}'"))
    assert p.startswith("plant.yaml:10: areas[0].lines[0].cells[0].name: ")
    assert "not a valid topic level" in p


def test_duplicate_yaml_key() -> None:
    [p] = problems(GOOD.replace("site: dayton\n", "site: dayton\nsite: other\n"))
    assert p == "plant.yaml:3: site: duplicate key 'site'"


def test_not_yaml_and_unreadable_file(tmp_path: Path) -> None:
    assert problems("enterprise: [unclosed\n")[0].startswith("plant.yaml:")
    with pytest.raises(SiteConfigError, match="cannot read the site model"):
        load_site(tmp_path / "missing.yaml")


MODBUS = GOOD.replace(
    """                source:
                  protocol: opcua
                  endpoint: opc.tcp://127.0.0.1:4840
                  signals: {execution: "ns=2;s=E", mode: "ns=2;s=M", part_count: "ns=2;s=P",
                            alarm_code: "ns=2;s=A", estop: "ns=2;s=S"}
""",
    """                source:
                  protocol: modbus
                  host: 127.0.0.1
                  poll_groups:
                    fast:
                      interval_ms: 100
                      signals:
                        execution: {table: holding, address: 9, map: {0: READY, 1: ACTIVE}}
                        mode: {table: holding, address: 1, map: {1: AUTOMATIC}}
                        alarm_code: {table: input, address: 2, type: int16}
                        estop: {table: holding, address: 0, bit: 3}
                        part_count: {table: input, address: 3, type: uint16}
""",
)


def test_a_modbus_register_map_loads() -> None:
    [m] = parse_site(MODBUS).machines
    assert m.where == "modbus://127.0.0.1:502/1"


def test_overlapping_registers_name_both_signals_and_the_line() -> None:
    [p] = problems(
        MODBUS.replace(
            "part_count: {table: input, address: 3, type: uint16}",
            "part_count: {table: input, address: 1, type: uint32}",
        )
    )
    assert p.startswith("plant.yaml:13: areas[0].lines[0].cells[0].machines[0].source: ")
    assert "signals alarm_code and part_count overlap at input 2" in p


def test_bits_of_one_register_may_share_it_but_not_the_same_bit() -> None:
    ok = MODBUS.replace(
        "alarm_code: {table: input, address: 2, type: int16}",
        "alarm_code: {table: holding, address: 0, bit: 2, type: bool}",
    )
    [p] = problems(ok)  # no overlap; but a bit cannot hold an alarm code
    assert "alarm_code is a number: a single bit does not hold it" in p
    [p] = problems(
        MODBUS.replace(
            "estop: {table: holding, address: 0, bit: 3}", "estop: {table: holding, address: 9, bit: 3}"
        )
    )
    assert "signals execution and estop overlap at holding 9" in p


def test_unknown_register_type() -> None:
    [p] = problems(MODBUS.replace("type: int16", "type: int24"))
    assert p.startswith(
        "plant.yaml:22: areas[0].lines[0].cells[0].machines[0].source.poll_groups.fast."
        "signals.alarm_code.type: "
    )
    assert "unknown type 'int24'" in p


def test_bit_index_out_of_range() -> None:
    [p] = problems(MODBUS.replace("bit: 3", "bit: 16"))
    assert ".signals.estop.bit: " in p
    assert "less than or equal to 15" in p
    assert p.startswith("plant.yaml:23: ")


def test_bit_on_a_coil_and_text_without_map() -> None:
    found = problems(
        MODBUS.replace(
            "estop: {table: holding, address: 0, bit: 3}", "estop: {table: coil, address: 0, bit: 3}"
        )
    )
    assert any("'bit' is for registers" in p for p in found)
    found = problems(
        MODBUS.replace(
            "mode: {table: holding, address: 1, map: {1: AUTOMATIC}}", "mode: {table: holding, address: 1}"
        )
    )
    assert any("mode needs a 'map'" in p for p in found)


SHIFTS = """
shifts:
  pattern:
    - {name: first, start: "06:00", end: "14:00", days: [mon, tue]}
    - {name: second, start: "14:00", end: "22:00", days: [mon, tue]}
"""


def test_shifts_load_and_overlaps_bad_times_and_zones_are_refused() -> None:
    assert parse_site(GOOD + SHIFTS).config.shifts is not None
    [p] = problems(GOOD + SHIFTS.replace('start: "14:00"', 'start: "13:00"'))
    assert p.startswith("plant.yaml:19: shifts: ")
    assert "shifts 'first' and 'second' overlap on mon" in p
    [p] = problems(GOOD + SHIFTS.replace('"06:00"', '"6am"'))
    assert p.startswith("plant.yaml:21: shifts.pattern[0].start: ")
    [p] = problems(GOOD + SHIFTS.replace("[mon, tue]}", "[mon, tuesday]}", 1))
    assert "shifts.pattern[0].days[1]" in p
    [p] = problems(GOOD.replace("site: dayton\n", "site: dayton\ntimezone: Mars/Olympus\n"))
    assert p.startswith("plant.yaml:3: timezone: unknown time zone 'Mars/Olympus'")


def test_an_alias_bomb_is_refused_at_once() -> None:
    """A few lines whose aliases expand to a billion values (it used to hang check-site)."""
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    for n, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[n]
        bomb += f"{name}: &{name} [{','.join(['*' + prev] * 9)}]\n"
    started = time.monotonic()
    with pytest.raises(SiteConfigError, match=r"bomb.yaml:1: .*aliases .*refused"):
        parse_site(GOOD + bomb, "bomb.yaml")
    assert time.monotonic() - started < 5
    # the example's own anchors and aliases are fine
    assert parse_site(GOOD.replace("source:", "source: &src", 1)).machines


def test_a_site_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    site = tmp_path / "plant.yaml"
    site.write_bytes((GOOD + "# Mühle\n").encode("latin-1"))
    with pytest.raises(SiteConfigError, match=rf"{site}:\d+: not UTF-8 text \(byte 0xfc\)"):
        load_site(site)


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_an_endpoint_port_out_of_range_is_refused(port: str) -> None:
    with pytest.raises(
        SiteConfigError, match=r"<site>:\d+: .*endpoint.*port must be a number from 1 to 65535"
    ):
        parse_site(GOOD.replace("127.0.0.1:4840", f"127.0.0.1:{port}"))
