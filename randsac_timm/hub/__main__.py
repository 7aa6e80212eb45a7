"""`python -m randsac_timm.hub export|push|package|card ...`; see `publish.py`."""
import sys

from .publish import main

if __name__ == '__main__':
    sys.exit(main())
