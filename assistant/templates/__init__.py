"""Intent templates (``intents/*.yaml``): their model, loader, sandbox, versions and reload."""
