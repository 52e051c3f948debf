"""Moved to :mod:`alphaforge.features.alpha158`; ``alphaforge.alpha158`` stays importable as the very same module."""

import sys

from alphaforge.features import alpha158 as _module

sys.modules[__name__] = _module
