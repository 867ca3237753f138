"""The Grafana dashboards of the shop floor, generated with Grafana's own typed builders.

    .venv/bin/python -m grafana.generate [--site sites/yours.yaml] [--out grafana/dashboards]

writes grafana/dashboards/*.json (sorted keys, indent 2, a trailing newline: the same input always
gives the same bytes, and the committed files are checked against a fresh run by
tests/test_grafana.py). Edit this file, not the JSON.

The builders are `grafana-foundation-sdk` for Grafana 11.6 (the dashboard schema and the panel
plugins' options); the SDK has no InfluxDB query type, so `InfluxQL` below is ours: a raw InfluxQL
target of Grafana's InfluxDB data source. Every query reads the historian's measurement schema
(docs/historian.md) and only uses InfluxQL that InfluxDB 1.6 already answers (aggregates, selectors
with the fields of their point, arithmetic on aggregates, GROUP BY time/tags, fill, tz), so InfluxDB
1.x, 2.x (v1 compatibility API) and 3.x all run them. Grafana sorts and filters where InfluxQL
cannot (InfluxQL orders by time only).

The site model gives the dashboards their time zone (days are the site's days) and the site that is
selected first; everything else is the same for every plant.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import barchart, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

DESCRIPTION = "Write the Grafana dashboards of the shop floor (grafana/dashboards/*.json)."
ROOT = Path(__file__).resolve().parent
DASHBOARDS_DIR = ROOT / "dashboards"
DATASOURCE_FILE = ROOT / "provisioning" / "datasources" / "influxdb.yaml"
DEFAULT_SITE = ROOT.parent / "sites" / "example.yaml"

DATASOURCE_UID = "uns-influxdb"  # the uid grafana/provisioning/datasources/influxdb.yaml gives it
DATASOURCE = dm.DataSourceRef(type_val="influxdb", uid=DATASOURCE_UID)
TAG = "uns"  # every dashboard carries it; the dashboards' links list the others by it

# The states of `machine_state` and `state_interval` (docs/historian.md): name, code, colour.
STATES = (
    ("running", 1, "green"),
    ("idle", 2, "yellow"),
    ("setup", 3, "blue"),
    ("down", 4, "red"),
    ("comms_loss", 0, "#8e8e8e"),
)
OEE_GOOD = 0.85  # the usual "world class" mark; below OEE_FAIR is red
OEE_FAIR = 0.65
TILE_PANEL = "machine tile"  # the wall display's repeated panel has no title (no clutter): its name here

# The filters every panel query has: the machines of the variables and the dashboard's time range.
MACHINES = ('"site" =~ /^$site$/', '"machine" =~ /^$machine$/')
TIME = "$timeFilter"

# OEE of a group from its summed times and counts, never from averaged ratios (docs/oee.md):
AVAILABILITY = 'sum("run_s") / sum("planned_s")'
PERFORMANCE = 'sum("ideal_s") / sum("run_s")'
QUALITY = 'sum("good") / sum("total")'
OEE = 'sum("ideal_s") / sum("planned_s") * sum("good") / sum("total")'  # = A x P x Q of the sums
RATIOS = (
    f'{AVAILABILITY} AS "availability", {PERFORMANCE} AS "performance", '
    f'{QUALITY} AS "quality", {OEE} AS "oee"'
)
SUMS_HOW = (
    "From the `oee` points (one per machine and shift) by summing times and counts, never by averaging "
    "percentages: availability = sum(run_s) / sum(planned_s), performance = sum(ideal_s) / sum(run_s), "
    "quality = sum(good) / sum(total), OEE = their product = sum(ideal_s) / sum(planned_s) x sum(good) / "
    "sum(total). A shift whose performance is missing (parts without an ideal cycle time) adds only the "
    "ideal time of the parts that have one, so performance and OEE read low there: the shift table shows "
    "which shifts those are. A group without planned time shows 0 (InfluxQL divides by zero as 0)."
)


# -- the query type the SDK does not have -------------------------------------------------------------


class InfluxQLTarget(cogvariants.Dataquery):
    """A raw InfluxQL query of Grafana's InfluxDB data source, on the provisioned data source."""

    def __init__(self, ref_id: str, query: str, result_format: str, alias: str | None) -> None:
        self.ref_id = ref_id
        self.query = query
        self.result_format = result_format
        self.alias = alias

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": DATASOURCE,
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias is not None:
            payload["alias"] = self.alias
        return payload


class InfluxQL(cogbuilder.Builder[cogvariants.Dataquery]):
    """`InfluxQL("A", "SELECT ...")`, as a table (one frame with the GROUP BY tags as columns) or as
    time series (`time_series=True`, one series per GROUP BY tag set, named by `alias`)."""

    def __init__(
        self, ref_id: str, query: str, *, time_series: bool = False, alias: str | None = None
    ) -> None:
        self._target = InfluxQLTarget(ref_id, query, "time_series" if time_series else "table", alias)

    def build(self) -> cogvariants.Dataquery:
        return self._target


