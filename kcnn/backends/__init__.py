"""What differs per backend and per machine: the private Keras names kcnn uses (keras_private.py, the only place
they appear), torch kernels, JAX's depthwise convolution, initializer deferral, the precision policy."""
