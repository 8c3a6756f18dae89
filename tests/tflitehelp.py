"""Real TFLite models for tests: small Dense stacks, and one no interpreter can load."""

from __future__ import annotations


def dense_tflite(
    units: tuple[int, ...], inputs: int = 16, classes: int = 10, seed: int = 0
) -> tuple[bytes, object]:
    """A seeded Keras Dense stack and its float32 TFLite export (from_keras_model)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(u, activation="relu") for u in units]
    layers.append(keras.layers.Dense(classes))
    model = keras.Sequential(layers)
    return tf.lite.TFLiteConverter.from_keras_model(model).convert(), model


def unloadable(tflite: bytes) -> bytes:
    """The same model with every operator at a version no interpreter has."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
    for oc in m.operatorCodes:
        oc.version = 9999
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())
