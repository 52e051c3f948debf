"""Moved to :mod:`alphaforge.features.alpha360`; ``alphaforge.alpha360`` stays importable as the very same module."""

import sys

from alphaforge.features import alpha360 as _module

sys.modules[__name__] = _module