def select(
    fields: str,
    measurement: str,
    *where: str,
    group_by: str | None = None,
    fill: str | None = None,
    tz: bool = False,
) -> str:
    """One InfluxQL SELECT on the machines of the variables and the dashboard's time range."""
    conditions = " AND ".join((*MACHINES, *where, TIME))
    text = f'SELECT {fields} FROM "{measurement}" WHERE {conditions}'  # noqa: S608 (our own dashboards' text)
    if group_by is not None:
        text += f" GROUP BY {group_by}"
    if fill is not None:
        text += f" fill({fill})"
    if tz:
        text += " tz('$tz')"  # days are the site's days (the constant variable `tz`)
    return text


# -- pieces ---------------------------------------------------------------------------------------------


def grid(x: int, y: int, w: int, h: int) -> dm.GridPos:
    return dm.GridPos(h=h, w=w, x=x, y=y)


def state_label(name: str) -> str:
    return name.replace("_", " ").upper()  # COMMS LOSS: big letters for a screen across the room


def state_mapping() -> dm.ValueMap:
    """The state `code` as its name, in its colour."""
    return dm.ValueMap(
        options={
            str(code): dm.ValueMappingResult(text=state_label(name), color=colour, index=i)
            for i, (name, code, colour) in enumerate(STATES)
        }
    )


def state_name_mapping() -> dm.ValueMap:
    """The `state` tag's names (running, idle, ...) in the state colours."""
    return dm.ValueMap(
        options={
            name: dm.ValueMappingResult(color=colour, index=i) for i, (name, _, colour) in enumerate(STATES)
        }
    )


def thresholds(base: str, *steps: tuple[float, str]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=None, color=base), *(dm.Threshold(value=v, color=c) for v, c in steps)])
    )


def oee_thresholds() -> dashboard_builders.ThresholdsConfig:
    return thresholds("red", (OEE_FAIR, "yellow"), (OEE_GOOD, "green"))


def thresholds_colour() -> dashboard_builders.FieldColor:
    return dashboard_builders.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS)


def fixed_colour(colour: str) -> dashboard_builders.FieldColor:
    return dashboard_builders.FieldColor().mode(dm.FieldColorModeId.FIXED).fixed_color(colour)


def prop(id_val: str, value: object) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val=id_val, value=value)


def legend(*, show: bool = True) -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .show_legend(show)
        .display_mode(cm.LegendDisplayMode.LIST if show else cm.LegendDisplayMode.HIDDEN)
        .placement(cm.LegendPlacement.BOTTOM)
        .calcs([])
    )


def tooltip() -> common_builders.VizTooltipOptions:
    return common_builders.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)


def reduce_last(fields: str = "") -> common_builders.ReduceDataOptions:
    return common_builders.ReduceDataOptions().values(False).calcs(["lastNotNull"]).fields(fields)


def transform(id_val: str, options: Mapping[str, object]) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(id_val=id_val, options=dict(options))


def drop_time() -> dm.DataTransformerConfig:
    """A table query's rows carry the time of their window's start: not wanted in a bar chart."""
    return transform("organize", {"excludeByName": {"Time": True}})


def largest_first(field: str) -> dm.DataTransformerConfig:
    return transform("sortBy", {"sort": [{"field": field, "desc": True}]})


def without_zeros(field: str) -> dm.DataTransformerConfig:
    """`loss` has every reason of the tree, zero where there was none: keep the ones that happened."""
    return transform(
        "filterByValue",
        {
            "type": "exclude",
            "match": "any",
            "filters": [{"fieldName": field, "config": {"id": "lowerOrEqual", "options": {"value": 0}}}],
        },
    )


def stopped_seconds(*where: str, group_by: str) -> str:
    """Stopped seconds from `loss`, summed by `group_by` (the loss panels' query)."""
    return select('sum("seconds") AS "seconds"', "loss", *where, group_by=group_by)


def bars(
    title: str,
    description: str,
    x_field: str,
    *,
    horizontal: bool = False,
    unit: str = "s",
) -> barchart.Panel:
    return (
        barchart.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .x_field(x_field)
        .orientation(cm.VizOrientation.HORIZONTAL if horizontal else cm.VizOrientation.AUTO)
        .show_value(cm.VisibilityMode.AUTO)
        .stacking(cm.StackingMode.NONE)
        .bar_width(0.8)
        .group_width(0.7)
        .full_highlight(False)
        .x_tick_label_rotation(0)
        .x_tick_label_max_length(24)
        .legend(legend(show=not horizontal))
        .tooltip(tooltip())
        .fill_opacity(85)
        .line_width(1)
        .gradient_mode(cm.GraphGradientMode.NONE)
        .color_scheme(dashboard_builders.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
        .unit(unit)
        .min(0)
    )


def series(title: str, description: str, *, unit: str, draw: cm.GraphDrawStyle) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .legend(legend())
        .tooltip(tooltip())
        .draw_style(draw)
        .line_width(2)
        .fill_opacity(70 if draw is cm.GraphDrawStyle.BARS else 10)
        .point_size(6)
        .show_points(cm.VisibilityMode.ALWAYS if draw is cm.GraphDrawStyle.POINTS else cm.VisibilityMode.AUTO)
        .span_nulls(False)
        .color_scheme(dashboard_builders.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
        .unit(unit)
    )


def grid_table(title: str, description: str) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .frame_index(0)
        .show_header(True)
        .cell_height(cm.TableCellHeight.SM)
        .footer(
            common_builders.TableFooterOptions().show(False).reducer(["sum"]).count_rows(False).fields([])
        )
    )


