"""Model families behind one scikit-learn-style interface (see :mod:`alphaforge.models.base`)."""
