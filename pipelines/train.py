"""DVC stage `train`: thin glue over `alphaforge.stages.train`; see `alphaforge train --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["train", *sys.argv[1:]])


if __name__ == "__main__":
    main()
