"""Startup: small idempotent, timed steps that prepare the volume and config, then exec supervisord."""
