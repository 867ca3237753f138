"""Machine state on event time (pure)."""

from __future__ import annotations

from services.context.state import (
    Interval,
    MachineState,
    MachineTracker,
    PartsMade,
    SignalValue,
    Value,
    derive,
)

S = MachineState


def sv(name: str, value: Value, ts: int) -> SignalValue:
    return SignalValue(name, value, ts)


def test_rules_in_order() -> None:
    base: dict[str, Value] = {"execution": "ACTIVE", "mode": "AUTOMATIC", "alarm_code": 0, "estop": False}
    assert derive(base) is S.RUNNING
    assert derive({**base, "execution": "FEED_HOLD"}) is S.IDLE
    assert derive({**base, "mode": "MDI"}) is S.SETUP
    assert derive({**base, "alarm_code": 1021}) is S.DOWN
    assert derive({**base, "estop": True, "mode": "MANUAL"}) is S.DOWN
    assert derive({**base, "execution": None}) is S.COMMS_LOSS


def birth(t: MachineTracker, ts: int, **values: Value) -> None:
    t.apply([sv(k, v, ts) for k, v in values.items()], birth=True)


def test_intervals_close_on_event_time_and_same_time_changes_make_no_empty_interval() -> None:
    t = MachineTracker("m")
    birth(t, 1000, execution="READY", mode="AUTOMATIC", alarm_code=0, estop=False, part_count=10)
    assert (t.state, t.since_ms) == (S.IDLE, 1000)
    closed, _ = t.apply([sv("execution", "ACTIVE", 5000), sv("mode", "AUTOMATIC", 5000)])
    assert closed == [Interval("m", 1000, 5000, S.IDLE)]
    # mode and execution change at the same instant: no zero-length setup interval
    closed, _ = t.apply([sv("mode", "MANUAL", 9000), sv("execution", "READY", 9000)])
    assert closed == [Interval("m", 5000, 9000, S.RUNNING)]
    assert (t.state, t.since_ms) == (S.SETUP, 9000)


def test_values_are_applied_in_timestamp_order_whatever_the_arrival_order() -> None:
    t = MachineTracker("m")
    birth(t, 0, execution="READY", mode="AUTOMATIC", alarm_code=0, estop=False)
    closed, _ = t.apply([sv("execution", "READY", 300), sv("execution", "ACTIVE", 100)])
    assert closed == [Interval("m", 0, 100, S.IDLE), Interval("m", 100, 300, S.RUNNING)]


def test_late_values_never_reopen_the_past() -> None:
    t = MachineTracker("m")
    birth(t, 1000, execution="ACTIVE", mode="AUTOMATIC", alarm_code=0, estop=False)
    closed, _ = t.apply([sv("execution", "READY", 500)])
    assert closed == []
    assert (t.state, t.since_ms, t.late_values) == (S.IDLE, 1000, 1)


def test_comms_loss_and_recovery() -> None:
    t = MachineTracker("m")
    birth(t, 0, execution="ACTIVE", mode="AUTOMATIC", alarm_code=0, estop=False, part_count=5)
    assert t.lose(60_000) == [Interval("m", 0, 60_000, S.RUNNING)]
    assert t.state is S.COMMS_LOSS
    # the birth after the outage carries values stamped before it: they count from the birth on
    t.apply(
        [
            sv("execution", "READY", 1_000),
            sv("mode", "AUTOMATIC", 1_000),
            sv("alarm_code", 0, 1_000),
            sv("estop", False, 1_000),
            sv("part_count", 8, 1_000),
        ],
        birth=True,
    )
    assert (t.state, t.since_ms) == (S.IDLE, 60_000)


def test_part_count_deltas_reset_and_repeats() -> None:
    t = MachineTracker("m")
    birth(t, 0, execution="ACTIVE", mode="AUTOMATIC", alarm_code=0, estop=False, part_count=100)
    assert t.apply([sv("part_count", 101, 10)])[1] == [PartsMade("m", 10, 1, 101)]
    assert t.apply([sv("part_count", 101, 20)])[1] == []  # a birth repeating the value
    assert t.apply([sv("part_count", 3, 30)])[1] == [PartsMade("m", 30, 3, 3)]  # reset to 0, then 3 made


def test_a_16_bit_counter_wraps_and_is_counted_across_the_wrap() -> None:
    t = MachineTracker("m", counter_rollover=65536)
    birth(t, 0, execution="ACTIVE", mode="AUTOMATIC", alarm_code=0, estop=False, part_count=65534)
    assert t.apply([sv("part_count", 1, 10)])[1] == [PartsMade("m", 10, 3, 1)]  # 65535, 0, 1
    assert t.apply([sv("part_count", 0, 20)])[1] == []  # a small step down is a reset to 0
    assert t.counter == 0
