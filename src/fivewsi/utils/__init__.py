"""Small shared helpers: atomic file writes, distributed rank discovery, logging set-up."""
