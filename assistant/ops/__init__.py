"""Running it: metrics now; warming and readiness later."""
