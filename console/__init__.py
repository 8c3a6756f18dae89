"""The fleet console: a web view over the fleet record, read-only unless given a token.

``create_app(db)`` is a plain ASGI app; ``paoding-edge console`` serves it.
"""
