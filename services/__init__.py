"""Context, OEE, historian and API services of the shop-floor UNS."""
