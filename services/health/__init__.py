"""The health service: checks that tell the truth, served on loopback and behind a CLI."""
