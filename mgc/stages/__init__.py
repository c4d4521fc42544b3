"""Ray Data stages: decoding tracks and embedding them, on CPU or GPU actors."""
