"""The CLI's sub-apps: each parses, calls the core and renders; nothing more."""
