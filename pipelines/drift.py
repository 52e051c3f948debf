"""DVC stage `drift`: thin glue over `alphaforge.stages.drift`; see `alphaforge drift --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["drift", *sys.argv[1:]])


if __name__ == "__main__":
    main()
