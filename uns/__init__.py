"""The core of the shop-floor UNS: ISA-95 paths, the site model, Sparkplug B and MQTT plumbing."""
