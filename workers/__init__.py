"""Pure Python + torch: training engine, aggregation, privacy, edge agent. Never imports Django."""
