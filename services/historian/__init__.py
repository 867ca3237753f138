"""The historian: the record in InfluxDB for Grafana (docs/historian.md)."""
