"""PyInstaller's entry point: the `ocpp-appliance` console script, frozen."""

import sys

from appliance.cli import main

sys.exit(main())
