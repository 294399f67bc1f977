"""The front door: nginx in front of every public web port (config in services/common/door.py)."""
