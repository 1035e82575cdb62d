"""Adapting a model to a lab's unlabelled images (``--target DIR... --adapt {grl,pseudo,both}``).

``target`` finds the images and cuts tissue crops, ``grl`` holds the gradient reversal and the
domain classifier, ``pseudo`` the teacher and its confident labels, ``adaptation`` the hook the
trainer calls once per step. Import them from their modules: this package's import stays light
(the command's parser reads the modes without torch).
"""

ADAPT_MODES = ("grl", "pseudo", "both")

__all__ = ["ADAPT_MODES"]
