import sys

from ct_actors.cli import main

sys.exit(main())
