"""GradientHealth's own TensorBoard dashboard, the GRADIENT HEALTH tab.

A dynamic TensorBoard plugin (the `tensorboard_plugins` entry point of
`keras-fanin`): its routes read GradientHealth's runs through TensorBoard's
data provider and judge them with `keras-fanin report`'s code; `static/`
holds its page, plain ES modules and CSS, served by the plugin itself.
"""

from keras_fanin_logs._dashboard._plugin import GradientHealthPlugin

__all__ = ["GradientHealthPlugin"]