def percent(name: str, display: str) -> tuple[str, list[dm.DynamicConfigValue]]:
    return name, [
        prop("displayName", display),
        prop("unit", "percentunit"),
        prop("decimals", 1),
        prop("min", 0),
    ]


def seconds_as(name: str, display: str) -> tuple[str, list[dm.DynamicConfigValue]]:
    return name, [prop("displayName", display), prop("unit", "s"), prop("decimals", 0)]


def named(name: str, display: str) -> tuple[str, list[dm.DynamicConfigValue]]:
    return name, [prop("displayName", display)]


def ratio_overrides() -> list[tuple[str, list[dm.DynamicConfigValue]]]:
    return [
        percent("availability", "Availability"),
        percent("performance", "Performance"),
        percent("quality", "Quality"),
        percent("oee", "OEE"),
    ]


Panel = barchart.Panel | stat.Panel | statetimeline.Panel | table.Panel | timeseries.Panel


def with_overrides(panel: Panel, overrides: Sequence[tuple[str, list[dm.DynamicConfigValue]]]) -> None:
    for name, properties in overrides:
        panel.override_by_name(name, properties)


# -- variables ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteDefaults:
    """What a plant's dashboards take from its site model."""

    site: str
    timezone: str

    @classmethod
    def of(cls, path: str | Path) -> SiteDefaults:
        from uns.site import load_site

        config = load_site(path).config
        return cls(site=config.site, timezone=config.timezone)


def all_values() -> dm.VariableOption:
    return dm.VariableOption(selected=True, text=["All"], value=["$__all"])


