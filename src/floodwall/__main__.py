"""python -m floodwall"""

import sys

from floodwall.cli import main

sys.exit(main())
