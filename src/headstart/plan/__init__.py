"""Plans: what a strategy freezes, at which rates the rest trains, and LoRA adapters."""
