"""What the host and the device must agree on, and nothing else.

The wire protocol (``core.protocol``), the MQTT adapter (``core.mqtt``, the
only module that imports paho), the error hierarchy (``core.errors``),
signing (``core.signing``), the probe-bundle format (``core.probes``), and
atomic files and hashing (``core.files``). No TensorFlow, no interpreter.
"""
