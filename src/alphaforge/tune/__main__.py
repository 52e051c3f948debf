"""``python -m alphaforge.tune --job job.json [--worker-index I]``: one tune worker (see :func:`main`)."""

from alphaforge.tune.stage import main

raise SystemExit(main())
