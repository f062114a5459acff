"""Stand-ins for hardware that no test machine has."""
