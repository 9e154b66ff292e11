"""The offline demo and its sample data: everything needed comes with the installed packages.

* :mod:`tlkit.demo.samples` writes sample image folders: scikit-learn's handwritten digits
  (:func:`make_digits_folder`) and crops of scikit-image's photos (:func:`make_photo_crops_folder`);
  the tests, benchmarks and tutorials use them.
* :mod:`tlkit.demo.run` is ``tlkit demo``: :func:`run_demo` walks the whole library once on the digits.

Example:
    >>> from tlkit.demo import make_digits_folder
    >>> make_digits_folder("digits", per_class=20)       # doctest: +SKIP
"""

from tlkit.demo.run import DemoReport, DemoStep, probe_classifier, run_demo
from tlkit.demo.samples import (
    PHOTOS, PHOTOS_15, digits_arrays, make_digits_folder, make_photo_crops_folder, pick_per_class, render_digit,
)

__all__ = ["PHOTOS", "PHOTOS_15", "DemoReport", "DemoStep", "digits_arrays", "make_digits_folder",
           "make_photo_crops_folder", "pick_per_class", "probe_classifier", "render_digit", "run_demo"]
