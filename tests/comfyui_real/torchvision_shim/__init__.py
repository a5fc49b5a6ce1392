"""Test-only ComfyUI custom node: its prestartup_script.py does the work; it has no nodes."""

NODE_CLASS_MAPPINGS = {}