def tag_values(
    name: str,
    label: str,
    *,
    measurement: str = "machine_state",
    where: Sequence[str] = (),
    multi: bool = True,
    current: dm.VariableOption | None = None,
) -> dashboard_builders.QueryVariable:
    """A variable of a tag's values (SHOW TAG VALUES), chained to the variables before it."""
    query = f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "{name}"'
    if where:
        query += " WHERE " + " AND ".join(where)
    variable = (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dm.VariableSort.NATURAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    if current is not None:
        variable.current(current)
    elif multi:
        variable.current(all_values())
    return variable


def site_variable(defaults: SiteDefaults) -> dashboard_builders.QueryVariable:
    return tag_values(
        "site",
        "Site",
        multi=False,
        current=dm.VariableOption(selected=True, text=defaults.site, value=defaults.site),
    )


def area_variable() -> dashboard_builders.QueryVariable:
    return tag_values("area", "Area", where=['"site" =~ /^$site$/'])


def machine_variable(*, multi: bool = True) -> dashboard_builders.QueryVariable:
    return tag_values("machine", "Machine", where=['"site" =~ /^$site$/', '"area" =~ /^$area$/'], multi=multi)


def tz_variable(defaults: SiteDefaults) -> dashboard_builders.ConstantVariable:
    """The site's time zone for GROUP BY time(1d): days begin at the site's midnight."""
    return dashboard_builders.ConstantVariable("tz").value(defaults.timezone)


def base(
    uid: str,
    title: str,
    description: str,
    defaults: SiteDefaults,
    *,
    time: tuple[str, str],
    refresh: str,
    variables: Sequence[cogbuilder.Builder[dm.VariableModel]],
) -> dashboard_builders.Dashboard:
    return (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .timezone(defaults.timezone)
        .time(time[0], time[1])
        .refresh(refresh)
        .readonly()  # generated: change grafana/generate.py instead
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .variables(list(variables))
        .link(
            dashboard_builders.DashboardLink("Shop floor")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(False)
            .target_blank(False)
            .icon("external link")
            .tooltip("")
        )
    )


def finish(builder: dashboard_builders.Dashboard) -> dm.Dashboard:
    """The dashboard with its panels numbered in order (the SDK leaves ids to the caller)."""
    built = builder.build()
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    # The SDK gives every variable the interval variable's auto settings; they mean nothing on the
    # others and @grafana/schema's VariableModel has no such properties (the schema test says so).
    for variable in (built.templating.list_val if built.templating else None) or []:
        if variable.type_val is not dm.VariableType.INTERVAL:
            variable.auto = variable.auto_min = variable.auto_count = None
    return built


# -- the dashboards -----------------------------------------------------------------------------------


def plant_wall(defaults: SiteDefaults) -> dm.Dashboard:
    """One tile per machine, for a TV on the shop floor (open it with `?kiosk`)."""
    tile = (
        stat.Panel()
        .description(
            "The machine's state now (the last `machine_state` point with code >= 0, so a point a "
            "correction took back does not count), its job and operation, and the OEE of its current "
            "(or last) shift: the `oee` point of the shift that began last. The tile looks back 7 days, "
            "so a machine that has not changed state since the shift began still shows."
        )
        .datasource(DATASOURCE)
        .repeat("machine")
        .repeat_direction("h")
        .max_per_row(4)
        .time_from("7d")
        .hide_time_override(True)
        .with_target(
            InfluxQL(
                "A",
                select('last("code") AS "state", "job", "operation"', "machine_state", '"code" >= 0'),
            )
        )
        .with_target(InfluxQL("B", select('last("planned_s") AS "planned_s", "oee"', "oee")))
        .reduce_options(reduce_last("/^(state|job|operation|oee)$/"))
        .color_mode(cm.BigValueColorMode.BACKGROUND_SOLID)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .justify_mode(cm.BigValueJustifyMode.CENTER)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .orientation(cm.VizOrientation.HORIZONTAL)  # one value under the other
        .wide_layout(True)
        .show_percent_change(False)
        .percent_change_color_mode(cm.PercentChangeColorMode.STANDARD)
        .text(common_builders.VizTextDisplayOptions().title_size(26).value_size(40))
        .no_value("\N{EN DASH}")
        .color_scheme(fixed_colour("#262626"))
        .grid_pos(grid(0, 0, 6, 8))
    )
    with_overrides(
        tile,
        [
            (
                "state",
                [
                    prop("displayName", "${machine}"),
                    prop("mappings", [state_mapping()]),
                    prop("color", {"mode": "thresholds"}),
                    prop("thresholds", thresholds("#8e8e8e").build()),
                ],
            ),
            named("job", "Job"),
            named("operation", "Operation"),
            (
                "oee",
                [
                    prop("displayName", "OEE this shift"),
                    prop("unit", "percentunit"),
                    prop("decimals", 0),
                    prop("color", {"mode": "thresholds"}),
                    prop("thresholds", oee_thresholds().build()),
                ],
            ),
        ],
    )
    return finish(
        base(
            "uns-wall",
            "Plant wall display",
            "One tile per machine: state colour, job and operation, OEE of the current shift. For a TV: "
            "open with ?kiosk; choose an area for a TV per area.",
            defaults,
            time=("now-12h", "now"),
            refresh="30s",
            variables=[site_variable(defaults), area_variable(), machine_variable()],
        )
        .timepicker(dashboard_builders.TimePicker().hidden(True))
        .with_panel(tile)
    )


def machine_detail(defaults: SiteDefaults) -> dm.Dashboard:
    timeline = (
        statetimeline.Panel()
        .title("State")
        .description(
            "The machine's state over time from `machine_state` (one point per change; code >= 0 leaves "
            "out points a correction took back). Running green, idle yellow, setup blue, down red, "
            "comms loss grey."
        )
        .datasource(DATASOURCE)
        .with_target(
            InfluxQL(
                "A",
                select('"code" AS "state"', "machine_state", '"code" >= 0', group_by='"machine"'),
                time_series=True,
                alias="$tag_machine",
            )
        )
        .show_value(cm.VisibilityMode.AUTO)
        .row_height(0.9)
        .merge_values(True)
        .align_value(cm.TimelineValueAlignment.LEFT)
        .legend(legend())
        .tooltip(tooltip())
        .fill_opacity(85)
        .line_width(0)
        .mappings([state_mapping()])
        .thresholds(thresholds("#8e8e8e"))
        .color_scheme(thresholds_colour())
        .grid_pos(grid(0, 0, 24, 6))
    )
    parts = (
        series(
            "Parts counted",
            "Parts counted per interval: the sum of `part_count` delta (corrections write a delta of 0).",
            unit="none",
            draw=cm.GraphDrawStyle.BARS,
        )
        .interval("15m")
        .with_target(
            InfluxQL(
                "A",
                select('sum("delta") AS "parts"', "part_count", group_by="time($__interval)", fill="0"),
                time_series=True,
                alias="Parts",
            )
        )
        .grid_pos(grid(0, 6, 16, 8))
    )
    by_job = (
        grid_table("Parts by job and operation", "The sum of `part_count` delta by job and operation.")
        .with_target(
            InfluxQL("A", select('sum("delta") AS "parts"', "part_count", group_by='"job", "operation"'))
        )
        .with_transformation(drop_time())
        .with_transformation(largest_first("parts"))
        .grid_pos(grid(16, 6, 8, 8))
    )
    with_overrides(by_job, [named("job", "Job"), named("operation", "Operation"), named("parts", "Parts")])
    reasons = (
        bars(
            "Stopped time by reason",
            "Closed stops (the `state_interval` pieces that have a reason) summed by reason, largest first. "
            "The stop that is still open is not in yet.",
            "reason",
            horizontal=True,
        )
        .with_target(
            InfluxQL(
                "A",
                select(
                    'sum("duration_s") AS "stopped"',
                    "state_interval",
                    '"code" >= 0',
                    "\"reason\" != ''",
                    group_by='"reason"',
                ),
            )
        )
        .with_transformation(drop_time())
        .with_transformation(largest_first("stopped"))
        .grid_pos(grid(0, 14, 12, 9))
    )
    states = (
        bars(
            "Time by state",
            "Closed `state_interval` pieces summed by state.",
            "state",
            horizontal=True,
        )
        .with_target(
            InfluxQL(
                "A",
                select('sum("duration_s") AS "time"', "state_interval", '"code" >= 0', group_by='"state"'),
            )
        )
        .with_transformation(drop_time())
        .with_transformation(largest_first("time"))
        .color_by_field("state")
        .grid_pos(grid(12, 14, 12, 9))
    )
    with_overrides(states, [("state", [prop("mappings", [state_name_mapping()])])])
    signals = (
        series(
            "Spindle load and feed override",
            "The mean of the `signal` values spindle_load and feed_override per interval.",
            unit="percent",
            draw=cm.GraphDrawStyle.LINE,
        )
        .with_target(
            InfluxQL(
                "A",
                select(
                    'mean("value")',
                    "signal",
                    '"signal" =~ /^(spindle_load|feed_override)$/',
                    group_by='time($__interval), "signal"',
                    fill="none",
                ),
                time_series=True,
                alias="$tag_signal",
            )
        )
        .grid_pos(grid(0, 23, 24, 8))
    )
    stops = (
        grid_table(
            "Stops and their evidence",
            "Every closed stop piece with its reason, where the reason came from (operator, hold, rule, "
            "default) and the evidence it went by, newest first.",
        )
        .with_target(
            InfluxQL(
                "A",
                select(
                    '"duration_s", "source", "evidence"',
                    "state_interval",
                    '"code" >= 0',
                    "\"reason\" != ''",
                    group_by='"state", "reason", "job", "operation", "operator"',
                ),
            )
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("Time").desc(True)])
        .grid_pos(grid(0, 31, 24, 10))
    )
    with_overrides(stops, [seconds_as("duration_s", "Duration"), named("source", "Reason from")])
    return finish(
        base(
            "uns-machine",
            "Machine detail",
            "One machine: its states, parts, stops by reason and the signals behind them.",
            defaults,
            time=("now-24h", "now"),
            refresh="1m",
            variables=[site_variable(defaults), area_variable(), machine_variable(multi=False)],
        )
        .with_panel(timeline)
        .with_panel(parts)
        .with_panel(by_job)
        .with_panel(reasons)
        .with_panel(states)
        .with_panel(signals)
        .with_panel(stops)
    )


