import sys

from jaxsae.cli import main

sys.exit(main())
