"""DVC stage `risk`: thin glue over `alphaforge.stages.risk`; see `alphaforge risk --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["risk", *sys.argv[1:]])


if __name__ == "__main__":
    main()
