"""Sparkplug B 3.0: payload codec, topics, and the edge-node and host session rules."""
