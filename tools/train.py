"""Train from a config: ``python tools/train.py CONFIG [--work-dir DIR] [--resume [auto|PATH]] ...``"""
from xft.tools.train import main

if __name__ == '__main__':
    raise SystemExit(main())
