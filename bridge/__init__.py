"""Protocol bridges: read machines (OPC UA, later Modbus and MTConnect) and publish Sparkplug B."""