def oee_by_shift_and_day(defaults: SiteDefaults) -> dm.Dashboard:
    summary = (
        stat.Panel()
        .title("OEE of the selected machines and time")
        .description(SUMS_HOW)
        .datasource(DATASOURCE)
        .with_target(InfluxQL("A", select(RATIOS, "oee")))
        .reduce_options(reduce_last())
        .color_mode(cm.BigValueColorMode.VALUE)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .justify_mode(cm.BigValueJustifyMode.CENTER)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .orientation(cm.VizOrientation.AUTO)
        .wide_layout(True)
        .show_percent_change(False)
        .percent_change_color_mode(cm.PercentChangeColorMode.STANDARD)
        .unit("percentunit")
        .decimals(1)
        .color_scheme(thresholds_colour())
        .thresholds(oee_thresholds())
        .grid_pos(grid(0, 0, 18, 5))
    )
    with_overrides(summary, ratio_overrides())
    above_100 = (
        stat.Panel()
        .title("Shifts with performance above 100 %")
        .description(
            "Shifts whose parts came faster than their ideal cycle time allows (`performance_over_100`): "
            "that ideal cycle time is wrong. Their performance is shown as it is, never capped."
        )
        .datasource(DATASOURCE)
        .with_target(InfluxQL("A", select('sum("performance_over_100") AS "shifts"', "oee")))
        .reduce_options(reduce_last())
        .color_mode(cm.BigValueColorMode.BACKGROUND_SOLID)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .justify_mode(cm.BigValueJustifyMode.CENTER)
        .text_mode(cm.BigValueTextMode.VALUE)
        .orientation(cm.VizOrientation.AUTO)
        .wide_layout(True)
        .show_percent_change(False)
        .percent_change_color_mode(cm.PercentChangeColorMode.STANDARD)
        .unit("none")
        .color_scheme(thresholds_colour())
        .thresholds(thresholds("green", (1, "red")))
        .grid_pos(grid(18, 0, 6, 5))
    )
    by_day = (
        series(
            "OEE by day",
            SUMS_HOW + " Days are the site's days (" + defaults.timezone + ").",
            unit="percentunit",
            draw=cm.GraphDrawStyle.BARS,
        )
        .with_target(
            InfluxQL(
                "A",
                select(RATIOS, "oee", group_by="time(1d)", fill="none", tz=True),
                time_series=True,
                alias="$col",
            )
        )
        .grid_pos(grid(0, 5, 24, 9))
    )
    with_overrides(by_day, ratio_overrides())
    day_table = (
        grid_table(
            "By day and machine",
            SUMS_HOW + " `shifts` counts the machine's shifts of the day, `with performance` those whose "
            "performance is known.",
        )
        .with_target(
            InfluxQL(
                "A",
                select(
                    RATIOS + ', sum("planned_s") AS "planned_s", sum("run_s") AS "run_s", '
                    'sum("total") AS "total", sum("good") AS "good", count("planned_s") AS "shifts", '
                    'count("performance") AS "with_performance"',
                    "oee",
                    group_by='time(1d), "machine"',
                    fill="none",
                    tz=True,
                ),
            )
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("Time").desc(True)])
        .grid_pos(grid(0, 14, 24, 9))
    )
    with_overrides(
        day_table,
        [
            *ratio_overrides(),
            seconds_as("planned_s", "Planned time"),
            seconds_as("run_s", "Run time"),
            named("total", "Parts"),
            named("good", "Good"),
            named("with_performance", "With performance"),
        ],
    )
    shift_table = (
        grid_table(
            "By shift",
            "The `oee` point of every machine and shift as the OEE engine wrote it (docs/oee.md), with the "
            "definition version that produced it. Blank: undefined (no planned time, no parts, or parts "
            "without an ideal cycle time).",
        )
        .with_target(
            InfluxQL(
                "A",
                select(
                    '"availability", "performance", "quality", "oee", "planned_s", "run_s", "stop_s", '
                    '"ideal_s", "total", "good", "scrap", "performance_over_100", "definition"',
                    "oee",
                    group_by='"machine", "shift"',
                ),
            )
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("Time").desc(True)])
        .grid_pos(grid(0, 23, 24, 10))
    )
    with_overrides(
        shift_table,
        [
            *ratio_overrides(),
            seconds_as("planned_s", "Planned time"),
            seconds_as("run_s", "Run time"),
            seconds_as("stop_s", "Stopped"),
            seconds_as("ideal_s", "Ideal time"),
            named("total", "Parts"),
            named("good", "Good"),
            named("scrap", "Rejected"),
            named("performance_over_100", "Perf. > 100 %"),
            named("definition", "Definition"),
        ],
    )
    per_shift = (
        series(
            "OEE per shift",
            "The OEE of each machine's shifts, at the time each shift began (`oee` field of `oee`).",
            unit="percentunit",
            draw=cm.GraphDrawStyle.POINTS,
        )
        .with_target(
            InfluxQL(
                "A",
                select('"oee"', "oee", group_by='"machine"'),
                time_series=True,
                alias="$tag_machine",
            )
        )
        .grid_pos(grid(0, 33, 24, 8))
    )
    return finish(
        base(
            "uns-oee",
            "OEE by shift and day",
            "Availability, performance, quality and OEE per shift and per day, from summed times and counts.",
            defaults,
            time=("now-14d/d", "now"),
            refresh="5m",
            variables=[site_variable(defaults), area_variable(), machine_variable(), tz_variable(defaults)],
        )
        .with_panel(summary)
        .with_panel(above_100)
        .with_panel(by_day)
        .with_panel(day_table)
        .with_panel(shift_table)
        .with_panel(per_shift)
    )


