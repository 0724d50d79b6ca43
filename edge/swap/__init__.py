"""The swap: step graph, inventory and journal, the sans-I/O sequence and its coordinator."""
