/**
 * What a generated dashboard must be, in Grafana's own types from the `@grafana/schema` npm package
 * (the version of Grafana the dashboards are generated for, pinned in package.json).
 *
 * tests/test_grafana.py writes, for every dashboard, a TypeScript file that checks the dashboard's
 * JSON as an object literal with `satisfies` against these types, and runs `tsc --strict --noEmit`:
 * a property the type does not have is an error (excess property check), so is a value of the wrong
 * type or an enum value Grafana does not know.
 *
 * `@grafana/schema` types the dashboard and, per panel plugin, its `options` and its field config's
 * `custom` (the dashboard type itself leaves both open). It has no type for InfluxDB queries, so
 * `InfluxQLTarget` is Grafana's DataQuery with the fields Grafana's InfluxDB data source reads for a
 * raw InfluxQL query.
 */
import type { Dashboard, DataQuery, FieldConfig } from "@grafana/schema";
import type * as barchart from "@grafana/schema/dist/esm/raw/composable/barchart/panelcfg/x/BarChartPanelCfg_types.gen.d.ts";
import type * as stat from "@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen.d.ts";
import type * as statetimeline from "@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen.d.ts";
import type * as table from "@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen.d.ts";
import type * as timeseries from "@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen.d.ts";

/** A type as it is written in JSON: a string enum is the union of its values (JSON has no enums). */
export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

export type DashboardJson = Json<Dashboard>;

/** The panel plugins the dashboards use: their options and their field config's `custom`. */
interface Plugins {
  barchart: { options: barchart.Options; custom: barchart.FieldConfig };
  stat: { options: stat.Options; custom: Record<string, never> }; // stat has no custom field config
  "state-timeline": { options: statetimeline.Options; custom: statetimeline.FieldConfig };
  table: { options: table.Options; custom: table.FieldConfig };
  timeseries: { options: timeseries.Options; custom: timeseries.FieldConfig };
}

/** A raw InfluxQL query on Grafana's InfluxDB data source. */
export type InfluxQLTarget = Json<DataQuery> & {
  query: string;
  rawQuery: true;
  resultFormat: "time_series" | "table";
  alias?: string;
};

/** An override property: a field config key (`unit`, `mappings`, ...) with its value's type, or
 * `custom.<key>` of the plugin's custom field config. */
type Property<C> =
  | { [K in Exclude<keyof FieldConfig, "custom"> & string]-?: { id: K; value: Json<FieldConfig[K]> } }[Exclude<
      keyof FieldConfig,
      "custom"
    > &
      string]
  | { [K in keyof C & string]-?: { id: `custom.${K}`; value: Json<C[K]> } }[keyof C & string];

/** What the test checks of each panel beyond the dashboard type. */
export type PanelCheck<P extends keyof Plugins> = {
  type: P;
  options: Json<Plugins[P]["options"]>;
  custom?: Json<Plugins[P]["custom"]>;
  overrides: Array<{ matcher: { id: string; options?: unknown }; properties: Array<Property<Plugins[P]["custom"]>> }>;
  targets: InfluxQLTarget[];
};
