"""Where the suite's inputs live."""
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
FIXTURES = TESTS / 'fixtures'
# Real public data, read-only, beside the checkout (see /work/shared/data/README.md).
SHARED_DATA = REPO.parent / 'shared' / 'data'
ALPACA_SUBSET = SHARED_DATA / 'alpaca' / 'alpaca_data_subset.json'
