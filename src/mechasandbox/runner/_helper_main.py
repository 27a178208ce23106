"""Entry point of the spawn helper process, started by path:
`python -s -S <package>/runner/_helper_main.py` (see `client`).

It imports only what forking needs, so that the helper starts fast and stays small (its
fork cost grows with its own heap): no `site` (standard library and this package only; a
hook outside them makes the helper load `site` on demand), and not the `mechasandbox`
package's `__init__` (a bare package module stands in for it).
"""

import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = os.path.dirname(_PACKAGE_DIR)  # not this directory: its module names are ours
if "mechasandbox" not in sys.modules:
    _package = type(sys)("mechasandbox")
    _package.__path__ = [_PACKAGE_DIR]
    sys.modules["mechasandbox"] = _package

from mechasandbox.runner.helper import main  # noqa: E402 - after the package stand-in

main()
