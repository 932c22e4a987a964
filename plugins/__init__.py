"""Built-in plugins of toolbox, written only against toolbox's public API.

Each module is a plugin exactly as a third-party package would write it.
"""
