"""``python tools/gguf.py MODEL_DIR OUT.gguf [--outtype f16|bf16|q8_0] [--adapter DIR]``:
the same as ``xft convert gguf`` (see xft/tools/convert_gguf.py)."""
import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, and this file's name is the gguf
# package's: without the folder there, `import gguf` finds the package, not this script.
_here = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or '.').resolve() != _here]

from xft.tools.convert_gguf import main  # noqa: E402

raise SystemExit(main())
