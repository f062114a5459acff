"""The web console: health, figures, recent requests, and the intent templates edited."""
