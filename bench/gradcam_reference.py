"""kcnn.inspect.explain.grad_cam against an independent implementation: the keras.io example "Grad-CAM class
activation visualization" (fchollet), its tf.GradientTape recipe, on the pretrained EfficientNet-Lite0 and
scikit-image's cat photo. Prints the largest difference of the two maps (both upsampled with Pillow).

    KERAS_BACKEND=tensorflow python bench/gradcam_reference.py
"""

import keras
import numpy as np
import skimage.data
import tensorflow as tf
from PIL import Image

import kcnn
import kcnn.inspect.explain

model = kcnn.build("efficientnet_lite0", weights="imagenet")
photo = skimage.data.chelsea()
image = keras.ops.convert_to_numpy(keras.ops.image.resize(photo[None].astype("float32"), (224, 224)))
layer = kcnn.inspect.explain.spatial_layers(model)[-1]
print("default layer", layer)
# the keras.io recipe, on a logits model (classifier_activation=None is kcnn's default)
grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
with tf.GradientTape() as tape:
    conv, preds = grad_model(image)
    index = int(tf.argmax(preds[0]))
    channel = preds[:, index]
grads = tape.gradient(channel, conv)
pooled = tf.reduce_mean(grads, axis=(0, 1, 2))
heat = tf.squeeze(conv[0] @ pooled[..., tf.newaxis])
heat = tf.maximum(heat, 0) / tf.math.reduce_max(heat)
heat = heat.numpy()
up = np.asarray(Image.fromarray(heat.astype("float32"), mode="F").resize((224, 224), Image.BILINEAR))
up = up / up.max()
ours = kcnn.inspect.explain.grad_cam(model, image)[0]
print("class", index, "max |diff|", float(np.abs(ours - up).max()), "corr", float(np.corrcoef(ours.ravel(), up.ravel())[0, 1]))
