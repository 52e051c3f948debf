"""Qlib's own Alpha158 (``qlib.contrib.data.loader.Alpha158DL`` through Qlib's expression engine ``D.features``) on
data in Qlib's binary format; run as a script in a subprocess by ``test_alpha158_qlib.py``, because ``qlib.init``
configures global logging and caches.

    python tests/code/qlib_alpha158.py PROVIDER_DIR OUT.parquet SYMBOL [SYMBOL ...]
"""

import sys

import qlib
from qlib.constant import REG_US
from qlib.contrib.data.loader import Alpha158DL
from qlib.data import D

if __name__ == "__main__":
    provider, out, *symbols = sys.argv[1:]
    qlib.init(provider_uri=provider, region=REG_US, expression_cache=None, dataset_cache=None, kernels=1)
    fields, names = Alpha158DL.get_feature_config()
    frame = D.features(symbols, fields, freq="day")
    frame.columns = names
    frame.to_parquet(out)
