"""Features: a frozen backbone run once over a data set, as arrays and in the on-disk cache."""
