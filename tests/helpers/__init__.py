"""Test harness: real redis-server, real HTTP file server, the ComfyUI stand-in, the whole stack."""
