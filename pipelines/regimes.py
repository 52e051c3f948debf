"""DVC stage `regimes`: thin glue over `alphaforge.stages.regimes`; see `alphaforge regimes --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["regimes", *sys.argv[1:]])


if __name__ == "__main__":
    main()
