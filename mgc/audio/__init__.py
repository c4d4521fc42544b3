"""From bytes to model input: decoding, windowing, the audio front ends, augmentation."""