LOSS_HOW = (
    "From `loss` (one point per machine, shift and reason: the stopped seconds of the shift by reason, "
    "zero where there was none, left out here), summed over the selected machines and time, largest "
    "first."
)


def loss_pareto(defaults: SiteDefaults) -> dm.Dashboard:
    unplanned = (
        bars(
            "Unplanned stops by reason (Pareto)",
            LOSS_HOW + " Planned stops (breaks, planned maintenance, and setup where the site plans it) "
            "are apart, on the right.",
            "reason",
            horizontal=True,
        )
        .with_target(InfluxQL("A", stopped_seconds("\"planned\" = 'false'", group_by='"reason"')))
        .with_transformation(drop_time())
        .with_transformation(without_zeros("seconds"))
        .with_transformation(largest_first("seconds"))
        .grid_pos(grid(0, 0, 14, 12))
    )
    planned = (
        bars(
            "Planned stops by reason",
            LOSS_HOW + " Planned stops are no loss: they are out of planned production time.",
            "reason",
            horizontal=True,
        )
        .with_target(InfluxQL("A", stopped_seconds("\"planned\" = 'true'", group_by='"reason"')))
        .with_transformation(drop_time())
        .with_transformation(without_zeros("seconds"))
        .with_transformation(largest_first("seconds"))
        .grid_pos(grid(14, 0, 10, 12))
    )
    big = (
        bars(
            "Unplanned stops by big loss",
            LOSS_HOW + " Each reason counts as one of the six big losses (docs/oee.md: breakdowns, "
            "setup_adjustments, small_stops, other_stops); reduced speed and rejects are parts and "
            "speed, not stops: see the panel beside.",
            "big_loss",
            horizontal=True,
        )
        .with_target(InfluxQL("A", stopped_seconds("\"planned\" = 'false'", group_by='"big_loss"')))
        .with_transformation(drop_time())
        .with_transformation(without_zeros("seconds"))
        .with_transformation(largest_first("seconds"))
        .grid_pos(grid(0, 12, 14, 9))
    )
    speed = (
        stat.Panel()
        .title("Speed and quality losses")
        .description(
            "From `oee`: run time less the ideal time of the parts made (sum(run_s) - sum(ideal_s)); this "
            "includes the small stops (micro-stops stay in run time), so reduced speed is this less the "
            "small stops on the left. Rejected parts: sum(scrap), the scrap and rework reported."
        )
        .datasource(DATASOURCE)
        .with_target(
            InfluxQL(
                "A",
                select('sum("run_s") - sum("ideal_s") AS "speed_loss", sum("scrap") AS "rejected"', "oee"),
            )
        )
        .reduce_options(reduce_last())
        .color_mode(cm.BigValueColorMode.VALUE)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .justify_mode(cm.BigValueJustifyMode.CENTER)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .orientation(cm.VizOrientation.AUTO)
        .wide_layout(True)
        .show_percent_change(False)
        .percent_change_color_mode(cm.PercentChangeColorMode.STANDARD)
        .color_scheme(fixed_colour("text"))
        .grid_pos(grid(14, 12, 10, 9))
    )
    with_overrides(
        speed,
        [
            seconds_as("speed_loss", "Run time not at ideal speed"),
            ("rejected", [prop("displayName", "Rejected parts"), prop("unit", "none")]),
        ],
    )
    detail = (
        grid_table("Unplanned stops by machine and reason", LOSS_HOW)
        .with_target(
            InfluxQL(
                "A",
                select(
                    'sum("seconds") AS "seconds"',
                    "loss",
                    "\"planned\" = 'false'",
                    group_by='"machine", "reason", "big_loss"',
                ),
            )
        )
        .with_transformation(drop_time())
        .with_transformation(without_zeros("seconds"))
        .with_transformation(largest_first("seconds"))
        .grid_pos(grid(0, 21, 24, 10))
    )
    with_overrides(detail, [seconds_as("seconds", "Stopped")])
    return finish(
        base(
            "uns-losses",
            "Loss Pareto",
            "Stopped time by reason, largest first, planned stops apart, and the six big losses.",
            defaults,
            time=("now-7d/d", "now"),
            refresh="5m",
            variables=[site_variable(defaults), area_variable(), machine_variable()],
        )
        .with_panel(unplanned)
        .with_panel(planned)
        .with_panel(big)
        .with_panel(speed)
        .with_panel(detail)
    )


