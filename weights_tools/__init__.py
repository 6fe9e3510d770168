"""weights_tools: turn real MobileNet weights into mobilenet-np's HDF5 format, without TensorFlow."""
