"""Console entry points of mace-lr (thin: parse arguments, call the library, report)."""