SHIFT_FILTER = '"shift_name" =~ /^$shift_name$/'
SAME_BASIS = (
    " Every panel here takes the same machines and the same days for every shift (the time range; by "
    "default the last 7 whole days), so the shifts are compared on equal ground."
)


def shift_comparison(defaults: SiteDefaults) -> dm.Dashboard:
    oee = (
        bars("OEE by shift", SUMS_HOW + SAME_BASIS, "shift_name", unit="percentunit")
        .with_target(InfluxQL("A", select(RATIOS, "oee", SHIFT_FILTER, group_by='"shift_name"')))
        .with_transformation(drop_time())
        .grid_pos(grid(0, 0, 12, 10))
    )
    with_overrides(oee, ratio_overrides())
    counts = (
        bars(
            "Parts by shift",
            "From `oee`: sum(total) parts made, sum(good), sum(scrap) rejected." + SAME_BASIS,
            "shift_name",
            unit="none",
        )
        .with_target(
            InfluxQL(
                "A",
                select(
                    'sum("total") AS "made", sum("good") AS "good", sum("scrap") AS "rejected"',
                    "oee",
                    SHIFT_FILTER,
                    group_by='"shift_name"',
                ),
            )
        )
        .with_transformation(drop_time())
        .grid_pos(grid(12, 0, 12, 10))
    )
    with_overrides(counts, [named("made", "Made"), named("good", "Good"), named("rejected", "Rejected")])
    losses = (
        bars(
            "Unplanned stops by big loss and shift",
            LOSS_HOW + SAME_BASIS,
            "big_loss",
        )
        .with_target(
            InfluxQL(
                "A",
                select(
                    'sum("seconds") AS "seconds"',
                    "loss",
                    SHIFT_FILTER,
                    "\"planned\" = 'false'",
                    group_by='"shift_name", "big_loss"',
                ),
            )
        )
        .with_transformation(
            transform(
                "groupingToMatrix",
                {
                    "columnField": "shift_name",
                    "rowField": "big_loss",
                    "valueField": "seconds",
                    "emptyValue": "zero",
                },
            )
        )
        .with_transformation(transform("organize", {"renameByName": {"big_loss\\shift_name": "big_loss"}}))
        .grid_pos(grid(0, 10, 12, 10))
    )
    reasons = (
        grid_table("Unplanned stops by shift and reason", LOSS_HOW + SAME_BASIS)
        .with_target(
            InfluxQL(
                "A",
                select(
                    'sum("seconds") AS "seconds"',
                    "loss",
                    SHIFT_FILTER,
                    "\"planned\" = 'false'",
                    group_by='"shift_name", "reason"',
                ),
            )
        )
        .with_transformation(drop_time())
        .with_transformation(without_zeros("seconds"))
        .with_transformation(largest_first("seconds"))
        .grid_pos(grid(12, 10, 12, 10))
    )
    with_overrides(reasons, [named("shift_name", "Shift"), seconds_as("seconds", "Stopped")])
    daily = (
        series(
            "OEE per day by shift",
            SUMS_HOW + SAME_BASIS + " Days are the site's days (" + defaults.timezone + ").",
            unit="percentunit",
            draw=cm.GraphDrawStyle.LINE,
        )
        .with_target(
            InfluxQL(
                "A",
                select(
                    OEE + ' AS "oee"',
                    "oee",
                    SHIFT_FILTER,
                    group_by='time(1d), "shift_name"',
                    fill="none",
                    tz=True,
                ),
                time_series=True,
                alias="$tag_shift_name",
            )
        )
        .grid_pos(grid(0, 20, 24, 9))
    )
    return finish(
        base(
            "uns-shifts",
            "Shift comparison",
            "Shift against shift for the same machines and days: OEE, parts and losses by shift.",
            defaults,
            time=("now-7d/d", "now-1d/d"),
            refresh="5m",
            variables=[
                site_variable(defaults),
                area_variable(),
                machine_variable(),
                tag_values("shift_name", "Shift", measurement="oee", where=['"site" =~ /^$site$/']),
                tz_variable(defaults),
            ],
        )
        .with_panel(oee)
        .with_panel(counts)
        .with_panel(losses)
        .with_panel(reasons)
        .with_panel(daily)
    )


