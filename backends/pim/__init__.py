"""The simulated processing-in-memory target: device presets, cost model, placement, simulation,
artifacts (see docs/pim.md)."""