DASHBOARDS = {
    "plant-wall.json": plant_wall,
    "machine-detail.json": machine_detail,
    "oee.json": oee_by_shift_and_day,
    "losses.json": loss_pareto,
    "shifts.json": shift_comparison,
}


# -- output ---------------------------------------------------------------------------------------------


def render(dashboard: dm.Dashboard) -> str:
    """The dashboard's JSON text: sorted keys, indent 2, a trailing newline (deterministic)."""
    return json.dumps(dashboard, cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def generate(site: str | Path = DEFAULT_SITE) -> dict[str, str]:
    """File name -> JSON text of every dashboard, for the site model at `site`."""
    defaults = SiteDefaults.of(site)
    return {name: render(make(defaults)) for name, make in DASHBOARDS.items()}


def write(out_dir: Path, files: Mapping[str, str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = out_dir / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


# -- the queries, for tests that run them against a real InfluxDB --------------------------------------


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One InfluxQL query of a dashboard as Grafana sends it, before Grafana fills in the variables."""

    dashboard: str  # the file name, e.g. "oee.json"
    dashboard_title: str
    panel: str  # the panel's title (the wall display's untitled tile: TILE_PANEL)
    ref_id: str  # the target's refId; "variable" for a template variable's query
    query: str

    @property
    def variables(self) -> tuple[str, ...]:
        """The variables the query needs (`$timeFilter` and `$__interval` included)."""
        return tuple(dict.fromkeys(m.group(1) or m.group(2) for m in _VARIABLE.finditer(self.query)))


_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a row's panels


def panel_queries(files: Mapping[str, str] | None = None) -> list[PanelQuery]:
    """Every panel query and every variable query of the dashboards (as generated now, or of the
    given file name -> JSON text), with their template variables still in."""
    found = []
    for name, text in (files or generate()).items():
        board = json.loads(text)
        title = board["title"]
        for variable in board.get("templating", {}).get("list", []):
            if variable["type"] == "query":
                found.append(PanelQuery(name, title, f"${variable['name']}", "variable", variable["query"]))
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                label = panel.get("title") or TILE_PANEL
                found.append(PanelQuery(name, title, label, target["refId"], target["query"]))
    return found


def _regex_escape(value: str) -> str:
    """Grafana's escaping of a variable's value inside an InfluxQL regex."""
    return re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\1", value)


def interpolate(
    query: str,
    *,
    start: datetime,
    end: datetime,
    values: Mapping[str, str | Sequence[str]],
    interval: str = "1h",
) -> str:
    """The query as Grafana's InfluxDB data source sends it: `$timeFilter` as the time range in epoch
    milliseconds, `$__interval`, and each variable's values (inside a /regex/ escaped and, when more
    than one, as `(a|b)`). A variable without a value is an error (KeyError names it)."""
    text = query.replace(
        "$timeFilter",
        f"time >= {int(start.timestamp() * 1000)}ms and time <= {int(end.timestamp() * 1000)}ms",
    )
    text = text.replace("$__interval", interval)

    def regex(m: re.Match[str]) -> str:
        value = values[m.group(1)]
        options = [value] if isinstance(value, str) else list(value)
        escaped = [_regex_escape(v) for v in options]
        return "/^" + (escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")") + "$/"

    text = re.sub(r"/\^\$(\w+)\$/", regex, text)

    def plain(m: re.Match[str]) -> str:
        value = values[m.group(1) or m.group(2)]
        return value if isinstance(value, str) else ",".join(value)

    return _VARIABLE.sub(plain, text)


# -- the command ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.generate", description=DESCRIPTION)
    parser.add_argument("--site", default=str(DEFAULT_SITE), help="the site model (default: %(default)s)")
    parser.add_argument("--out", default=str(DASHBOARDS_DIR), help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    files = generate(args.site)
    written = write(out, files)
    for path in written:
        print(f"wrote {path}")
    unchanged = len(files) - len(written)
    if unchanged:
        print(f"{unchanged} dashboard(s) in {out} already up to date")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as `python grafana/generate.py`: the project root on the path
        sys.path.insert(0, str(ROOT.parent))
    sys.exit(main())
